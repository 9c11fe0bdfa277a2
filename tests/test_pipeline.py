"""The whole cascade end to end on a tiny config, then a resume that runs only what is left."""

import json
import os

import pyarrow.parquet as pq
import pytest

from stagent_ray.config import load_config
from stagent_ray.pipeline import STAGES, run_pipeline, stage_artifacts

pytestmark = [pytest.mark.ray, pytest.mark.timeout(1500)]

TINY = [
    "model.hidden_size=64", "model.intermediate_size=128", "model.num_layers=2",
    "model.num_heads=2", "model.num_kv_heads=1", "model.vocab_size=2048",
    "pool.queries_per_family=4", "pool.target_size=24", "pool.eval_per_family=1",
    "tiny_qa.fraction=0.5", "tiny_qa.long_tail=2", "tiny_qa.k=2",
    "score.n_rollouts=2", "rollout.batch_size=4", "split.k_max=1",
    "sampling.max_new_tokens=48", "agent.max_turns=3", "agent.max_tokens=1200",
    "sft0.epochs=1", "sft0.batch_size=2", "sft0.seq_len=1024",
    "sft1.epochs=1", "sft1.batch_size=2", "sft1.seq_len=1024",
    "rl.steps=2", "rl.prompts_per_step=2", "rl.group_size=2", "rl.micro_batch_size=2",
    "rl.max_refill_rounds=0", "rl.prompt_set=all", "eval.pass_k=2", "eval.checkpoints=[base,sft0,sft1,rl]", "split.certain_threshold=0.5",
]


