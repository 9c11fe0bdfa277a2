"""kill -9 of the driver at a random point in each stage, then the stage run again: its
artifacts equal those of an uninterrupted run with the same seed (tables as sets of rows,
checkpoints tensor by tensor).

One uninterrupted reference cascade runs first, under injected tool faults and garbage
generations (so it also shows that every stage, RL included, completes under them and that
the faults are as reproducible as the rest). Each case copies it, removes one stage's
outputs, starts `stagent-ray run --stages <stage>` as a separate driver process, SIGKILLs it
a random time into the stage, and runs the stage again in this process.
"""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest

from stagent_ray.config import load_config
from stagent_ray.pipeline import STAGES, run_pipeline
from stagent_ray.runio import read_table
from test_pipeline import TINY

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]

# test_pipeline's tiny cascade, with checkpoints every few steps (so a kill lands between
# them), one checkpoint to evaluate, and faults injected.
CASCADE = [o for o in TINY if not o.startswith(("rl.steps=", "eval.checkpoints=",
                                                 "rl.prompt_set="))] + [
    "rl.prompt_set=hard",  # the remeasure stage rolls out too
    "sft0.checkpoint_every=2", "sft1.checkpoint_every=2", "rl.steps=3", "rl.checkpoint_every=1",
    "eval.checkpoints=[rl]", "eval.teacher=false",
    "world.tool_timeout_s=1.0", "faults.tool_timeout=0.04", "faults.tool_error=0.1",
    "faults.tool_malformed=0.06", "faults.engine_garbage=0.1",
]

# What each stage writes: removed before the stage runs again.
OUTPUTS = {
    "pool": ["data/pool.parquet", "data/eval.parquet", "data/eval_entities.parquet"],
    "tiny_qa": ["data/parts/tiny_qa", "data/tiny_qa.parquet", "data/tiny_qa_unverified.parquet",
                "data/tiny_qa_scored.parquet", "data/tiny_qa_queries.parquet"],
    "base": ["ckpt/base", "ckpt/base.tmp"],
    "sft0": ["ckpt/sft0", "train/sft0", "train/sft0_metrics.jsonl"],
    "score": ["data/parts/score", "data/full_qa.parquet", "data/trajectories.parquet"],
    "split": ["data/parts/recover", "data/recovered_scored.parquet", "data/certain.parquet",
              "data/hard.parquet", "data/split_report.json"],
    "sft1": ["ckpt/sft1", "train/sft1", "train/sft1_metrics.jsonl"],
    "remeasure": ["data/parts/remeasure", "data/remeasured.parquet", "data/hard_sft1.parquet",
                  "data/remeasure_report.json"],
    "rl": ["ckpt/rl", "train/rl", "train/rl_metrics.jsonl", "train/rl_prompts.jsonl",
           "train/rl_sync"],
    "eval": ["eval"],
    "report": ["report"],
}
# What must come out equal. Timings (wall_time_s) are the only columns left out.
COMPARED = {
    "pool": ["data/pool.parquet", "data/eval.parquet", "data/eval_entities.parquet"],
    "tiny_qa": ["data/tiny_qa.parquet", "data/tiny_qa_unverified.parquet",
                "data/tiny_qa_scored.parquet", "data/tiny_qa_queries.parquet"],
    "base": ["ckpt/base"],
    "sft0": ["ckpt/sft0"],
    "score": ["data/full_qa.parquet", "data/trajectories.parquet"],
    "split": ["data/certain.parquet", "data/hard.parquet", "data/split_report.json",
              "data/recovered_scored.parquet"],
    "sft1": ["ckpt/sft1"],
    "remeasure": ["data/remeasure_report.json", "data/hard_sft1.parquet"],
    "rl": ["ckpt/rl", "train/rl_prompts.jsonl"],
    "eval": ["eval/summary.json", "eval/rl.json", "eval/rl_greedy_trajectories.parquet",
             "eval/rl_sampled_trajectories.parquet"],
    "report": ["report/summary.md"],
}

