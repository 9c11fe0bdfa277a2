"""Launching on a cluster: `scripts/submit.sh` against a real multi-node Ray, and the
cluster files.

The job test builds the cluster of cluster/aws.yaml in miniature on loopback: a head that
takes no work (num_cpus=0) and two worker nodes, each a `ray start --block` process with its
own temp dir, TMPDIR and HOME, so the nodes share no disk (a working dir, a model cache or a
path that leaked out of the run dir would differ per node). The run dir is on the S3 server
of conftest.py (`s3_server`, moto). The tiny cascade goes in through `scripts/submit.sh`; the
first job is stopped through the job API while `score` is running, the second resumes it,
and its status and logs are read back through the job API.

It lives beside the session's local Ray (`ray_session` in conftest.py, started inside this
pytest process), so it shares nothing with it: its own temp dirs and ports, no `ray.init`
here, everything through subprocesses with a scrubbed environment and HTTP.

It does not call `ray stop`: that kills every Ray process on the machine, the session's
Ray and anyone else's included. Each node runs as `ray start --block` in its own process
session instead; stopping it means SIGTERM to that process (which tears down what it
started) and then SIGKILL to anything left in its process group or naming its temp dir.
"""

import contextlib
import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import S3_KEYS
from test_pipeline import TINY

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent   # the venv's bin: `ray`, and `python` for the job


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on loopback (all held open at once so none repeats)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def clean_env(**extra: str) -> dict:
    """This process's environment without any RAY_* variable, plus `extra`.

    The session Ray in this process sets RAY_AUTH_MODE / RAY_ADDRESS-style variables that
    must not leak into the test cluster or its clients.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="disabled", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
               RAY_USAGE_STATS_ENABLED="0", PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    env.update(extra)
    return env


def own_processes(pgid: int, temp_dir: str) -> list:
    """Live processes that belong to a test node: in its process group or naming its dir."""
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if proc.pid == os.getpid():
                continue
            if os.getpgid(proc.pid) == pgid or temp_dir in " ".join(proc.info["cmdline"] or []):
                found.append(proc)
        except (psutil.Error, OSError):
            pass
    return found


def stop_node(node: subprocess.Popen, temp_dir: str) -> None:
    import psutil

    if node.poll() is None:
        node.send_signal(signal.SIGTERM)   # `ray start --block` shuts its processes down
        try:
            node.wait(timeout=30)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait()
    left = own_processes(node.pid, temp_dir)
    for proc in left:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(left, timeout=10)


NODE_PORTS = ["node-manager-port", "object-manager-port", "dashboard-agent-listen-port",
              "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port"]
HEAD_PORTS = ["port", "dashboard-port", "ray-client-server-port"]


def start_node(ip: str, temp_dir: str, num_cpus: int, ports: dict, head: str | None, env: dict):
    """`ray start --block` on the loopback address `ip` for a head (head=None) or a worker
    joining the GCS at `head`, with `temp_dir` as its Ray temp dir and its own TMPDIR and
    HOME under it."""
    for sub in ("tmp", "home"):
        os.makedirs(os.path.join(temp_dir, sub), exist_ok=True)
    role = ["--head", "--include-dashboard", "true", "--dashboard-host", ip] \
        if head is None else ["--address", head]
    cmd = [str(BIN / "ray"), "start", "--block", *role, "--node-ip-address", ip,
           "--temp-dir", temp_dir, "--num-cpus", str(num_cpus), "--num-gpus", "0",
           "--disable-usage-stats", *[f"--{name}={port}" for name, port in ports.items()]]
    env = {**env, "TMPDIR": os.path.join(temp_dir, "tmp"), "HOME": os.path.join(temp_dir, "home")}
    if head is not None:  # "0" (loopback) refuses to join a cluster; the IPs are given
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "1"
    with open(os.path.join(temp_dir, "ray_start.log"), "w") as log:
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


def wait_for(what: str, ready, nodes: list, temp_dirs: list, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not ready():
        dead = [d for n, d in zip(nodes, temp_dirs) if n.poll() is not None]
        if dead or time.time() > deadline:
            logs = "\n".join(Path(d, "ray_start.log").read_text()[-2000:] for d in dead or temp_dirs)
            raise RuntimeError(f"{what} did not come up:\n{logs}")
        time.sleep(0.5)


def get_json(url: str):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.loads(r.read())
    except OSError:
        return None


@contextlib.contextmanager
def ray_cluster(worker_cpus: list[int], head_cpus: int = 0, env: dict | None = None):
    """A head on 127.0.0.2 and len(worker_cpus) worker nodes on 127.0.0.3, .4, ..., each in
    its own short temp dir (Ray's unix socket paths are limited to 107 characters); yields
    (job-server address, [head temp dir, worker temp dirs...]). Not 127.0.0.1: `ray start
    --address 127.0.0.1:port` rewrites a localhost address to the machine's public IP, where
    the GCS (bound to its node's IP) does not listen."""
    env = clean_env(**(env or {}))
    temp_dirs = [tempfile.mkdtemp(prefix="rayjob-", dir="/tmp")] + \
        [tempfile.mkdtemp(prefix=f"raynode{i}-", dir="/tmp") for i in range(len(worker_cpus))]
    ports = free_ports(len(HEAD_PORTS) + len(NODE_PORTS) * (1 + len(worker_cpus)))
    head_ports = dict(zip(HEAD_PORTS + NODE_PORTS, ports))
    address = f"http://127.0.0.2:{head_ports['dashboard-port']}"
    # Ray Train's placement-group cleaner finds the state API by looking for a GCS on this
    # host, and there are others here (the session's Ray): name ours.
    env["RAY_API_SERVER_ADDRESS"] = address
    nodes = []
    try:
        nodes.append(start_node("127.0.0.2", temp_dirs[0], head_cpus, head_ports, None, env))
        # the job server answers once the dashboard's job module is up
        wait_for("ray start --head", lambda: get_json(f"{address}/api/jobs/") is not None,
                 nodes, temp_dirs[:1])
        for i, cpus in enumerate(worker_cpus):
            start = len(HEAD_PORTS) + len(NODE_PORTS) * (i + 1)
            nodes.append(start_node(f"127.0.0.{i + 3}", temp_dirs[i + 1], cpus,
                                    dict(zip(NODE_PORTS, ports[start:start + len(NODE_PORTS)])),
                                    f"127.0.0.2:{head_ports['port']}", env))

        def all_alive():
            nodes_json = get_json(f"{address}/api/v0/nodes?limit=100") or {}
            listed = nodes_json.get("data", {}).get("result", {}).get("result", [])
            return sum(n.get("state") == "ALIVE" for n in listed) == len(nodes)
        wait_for("the worker nodes", all_alive, nodes, temp_dirs)
        yield address, temp_dirs
    finally:
        for node, temp_dir in reversed(list(zip(nodes, temp_dirs))):
            stop_node(node, temp_dir)
        leftovers = [p for node, d in zip(nodes, temp_dirs) for p in own_processes(node.pid, d)]
        for d in temp_dirs:
            shutil.rmtree(d, ignore_errors=True)
        assert not leftovers, f"stale Ray processes: {[p.pid for p in leftovers]}"


def job_logs(temp_dir: str) -> str:
    """The driver log of the job(s) on the head, for failure messages."""
    paths = glob.glob(os.path.join(temp_dir, "session_*", "logs", "job-driver-*.log"))
    return "\n".join(Path(p).read_text()[-4000:] for p in paths)


# test_pipeline's tiny cascade, shortened further: one RL step, the RL checkpoint alone
# evaluated greedily, RL on the whole pool (the remeasure stage skips itself).
CASCADE = [o for o in TINY if not o.startswith(("rl.steps=", "eval.", "rl.prompt_set="))] + [
    "rl.steps=1", "rl.prompt_set=all", "eval.checkpoints=[rl]", "eval.teacher=false",
    "eval.pass_k=0"]


def submit(address: str, submission_id: str, run_dir: str, *extra: str, timeout: float = 600):
    return subprocess.run(
        ["bash", str(REPO / "scripts" / "submit.sh"), "--config", "configs/tiny.yaml",
         "--submission-id", submission_id, *extra, *CASCADE, f"run_dir={run_dir}"],
        cwd=REPO, env=clean_env(RAY_ADDRESS=address, RAY=str(BIN / "ray")),
        capture_output=True, text=True, timeout=timeout)


def stop_job_mid_score(client, job_id: str, run_dir: str, deadline: float) -> None:
    """Stop the job (`ray job stop`) once `score` has written its first rows but not all."""
    from ray.job_submission import JobStatus

    from stagent_ray.runio import RunDirError, read_json
    from stagent_ray.stages.rollouts import list_parts

    def score_running() -> bool:
        try:
            manifest = read_json(run_dir, "manifest.json")
        except RunDirError:  # not there yet, or read (in ranges) while it was rewritten
            return False
        return manifest["stages"].get("score", {}).get("status") == "running"

    while not (score_running() and list_parts(run_dir, "data/parts/score", "query-")):
        assert client.get_job_status(job_id) in (JobStatus.PENDING, JobStatus.RUNNING), \
            client.get_job_logs(job_id)
        assert time.time() < deadline, "score never started"
        time.sleep(0.3)
    assert client.stop_job(job_id)
    while client.get_job_status(job_id) not in (JobStatus.STOPPED, JobStatus.FAILED,
                                                JobStatus.SUCCEEDED):
        assert time.time() < deadline, "the job did not stop"
        time.sleep(0.5)
    assert client.get_job_status(job_id) == JobStatus.STOPPED


@pytest.mark.ray
@pytest.mark.timeout(900)
def test_cascade_submitted_to_a_multi_node_cluster_on_s3_resumes_a_stopped_stage(s3_server,
                                                                               monkeypatch):
    from ray.job_submission import JobStatus, JobSubmissionClient

    from stagent_ray.pipeline import STAGES
    from stagent_ray.runio import read_json, read_table

    run_dir = f"s3://stagent/job?endpoint_override={s3_server}&scheme=http"
    start = time.time()
    with ray_cluster([2, 2], env=S3_KEYS) as (address, temp_dirs):
        # the job client reads RAY_API_SERVER_ADDRESS before its argument, and the session's
        # init_ray points it at a dead port (ray_setup.py): point it at this cluster
        monkeypatch.setenv("RAY_API_SERVER_ADDRESS", address)
        client = JobSubmissionClient(address)
        first = submit(address, "stagent-s3-1", run_dir, "--no-wait", timeout=120)
        assert first.returncode == 0, first.stdout + first.stderr
        stop_job_mid_score(client, "stagent-s3-1", run_dir, start + 600)
        stopped = read_json(run_dir, "manifest.json")["stages"]
        assert [s for s in STAGES if stopped.get(s, {}).get("status") == "complete"] == \
            STAGES[:4] and stopped["score"]["status"] == "running"

        second = submit(address, "stagent-s3-2", run_dir)   # follows the job to its end
        logs = client.get_job_logs("stagent-s3-2")
        assert second.returncode == 0, f"{second.stdout[-3000:]}{second.stderr[-3000:]}\n" \
                                       f"{job_logs(temp_dirs[0])}"
        assert client.get_job_status("stagent-s3-2") == JobStatus.SUCCEEDED
        info = client.get_job_info("stagent-s3-2")
        assert info.entrypoint.startswith("python -m stagent_ray.cli run"), info
        caches = [os.listdir(os.path.join(d, "tmp", "stagent_models"))
                  for d in temp_dirs[1:] if os.path.isdir(os.path.join(d, "tmp", "stagent_models"))]
    for stage in STAGES[:4]:
        assert f"[{stage}] complete, skipped" in logs
    # the training stages' progress lines, from rank 0 on a worker node, reach the job log
    assert re.search(r"\[sft1\] step \d+/\d+ loss \S+ tokens_per_s \S+ eta \d+m\d\ds", logs)
    assert re.search(r"\[rl\] step 1/1 reward \S+ verified \S+ tokens_per_s \S+ eta 0m00s", logs)
    for stage in STAGES[4:]:
        assert f"[{stage}] running" in logs and f"[{stage}] complete in" in logs
    # The worker nodes loaded the checkpoints from the bucket into their own caches.
    assert caches and all(caches), caches

    manifest = read_json(run_dir, "manifest.json")
    assert all(manifest["stages"][s]["status"] == "complete" for s in STAGES)
    assert manifest["stages"]["rl"]["metrics"]["path"] == \
        f"s3://stagent/job/ckpt/rl?endpoint_override={s3_server}&scheme=http"
    # The stopped stage: what it wrote was kept, the rest done once, nothing twice.
    score = manifest["stages"]["score"]["metrics"]
    pool = [r["query_id"] for r in read_table(run_dir, "data/pool.parquet")]
    assert 0 < score["resumed_skipped"] < len(pool), score
    full = [r["query_id"] for r in read_table(run_dir, "data/full_qa.parquet")]
    assert sorted(full) == sorted(pool)
    trajs = [(r["query_id"], r["rollout_index"])
             for r in read_table(run_dir, "data/trajectories.parquet",
                                 columns=["query_id", "rollout_index"])]
    n = int(next(o for o in CASCADE if o.startswith("score.n_rollouts=")).split("=")[1])
    assert sorted(trajs) == sorted((q, i) for q in pool for i in range(n))
    assert read_json(run_dir, "eval/summary.json")["rl"]["verified_rate"] >= 0


FAKE_RAY = """#!/usr/bin/env bash
# Stands in for the `ray` CLI: records its arguments, then answers as the job server does
# while the head node's job agent is not registered, until the last try.
args="$*"
echo "${args//$'\\n'/ }" >> "$CALLS"   # one line a call (the runtime env JSON has newlines)
n=$(wc -l < "$CALLS")
if (( n < ${SUCCEED_ON:-999} )); then
  echo "RuntimeError: Request failed with status code 500: $ANSWER" >&2
  exit 1
fi
echo "Job 'stagent-x' submitted successfully"
"""


def run_submit_with_fake_ray(tmp_path, answer: str, succeed_on: int, tries: int = 4):
    fake = tmp_path / "ray"
    fake.write_text(FAKE_RAY)
    fake.chmod(0o755)
    calls = tmp_path / "calls.txt"
    env = clean_env(RAY=str(fake), CALLS=str(calls), ANSWER=answer,
                    SUCCEED_ON=str(succeed_on), SUBMIT_TRIES=str(tries), SUBMIT_WAIT_S="0")
    done = subprocess.run(["bash", str(REPO / "scripts" / "submit.sh"), "--address", "127.0.0.1:1",
                           "--stages", "pool", "run_dir=/tmp/x"],
                          env=env, capture_output=True, text=True, timeout=60)
    return done, calls.read_text().splitlines()


def test_submit_retries_while_the_job_agent_is_not_up(tmp_path):
    # Ray 2.60's job server gives up after 10 s without a head-node agent; a cluster that has
    # just started (or a loaded one) can take longer, and the job was never created.
    done, calls = run_submit_with_fake_ray(
        tmp_path, "No available agent to submit job, please try again later.", succeed_on=3)
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(calls) == 3 and len(set(calls)) == 1, calls   # the same submission, three times
    assert calls[0].startswith("job submit --address http://127.0.0.1:1 --working-dir .")
    assert calls[0].endswith("run --config configs/tiny.yaml --stages pool run_dir=/tmp/x")
    assert done.stderr.count("job agent is not up yet") == 2
    assert "submitted successfully" in done.stdout


def test_submit_gives_up_after_its_tries_and_on_any_other_error(tmp_path):
    (tmp_path / "agent").mkdir()
    done, calls = run_submit_with_fake_ray(tmp_path / "agent", "No available agent to submit job",
                                           succeed_on=99, tries=3)
    assert done.returncode == 1 and len(calls) == 3
    (tmp_path / "other").mkdir()
    done, calls = run_submit_with_fake_ray(tmp_path / "other",
                                           "Job with submission_id x already exists", succeed_on=99)
    assert done.returncode == 1 and len(calls) == 1   # not the agent: final at once
    assert "already exists" in done.stdout


# --- the cluster definitions: cheap checks that they parse and fit their schemas --------

AUTOSCALER_FILES = ["cluster/aws.yaml", "cluster/gcp.yaml"]


@pytest.mark.parametrize("path", AUTOSCALER_FILES)
def test_autoscaler_yaml_fits_the_ray_schema(path):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((REPO / path).read_text())
    validate_config(prepare_config(config))   # defaults filled in and checked, as `ray up` does
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    assert any(t["resources"].get("GPU", 0) > 0 for t in workers)
    assert any(t["resources"].get("GPU", 0) == 0 for t in workers)
    assert sum(t["max_workers"] for t in workers) <= config["max_workers"]
    assert all(0 <= t["min_workers"] <= t["max_workers"] for t in workers)


def test_kuberay_manifests():
    cluster = yaml.safe_load((REPO / "cluster/kuberay/raycluster.yaml").read_text())
    job = yaml.safe_load((REPO / "cluster/kuberay/rayjob.yaml").read_text())
    assert cluster["apiVersion"] == job["apiVersion"] == "ray.io/v1"
    assert (cluster["kind"], job["kind"]) == ("RayCluster", "RayJob")
    # The RayJob carries its own copy of the cluster spec; the two must not drift apart.
    assert job["spec"]["rayClusterSpec"] == cluster["spec"]
    assert cluster["spec"]["enableInTreeAutoscaling"] is True
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    assert job["spec"]["entrypoint"].startswith("stagent-ray run --config configs/cluster.yaml")
    runtime_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert {".venv", "runs", ".git"} <= set(runtime_env["excludes"])
    groups = cluster["spec"]["workerGroupSpecs"]
    gpus = [int(g["template"]["spec"]["containers"][0]["resources"]["limits"].get(
        "nvidia.com/gpu", 0)) for g in groups]
    assert any(gpus) and not all(gpus)   # CPU and GPU groups
    assert all(g["minReplicas"] <= g["replicas"] <= g["maxReplicas"] for g in groups)
