"""Launching on a cluster: `scripts/submit.sh` against a real head node, and the cluster files.

The job test starts its own single-node cluster with `ray start --head` on loopback and
submits the `pool` stage through `scripts/submit.sh`, exactly as one would against a cloud
cluster. It lives beside the session's local Ray (`ray_session` in conftest.py, started
inside this pytest process), so it shares nothing with it: its own temp dir and ports, no
`ray.init` here, everything through subprocesses with a scrubbed environment.

It does not call `ray stop`: that kills every Ray process on the machine, the session's
Ray and anyone else's included. The head runs as `ray start --block` in its own process
session instead; stopping it means SIGTERM to that process (which tears down what it
started) and then SIGKILL to anything left in its process group or naming its temp dir.
"""

import contextlib
import glob
import json
import os
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
    """Live processes that belong to the test head: in its process group or naming its dir."""
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


def stop_head(head: subprocess.Popen, temp_dir: str) -> None:
    import psutil

    if head.poll() is None:
        head.send_signal(signal.SIGTERM)   # `ray start --block` shuts its processes down
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
    left = own_processes(head.pid, temp_dir)
    for proc in left:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(left, timeout=10)


@contextlib.contextmanager
def ray_head(temp_dir: str, num_cpus: int = 2):
    """A head node on 127.0.0.1; yields its job-server address (http://127.0.0.1:<port>)."""
    names = ["port", "dashboard-port", "ray-client-server-port", "dashboard-agent-listen-port",
             "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port",
             "node-manager-port", "object-manager-port"]
    ports = dict(zip(names, free_ports(len(names))))
    cmd = [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
           "--temp-dir", temp_dir, "--num-cpus", str(num_cpus), "--num-gpus", "0",
           "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
           "--disable-usage-stats", *[f"--{name}={port}" for name, port in ports.items()]]
    log_path = os.path.join(temp_dir, "ray_start.log")
    with open(log_path, "w") as log:
        head = subprocess.Popen(cmd, env=clean_env(), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    address = f"http://127.0.0.1:{ports['dashboard-port']}"
    try:
        deadline = time.time() + 90
        while True:  # the job server answers once the dashboard's job module is up
            try:
                urllib.request.urlopen(f"{address}/api/jobs/", timeout=2).read()
                break
            except OSError:
                if head.poll() is not None or time.time() > deadline:
                    raise RuntimeError("ray start --head did not come up:\n"
                                       + Path(log_path).read_text()[-3000:]) from None
                time.sleep(0.5)
        yield address
    finally:
        stop_head(head, temp_dir)
        leftovers = own_processes(head.pid, temp_dir)
        assert not leftovers, f"stale Ray processes: {[p.pid for p in leftovers]}"


def job_logs(temp_dir: str) -> str:
    """The driver log of the job(s), for failure messages."""
    paths = glob.glob(os.path.join(temp_dir, "session_*", "logs", "job-driver-*.log"))
    return "\n".join(Path(p).read_text()[-4000:] for p in paths)


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_submit_pool_stage_to_a_head_node(tmp_path):
    run_dir = tmp_path / "run"
    # Ray's unix sockets live under the temp dir: keep its path short (socket paths max 107).
    temp_dir = tempfile.mkdtemp(prefix="rayjob-", dir="/tmp")
    try:
        with ray_head(temp_dir) as address:
            env = clean_env(RAY_ADDRESS=address, RAY=str(BIN / "ray"))
            submit = subprocess.run(
                ["bash", str(REPO / "scripts" / "submit.sh"), "--config", "configs/tiny.yaml",
                 "--stages", "pool", "--submission-id", "stagent-test-pool",
                 f"run_dir={run_dir}", "pool.queries_per_family=6", "pool.target_size=40",
                 "pool.eval_per_family=2"],
                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
            output = submit.stdout[-4000:] + submit.stderr[-4000:]
            assert submit.returncode == 0, f"job failed:\n{output}\n{job_logs(temp_dir)}"
            # The job server's own record, not the CLI's wording of it.
            with urllib.request.urlopen(f"{address}/api/jobs/stagent-test-pool", timeout=10) as r:
                job = json.loads(r.read())
            assert job["status"] == "SUCCEEDED", job
            assert job["entrypoint"].startswith("python -m stagent_ray.cli run"), job
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)

    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["stages"]["pool"]["status"] == "complete"
    assert (run_dir / "data" / "pool.parquet").stat().st_size > 0
    assert (run_dir / "data" / "eval.parquet").stat().st_size > 0


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