DRIVER = [sys.executable, "-m", "stagent_ray.cli", "run", "--config", "configs/tiny.yaml"]


@pytest.fixture(scope="module")
def reference(ray_session, tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("crash") / "reference")
    assert run_pipeline(load_config("configs/tiny.yaml", CASCADE + [f"run_dir={run_dir}"])) == 0
    return run_dir


def stage_status(run_dir: str, stage: str) -> str | None:
    try:
        with open(os.path.join(run_dir, "manifest.json")) as f:
            return json.load(f)["stages"].get(stage, {}).get("status")
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def comparable(run_dir: str, relative: str):
    path = os.path.join(run_dir, relative)
    if not os.path.exists(path):
        return None
    if relative.startswith("ckpt/"):
        from safetensors.torch import load_file

        return {k: v.tolist() for k, v in load_file(os.path.join(path, "model.safetensors")).items()}
    if relative.endswith(".parquet"):
        rows = read_table(run_dir, relative)
        return sorted(json.dumps({k: v for k, v in r.items() if k != "wall_time_s"}, sort_keys=True)
                      for r in rows)
    if relative.endswith(".json"):
        with open(path) as f:
            return json.load(f)
    with open(path) as f:
        return f.read()


def kill_driver_mid_stage(run_dir: str, stage: str, delay: float, env: dict, log: str) -> bool:
    """Start a driver that runs `stage`, SIGKILL it `delay` seconds into the stage; True when
    the stage was still running at the kill."""
    with open(log, "w") as out:
        proc = subprocess.Popen(DRIVER + ["--stages", stage, *CASCADE, f"run_dir={run_dir}"],
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while stage_status(run_dir, stage) != "running":
        assert proc.poll() is None, f"the driver exited: {open(log).read()[-2000:]}"
        assert time.time() < deadline, "the driver never started the stage"
        time.sleep(0.05)
    time.sleep(delay)
    landed = stage_status(run_dir, stage) == "running" and proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return landed


def reset_stage(reference: str, run_dir: str, stage: str) -> float:
    """`run_dir` as the reference was before `stage` ran; returns the stage's seconds there."""
    for relative in OUTPUTS[stage]:
        path = os.path.join(run_dir, relative)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
    with open(os.path.join(reference, "manifest.json")) as f:
        manifest = json.load(f)
    seconds = manifest["stages"].pop(stage)["seconds"]
    with open(os.path.join(run_dir, "manifest.json"), "w") as f:  # as if it never ran
        json.dump(manifest, f)
    return seconds


@pytest.mark.parametrize("stage", STAGES)
def test_kill9_mid_stage_then_rerun_equals_the_uninterrupted_run(reference, stage, tmp_path,
                                                                   ray_session):
    run_dir = str(tmp_path / "run")
    shutil.copytree(reference, run_dir)
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    # A random point of the stage as long as the reference took; on a busy machine the
    # driver may finish sooner, so a kill that came too late is tried again, earlier.
    fraction = random.Random(stage).uniform(0.1, 0.8)
    for attempt in range(3):
        seconds = reset_stage(reference, run_dir, stage)
        landed = kill_driver_mid_stage(run_dir, stage, fraction * seconds, env,
                                       str(tmp_path / f"driver{attempt}.log"))
        if landed:
            break
        fraction /= 4
    # The stages under a second (pool, report) may finish before any kill lands.
    assert landed or seconds < 2, f"{stage}: the kill should land mid-stage"

    assert run_pipeline(load_config("configs/tiny.yaml", CASCADE + [f"run_dir={run_dir}"]),
                        stages=[stage]) == 0
    assert stage_status(run_dir, stage) == "complete"
    for relative in COMPARED[stage]:
        assert comparable(run_dir, relative) == comparable(reference, relative), relative
    if stage == "report":  # the reference ran under faults, and the report shows them
        summary = open(os.path.join(run_dir, "report/summary.md")).read()
        assert "## Faults" in summary and "| score |" in summary and "| rl |" in summary