def test_cascade_end_to_end_then_resume(ray_session, tmp_path, capsys):
    run_dir = str(tmp_path / "run")
    cfg = load_config("configs/tiny.yaml", TINY + [f"run_dir={run_dir}"])
    assert run_pipeline(cfg, stages=STAGES[:4]) == 0  # pool .. score
    manifest = json.load(open(os.path.join(run_dir, "manifest.json")))
    assert [s for s in STAGES if manifest["stages"].get(s, {}).get("status") == "complete"] \
        == STAGES[:4]

    # A second invocation of the whole cascade skips the four finished stages.
    capsys.readouterr()
    assert run_pipeline(cfg) == 0
    out = capsys.readouterr().out
    for stage in STAGES[:4]:
        assert f"[{stage}] complete, skipped" in out
    for stage in STAGES[4:]:
        assert f"[{stage}] running" in out

    manifest = json.load(open(os.path.join(run_dir, "manifest.json")))
    for stage in STAGES:
        entry = manifest["stages"][stage]
        assert entry["status"] == "complete", stage
        for artifact in stage_artifacts(cfg, stage):
            assert os.path.exists(os.path.join(run_dir, artifact)), artifact
    assert manifest["config_hash"] and manifest["config"]["run_dir"] == run_dir

    pool = pq.read_table(os.path.join(run_dir, "data/pool.parquet")).to_pylist()
    full = pq.read_table(os.path.join(run_dir, "data/full_qa.parquet")).to_pylist()
    assert sorted(r["query_id"] for r in full) == sorted(r["query_id"] for r in pool)
    assert all(len(r["rewards"]) == 2 for r in full)
    split = json.load(open(os.path.join(run_dir, "data/split_report.json")))
    assert sum(split["regions"].values()) == len(full)
    evals = json.load(open(os.path.join(run_dir, "eval/summary.json")))
    assert {"teacher", "base", "sft0", "sft1", "rl"} <= set(evals)
    assert os.path.exists(os.path.join(run_dir, "report/pass_histogram.png"))
    html = open(os.path.join(run_dir, "report/index.html")).read()
    assert "Held-out evaluation" in html and "pass_histogram.png" in html

    # eval.pass_k=0: greedy answers only (the greedy episodes are on disk already: resumed)
    from stagent_ray.stages.evaluate import run_eval
    greedy_only = load_config("configs/tiny.yaml", TINY + [
        f"run_dir={run_dir}", "eval.pass_k=0", "eval.teacher=false", "eval.checkpoints=[rl]"])
    summary = run_eval(greedy_only)
    assert set(summary) == {"rl"} and set(summary["rl"]) == {"verified_rate", "mean_reward"}
    assert summary["rl"]["verified_rate"] == evals["rl"]["verified_rate"]
    assert "sampled" not in json.load(open(os.path.join(run_dir, "eval/rl.json")))

    # The cascade benchmark's table on this run, its ablations not run (`--ablations none`):
    # rows and claims for the recipe's own checkpoints only.
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))
    from bench_cascade import table, targets
    rows, differences = table({0: run_dir}, ["teacher", "sft0", "sft1", "rl"])
    assert set(rows) == {"teacher", "sft0", "sft1", "rl"}
    assert set(differences) == {"sft1 - sft0", "rl - sft1"}
    claims = targets(rows)
    assert "rl (hard) >= rl_all" not in claims and "rl > rl_sft0" not in claims
    verified = {n: r["overall"]["verified"]["mean"] for n, r in rows.items()}
    assert verified["rl"] == pytest.approx(evals["rl"]["verified_rate"], abs=1e-4)
    assert claims["rl > sft1"] == (verified["rl"] > verified["sft1"])
    assert differences["rl - sft1"]["diff"] == pytest.approx(verified["rl"] - verified["sft1"],
                                                              abs=2e-4)
    # one seed: a per-seed difference and an interval, never "significant"
    assert set(differences["rl - sft1"]["per_seed"]) == {"0"}
    assert not differences["rl - sft1"]["significant"]

    # `--fresh-eval 2`: a third eval set of new queries (no answer shared with the pool, the
    # tiny-QA set or the first two sets, at most 2 a family), evaluated into its own
    # directory, the table built on it, the noise-free oracle as its ceiling.
    from collections import Counter

    from bench_cascade import evaluate_rows, write_fresh_eval_set

    from stagent_ray.runio import read_table
    from stagent_ray.tasks.query import answer_key
    name = write_fresh_eval_set(cfg, 2)
    fresh = read_table(run_dir, f"data/{name}.parquet")
    seen = {answer_key(r) for t in ("pool", "tiny_qa_queries", "eval", "eval_entities")
            for r in read_table(run_dir, f"data/{t}.parquet")}
    assert fresh and not {answer_key(r) for r in fresh} & seen
    assert max(Counter(r["family"] for r in fresh).values()) <= 2
    evaluate_rows(cfg, print, ["oracle", "teacher", "rl"], name)
    rows, _ = table({0: run_dir}, ["oracle", "teacher", "rl"], name)
    assert rows["rl"]["overall"]["verified"]["n"] == rows["teacher"]["overall"]["verified"]["n"] \
        == rows["oracle"]["overall"]["verified"]["n"] == len(fresh)
    assert rows["oracle"]["overall"]["verified"]["mean"] >= \
        rows["teacher"]["overall"]["verified"]["mean"]
    # the first set's episodes are kept apart
    first = read_table(run_dir, "eval/rl_greedy_trajectories.parquet")
    assert {t["query_id"] for t in first} == {r["query_id"] for r in
                                              read_table(run_dir, "data/eval.parquet")}

    # The `remeasure` stage skipped itself (rl.prompt_set=all); with the hard set it rolls out
    # every hard or all-fail query SFT-1 was not trained on, group_size times at RL's
    # temperature, and keeps the mixed-verdict ones, most uncertain first, for RL.
    from stagent_ray.stages.remeasure import run_remeasure
    from stagent_ray.stages.split import region_of
    from stagent_ray.train.rl import rl_prompts
    assert "skipped" in json.load(open(os.path.join(run_dir, "data/remeasure_report.json")))
    hard_cfg = load_config("configs/tiny.yaml", TINY + [f"run_dir={run_dir}", "rl.prompt_set=hard",
                                                        "rl.group_size=3"])
    report = run_remeasure(hard_cfg, os.path.join(run_dir, "ckpt/sft1"))
    recovered = {r["query_id"] for r in read_table(run_dir, "data/certain.parquet")
                 if r["source"] == "teacher_recovered"}
    want = {r["query_id"] for r in full if region_of(r, hard_cfg.split.certain_threshold)
            in ("hard", "noise") and r["query_id"] not in recovered}
    measured = read_table(run_dir, "data/remeasured.parquet") if want else []
    assert {r["query_id"] for r in measured} == want and report["candidates"] == len(want)
    assert all(r["n"] == 3 for r in measured)
    hard = read_table(run_dir, "data/hard_sft1.parquet")
    passes = {r["query_id"]: sum(r["verified"]) for r in measured}
    assert [r["query_id"] for r in hard] == [r["query_id"] for r in sorted(
        (r for r in measured if 0 < passes[r["query_id"]] < 3),
        key=lambda r: (-r["learnability"], r["query_id"]))]
    assert report["hard"] == len(hard) and sum(report["moved"].values()) == len(want)
    prompts, which = rl_prompts(hard_cfg)
    if hard:  # the re-measured set, in its order
        assert which == "hard_sft1" and [p["query_id"] for p in prompts] == \
            [r["query_id"] for r in hard]
    else:  # nothing uncertain for SFT-1: the split's hard set, else the pool, said so
        assert which in ("hard", "all")
