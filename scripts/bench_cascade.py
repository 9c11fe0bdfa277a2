"""The cascade against its ablations: same seeds, same held-out eval set, same budget.

    python scripts/bench_cascade.py --config configs/cascade_cpu.yaml --seeds 0 \
        --out scripts/results/cascade_cpu.json [key=value overrides]

Per seed it runs the whole cascade (`stagent-ray run`: pool, tiny_qa, base, sft0, score,
split, sft1, rl, eval, report) in <run_dir>/seed<k>, then the ablations in the same run
directory, from the same artifacts (with `pretrain.docs` > 0 the tiny model is pretrained
once, with the first seed, in <run_dir>/base, and every seed starts from that base):
  oracle    the world's scripted expert without noise: the ceiling (it reads the query's
            slots, not its text, so no model on text alone can be expected to reach it)
  teacher   the teacher itself (the oracle with its noise on), the bar to reach
  zero_shot the base model before any training (with --zero-shot: for a pretrained base)
  sft0      SFT-0 on the tiny teacher set
  sft1      SFT-1: SFT-0 further trained on the certain QAs (the recipe)
  sft1_all  SFT-1': the same, on every scored query's best verified trajectory (all
            regions, no certainty filter, no trivial down-sampling; the same teacher-
            recovered rows); capped at SFT-1's number of optimizer steps
  rl        RL from SFT-1 on the hard queries (the recipe)
  rl_all    RL': from SFT-1 on the whole pool (same steps, prompts per step, group size)
  rl_sft0   RL'': from SFT-0 on the hard queries (no SFT-1)
Every model answers every query of both eval sets once, greedily (oracle and teacher sample:
they are scripted): data/eval.parquet (no query shares its family and slots, i.e. its
answer, with a pool or tiny-QA query) and data/eval_entities.parquet (the entity split:
queries that name only places, anchors, districts and routes the pool never names).
Columns: verified rate, rubric, reward and [Unsolved] accuracy, overall (95% interval from a
hierarchical bootstrap: seeds, then queries within each seed), by family and per seed (over
episodes); for each claim of the recipe (SFT-1 > SFT-0, RL > SFT-1, RL hard vs all, ...) the
paired difference in verified rate on the same queries, per seed and with its hierarchical
interval; "significant" means that interval excludes 0 over at least 3 seeds. Every set's
size per family, and the families that could not fill their share, are in the table; per
RL row (`training`), the verified rate beside the shaped reward (first and last quarter of
the steps), the kept groups' share with mixed verdicts, the advantages' share the verdict
explains, groups sampled and kept a step; `remeasure`, how the hard set moved on SFT-1.
Re-running resumes: finished stages and ablations are skipped; `--redo-rl` trains the RL
stages and rows again from each seed's SFT-1 (to compare rl.* settings on the same SFT-1).
`--ablations` picks which
ablations run: all (default), none (the recipe's own rows only, for a time-limited machine)
or a comma-separated list; a later call with more adds them to the same run directories.
`--fresh-eval N` then evaluates every row again on a third eval set, N new queries a family
that share no answer with the pool, the tiny-QA set or the first two sets, and builds the
headline table from it.

Prints ONE JSON line (also written to --out, with the command that produced it) and, with
--plot, a bar chart of verified rate with its intervals.
"""

from __future__ import annotations

import argparse
import json
import operator
import os
import platform
import shlex
import sys
import time
from collections import Counter
from dataclasses import asdict, replace

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from stagent_ray.config import load_config  # noqa: E402
from stagent_ray.models.chat_format import UNSOLVED_MARKER  # noqa: E402
from stagent_ray.pipeline import run_pipeline  # noqa: E402
from stagent_ray.ray_setup import init_ray  # noqa: E402
from stagent_ray.runio import (exists, read_json, read_jsonl, read_table, run_path,  # noqa: E402
                               write_json, write_table)
from stagent_ray.stages.base import run_base  # noqa: E402
from stagent_ray.stages.evaluate import final_answer  # noqa: E402

ROWS = ["oracle", "teacher", "zero_shot", "sft0", "sft1", "sft1_all", "rl", "rl_all", "rl_sft0"]
ABLATIONS = ["sft1_all", "rl_all", "rl_sft0"]
SCRIPTED = ["oracle", "teacher"]  # rows that sample once (no checkpoint)
UNTRAINED = SCRIPTED + ["zero_shot"]  # rows without a training history
# the eval sets every row answers: pool cities, no shared answer; no shared entity either
EVAL_SETS = ["eval", "eval_entities"]
METRICS = ["verified", "rubric", "reward", "unsolved_accuracy"]
BOOTSTRAP = 2000


# ---------------------------------------------------------------- the ablations

def all_scored_rows(run_dir: str) -> list[dict]:
    """SFT-1' data: the best verified rollout of every scored query, whatever its region,
    plus the teacher-recovered rows SFT-1 also gets."""
    rows = [{"query_id": r["query_id"], "family": r["family"], "text": r["text"],
             "messages": r["best_messages"], "source": "policy_any",
             "pass_rate": r["pass_rate"]}
            for r in read_table(run_dir, "data/full_qa.parquet") if r["best_verified"]]
    rows += [r for r in read_table(run_dir, "data/certain.parquet")
             if r["source"] == "teacher_recovered"]
    return rows


def run_ablations(cfg, log, names: list[str]) -> None:
    """Train the named ablations of SFT-1', RL' and RL'' (each skipped when its checkpoint
    exists); their wall times go to <run_dir>/bench/seconds.json."""
    from stagent_ray.train.rl import run_rl
    from stagent_ray.train.sft import run_sft

    run_dir = cfg.run_dir
    manifest = read_json(run_dir, "manifest.json")
    sft1_steps = manifest["stages"]["sft1"]["metrics"]["steps"]
    runs = {
        "sft1_all": lambda: run_sft(cfg, "sft1", "data/all_scored.parquet",
                                    run_path(run_dir, "ckpt/sft0"), "ckpt/sft1_all",
                                    max_steps=sft1_steps, name="sft1_all"),
        "rl_all": lambda: run_rl(replace(cfg, rl=replace(cfg.rl, prompt_set="all")),
                                 run_path(run_dir, "ckpt/sft1"), "ckpt/rl_all", name="rl_all"),
        # the split's hard prompts (measured on SFT-0), from SFT-0 instead of SFT-1
        "rl_sft0": lambda: run_rl(replace(cfg, rl=replace(cfg.rl, remeasure=False)),
                                  run_path(run_dir, "ckpt/sft0"), "ckpt/rl_sft0",
                                  name="rl_sft0")}
    write_table(run_dir, "data/all_scored.parquet", all_scored_rows(run_dir))
    for name, train in runs.items():
        if name not in names or exists(run_dir, f"ckpt/{name}/config.json"):
            continue
        log(f"[{name}] running")
        t0 = time.time()
        train()
        seconds = read_json(run_dir, "bench/seconds.json") if exists(
            run_dir, "bench/seconds.json") else {}
        write_json(run_dir, "bench/seconds.json", {**seconds, name: round(time.time() - t0, 1)})


RL_ROWS = ["rl", "rl_all", "rl_sft0"]


def forget_rl(run_dir: str) -> None:
    """--redo-rl: remove what the remeasure and rl stages and the RL ablations made (their
    checkpoints, Ray Train state, metrics, evals, the report), so the next call trains RL
    again from the same SFT-1 (local run directories only)."""
    import glob
    import shutil

    paths = [f"{run_dir}/{p}" for p in (
        "data/parts/remeasure", "data/hard_sft1.parquet", "data/remeasured.parquet",
        "data/remeasure_report.json", "data/eval_rl_drawn.parquet",
        "data/eval_rl_undrawn.parquet", "report", "eval/summary.json")]
    for name in RL_ROWS:
        paths += [f"{run_dir}/ckpt/{name}", f"{run_dir}/train/{name}",
                  f"{run_dir}/train/{name}_sync"]
        paths += glob.glob(f"{run_dir}/train/{name}_*.jsonl")
        paths += glob.glob(f"{run_dir}/eval*/{name}.json")
        for mode in ("greedy", "sampled"):
            paths += glob.glob(f"{run_dir}/eval*/{name}_{mode}_*.parquet")
            paths += glob.glob(f"{run_dir}/eval*/parts/{name}_{mode}")
    for path in paths:
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
    manifest = read_json(run_dir, "manifest.json")
    for stage in ("remeasure", "rl", "eval", "report"):
        manifest["stages"].pop(stage, None)
    write_json(run_dir, "manifest.json", manifest)
    if exists(run_dir, "bench/seconds.json"):
        seconds = read_json(run_dir, "bench/seconds.json")
        write_json(run_dir, "bench/seconds.json",
                   {k: v for k, v in seconds.items() if k not in RL_ROWS})


def training_summary(run_dir: str, names: list[str]) -> dict:
    """Steps and final loss of each SFT run, steps and reward of each RL run."""
    out = {}
    for name in names:
        history = read_jsonl(run_dir, f"train/{name}_metrics.jsonl")
        if name.startswith("sft"):
            out[name] = {"steps": history[-1]["step"], "final_loss": round(history[-1]["loss"], 4)}
        else:
            q = max(1, len(history) // 4)
            def mean(rows, key):
                return round(float(np.mean([h.get(key, np.nan) for h in rows])), 4)
            quarters = (("first_quarter", history[:q]), ("last_quarter", history[-q:]))
            out[name] = {"steps": len(history), **{
                f"{key}_{part}": mean(rows, key) for key in ("reward_mean", "verified_rate")
                for part, rows in quarters},
                **{key: mean(history, key) for key in (
                    "kept_mixed_verdict_share", "sampled_mixed_verdict_share",
                    "verdict_adv_share", "groups_sampled", "groups_kept", "refill_rounds")}}
    return out


def evaluate_rows(cfg, log, names: list[str], eval_set: str = "eval") -> None:
    """Eval of each named row on data/<eval_set>.parquet that is not done yet (results in
    <eval_set>/): the teacher samples (its noise on), the oracle is the noise-free ceiling
    (it reads the query's slots, not its text), every checkpoint answers greedily (one pool
    of rollout actors for all of them). On the first eval set the pipeline's eval stage did
    some."""
    from stagent_ray.stages.base import base_checkpoint_path
    from stagent_ray.stages.evaluate import checkpoint_engine, evaluate_models
    from stagent_ray.stages.rollouts import policy_engine

    run_dir = cfg.run_dir
    queries = read_table(run_dir, f"data/{eval_set}.parquet")
    scripted = {"teacher": cfg.teacher, "oracle": replace(cfg.teacher, kind="oracle", noise=0.0)}
    for name, engine in scripted.items():
        if name in names and not exists(run_dir,
                                        f"{eval_set}/{name}_sampled_trajectories.parquet"):
            log(f"[{eval_set} {name}] running")
            evaluate_models(cfg, {name: engine}, queries, [("sampled", None, 1)],
                            out_dir=eval_set)
    todo = [n for n in names if n not in SCRIPTED
            and not exists(run_dir, f"{eval_set}/{n}_greedy_trajectories.parquet")]
    if todo:
        log(f"[{eval_set} {' '.join(todo)}] running")
        engines = {n: policy_engine(cfg, base_checkpoint_path(cfg)) if n == "zero_shot"
                   else checkpoint_engine(cfg, n) for n in todo}
        evaluate_models(cfg, engines, queries,
                        [("greedy", 0.0, 1)], out_dir=eval_set)


def write_fresh_eval_set(cfg, per_family: int) -> str:
    """data/eval_fresh<N>.parquet: `per_family` new queries of each family, in neither the
    pool nor the first eval set (on which the configuration's settings were chosen), so the
    claims can be tested on queries no choice has seen. Returns the set's name."""
    from stagent_ray.runio import query_to_row
    from stagent_ray.stages.pool import eval_queries, held_out_city
    from stagent_ray.tasks.families import FAMILIES
    from stagent_ray.tasks.query import answer_key
    from stagent_ray.world.generate import load_world

    name = f"eval_fresh{per_family}"
    if cfg.pool.source != "world":
        raise SystemExit("--fresh-eval draws new queries from the world's generators "
                         "(pool.source: world)")
    if not exists(cfg.run_dir, f"data/{name}.parquet"):
        w = cfg.world
        world = load_world(w.seed, w.n_cities, w.pois_per_city, w.today)
        seen = {answer_key(r) for t in ("pool", "tiny_qa_queries", *EVAL_SETS)
                for r in read_table(cfg.run_dir, f"data/{t}.parquet")}
        queries, _ = eval_queries(world, cfg.pool.families or FAMILIES, per_family,
                                  cfg.seed + 20_000, seen, held_out_city(world, cfg.pool))
        write_table(cfg.run_dir, f"data/{name}.parquet", [query_to_row(q) for q in queries])
    return name


# ---------------------------------------------------------------- the table

def episode_values(run_dir: str, name: str, eval_set: str = "eval") -> list[dict]:
    """One dict per eval episode: family and each metric (None where it does not apply)."""
    mode = "sampled" if name in SCRIPTED else "greedy"
    queries = {r["query_id"]: r for r in read_table(run_dir, f"data/{eval_set}.parquet")}
    out = []
    for t in read_table(run_dir, f"{eval_set}/{name}_{mode}_trajectories.parquet"):
        if t.get("infra_fault"):
            continue  # the tools failed, not the model (none without injected faults)
        q = queries[t["query_id"]]
        answer = final_answer(t["messages"])
        out.append({"query_id": t["query_id"], "family": q["family"],
                    "verified": float(t["verified"]),
                    "reward": float(t["reward"]),
                    "rubric": json.loads(t["parts"]).get("rubric"),
                    "unsolved_accuracy": float(UNSOLVED_MARKER in answer)
                    if q["difficulty"] == -1 else None})
    return out


def mean_ci(values: list[float], rng: np.random.Generator) -> dict | None:
    """Mean and 95% percentile-bootstrap interval over episodes (per family, per seed)."""
    v = np.array([x for x in values if x is not None], dtype=float)
    if not len(v):
        return None
    means = v[rng.integers(0, len(v), (BOOTSTRAP, len(v)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"mean": round(float(v.mean()), 4), "ci95": [round(float(lo), 4), round(float(hi), 4)],
            "n": int(len(v))}


def hierarchical_ci(by_seed: dict[int, np.ndarray], rng) -> tuple[float, float, float]:
    """Mean over seeds of each seed's mean, and a 95% interval from a two-level bootstrap:
    resample the seeds, then the queries within each resampled seed. Run-to-run variance
    enters (a resample over episodes alone treats seeds as if they were more queries)."""
    seeds = [v for v in by_seed.values() if len(v)]
    point = float(np.mean([v.mean() for v in seeds]))
    boot = np.empty(BOOTSTRAP)
    for b in range(BOOTSTRAP):
        picked = rng.integers(0, len(seeds), len(seeds))
        boot[b] = np.mean([seeds[i][rng.integers(0, len(seeds[i]), len(seeds[i]))].mean()
                           for i in picked])
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return point, float(lo), float(hi)


def summarise(episodes: list[dict], rng, hierarchical: bool = False) -> dict:
    """Each metric's mean and interval; `hierarchical` for the overall row (seeds, then
    queries), episodes otherwise (a family's few queries a seed)."""
    out = {}
    for m in METRICS:
        out[m] = mean_ci([e[m] for e in episodes], rng)
        if hierarchical and out[m] is not None:
            by_seed = {}
            for e in episodes:
                if e[m] is not None:
                    by_seed.setdefault(e["seed"], []).append(e[m])
            point, lo, hi = hierarchical_ci({k: np.array(v) for k, v in by_seed.items()}, rng)
            out[m].update(mean=round(point, 4), ci95=[round(lo, 4), round(hi, 4)],
                          ci95_episodes=out[m]["ci95"])
    return out


# The recipe's claims: (row, row it should beat, comparison). Each also gets a paired difference.
CLAIMS = {"sft1 > sft0": ("sft1", "sft0", operator.gt), "rl > sft1": ("rl", "sft1", operator.gt),
          "rl (hard) >= rl_all": ("rl", "rl_all", operator.ge),
          "sft1 (certain) > sft1_all": ("sft1", "sft1_all", operator.gt),
          "rl > rl_sft0": ("rl", "rl_sft0", operator.gt)}
MIN_SEEDS = 3  # fewer: an interval, never "significant"


def paired_difference(a: list[dict], b: list[dict], rng) -> dict:
    """Verified rate of a minus b on the same eval queries: the mean of the per-seed mean
    differences, each seed's difference, and a 95% hierarchical bootstrap interval (seeds,
    then queries within each seed: pairing takes out how hard each query is). Significant
    only when that interval excludes 0 over at least MIN_SEEDS seeds; `ci95_episodes` is
    the old interval over pooled episodes, for comparison."""
    va = {(e["seed"], e["query_id"]): e["verified"] for e in a}
    vb = {(e["seed"], e["query_id"]): e["verified"] for e in b}
    by_seed = {}
    for seed, qid in sorted(va.keys() & vb.keys()):
        by_seed.setdefault(seed, []).append(va[seed, qid] - vb[seed, qid])
    by_seed = {k: np.array(v) for k, v in by_seed.items()}
    point, lo, hi = hierarchical_ci(by_seed, rng)
    d = np.concatenate(list(by_seed.values()))
    pooled = d[rng.integers(0, len(d), (BOOTSTRAP, len(d)))].mean(axis=1)
    excludes_zero = bool(lo > 0 or hi < 0)
    return {"diff": round(point, 4), "ci95": [round(lo, 4), round(hi, 4)],
            "per_seed": {str(k): round(float(v.mean()), 4) for k, v in by_seed.items()},
            "n": int(len(d)), "seeds": len(by_seed), "excludes_zero": excludes_zero,
            "significant": excludes_zero and len(by_seed) >= MIN_SEEDS,
            "ci95_episodes": [round(float(x), 4) for x in np.percentile(pooled, [2.5, 97.5])]}


def table(run_dirs: dict[int, str], names: list[str],
          eval_set: str = "eval") -> tuple[dict, dict]:
    rng = np.random.default_rng(0)
    rows, episodes = {}, {}
    for name in names:
        per_seed = {seed: [dict(e, seed=seed) for e in episode_values(d, name, eval_set)]
                    for seed, d in run_dirs.items()}
        episodes[name] = [e for eps in per_seed.values() for e in eps]
        pooled = episodes[name]
        families = sorted({e["family"] for e in pooled})
        rows[name] = {
            "overall": summarise(pooled, rng, hierarchical=True),
            "by_family": {f: summarise([e for e in pooled if e["family"] == f], rng)
                          for f in families},
            "per_seed": {str(s): {m: (mean_ci([e[m] for e in eps], rng) or {}).get("mean")
                                  for m in METRICS} for s, eps in per_seed.items()}}
    differences = {f"{a} - {b}": paired_difference(episodes[a], episodes[b], rng)
                   for a, b, _ in CLAIMS.values() if a in rows and b in rows}
    return rows, differences


def targets(rows: dict) -> dict:
    """Each claim whose rows were run."""
    v = {name: r["overall"]["verified"]["mean"] for name, r in rows.items()}
    out = {claim: holds(v[a], v[b]) for claim, (a, b, holds) in CLAIMS.items()
           if a in v and b in v}
    ratio = {(name, bar): round(v[name] / v[bar], 4) if v.get(bar) else None
             for name in ("rl", "sft1") for bar in ("teacher", "oracle")}
    return {**out, "final student (rl) / teacher verified": ratio["rl", "teacher"],
            "sft1 / teacher verified": ratio["sft1", "teacher"],
            # the teacher is the oracle with noise: the noise-free oracle is the ceiling
            "final student (rl) / oracle ceiling verified": ratio["rl", "oracle"],
            "final student >= 80% of teacher": bool(v["teacher"]) and v["rl"] >= 0.8 * v["teacher"]}


def plot(rows: dict, path: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in ROWS if n in rows and rows[n]["overall"]["verified"]]
    means = [rows[n]["overall"]["verified"]["mean"] for n in names]
    lo = [m - rows[n]["overall"]["verified"]["ci95"][0] for n, m in zip(names, means)]
    hi = [rows[n]["overall"]["verified"]["ci95"][1] - m for n, m in zip(names, means)]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(names, means, yerr=[lo, hi], capsize=4,
           color=["#888" if n in UNTRAINED else "#4c72b0" if "_" not in n else "#dd8452"
                  for n in names])
    ax.set_ylabel("verified rate (eval set)")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/cascade_cpu.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--plot", help="bar chart of verified rate (PNG)")
    ap.add_argument("--ablations", default="all",
                    help=f"all | none | a comma-separated subset of {','.join(ABLATIONS)}")
    ap.add_argument("--fresh-eval", type=int, metavar="N",
                    help="also evaluate every row on a second eval set of N new queries a "
                         "family (in neither the pool nor the first eval set) and build the "
                         "table from it; the first set's differences are kept beside it")
    ap.add_argument("--zero-shot", action="store_true",
                    help="also evaluate the base model before any training (a pretrained base)")
    ap.add_argument("--redo-rl", action="store_true",
                    help="train RL (remeasure, rl and the RL ablations) again from each seed's "
                         "SFT-1, e.g. with other rl.* overrides; earlier stages are kept")
    ap.add_argument("overrides", nargs="*", help="dotted key=value config overrides")
    args = ap.parse_args()
    args.ablations = {"all": ABLATIONS, "none": []}.get(args.ablations,
                                                        args.ablations.split(","))
    if set(args.ablations) - set(ABLATIONS):
        ap.error(f"--ablations: {args.ablations} are not all of {ABLATIONS} (or all, none)")
    names = [n for n in ROWS if (n not in ABLATIONS or n in args.ablations)
             and (n != "zero_shot" or args.zero_shot)]  # scripted first
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731 - stdout is the JSON

    t0 = time.time()
    base = load_config(args.config, args.overrides)
    seed_overrides = []
    if base.pretrain.docs:
        # One pretrained base for every seed, as a hub model would be: the seeds vary the
        # cascade, not its starting point (and on CPU pretraining costs as much as a seed).
        init_ray(base.ray)
        base_cfg = replace(base, run_dir=f"{os.path.abspath(base.run_dir)}/base",
                           seed=args.seeds[0])
        log(f"== pretrained base (seed {args.seeds[0]}): {base_cfg.run_dir}")
        seed_overrides = [f"model.name_or_path={run_base(base_cfg)['model']}", "pretrain.docs=0"]
    run_dirs, training, stage_seconds = {}, {}, {}
    eval_set = "eval"
    for seed in args.seeds:
        cfg = load_config(args.config, args.overrides + seed_overrides + [
            f"seed={seed}", f"run_dir={os.path.abspath(base.run_dir)}/seed{seed}"])
        log(f"== seed {seed}: {cfg.run_dir}")
        if args.redo_rl and exists(cfg.run_dir, "manifest.json"):
            forget_rl(cfg.run_dir)
        if run_pipeline(cfg, log=log) != 0:
            raise SystemExit(f"seed {seed}: the cascade failed (see {cfg.run_dir}/manifest.json)")
        run_ablations(cfg, log, args.ablations)
        for name in EVAL_SETS:
            evaluate_rows(cfg, log, names, name)
        if args.fresh_eval:
            eval_set = write_fresh_eval_set(cfg, args.fresh_eval)
            evaluate_rows(cfg, log, names, eval_set)
        run_dirs[seed] = cfg.run_dir
        training[seed] = training_summary(cfg.run_dir, [n for n in names if n not in UNTRAINED])
        manifest = read_json(cfg.run_dir, "manifest.json")
        stage_seconds[seed] = {s: round(e.get("seconds", 0), 1)
                               for s, e in manifest["stages"].items()}
        if exists(cfg.run_dir, "bench/seconds.json"):  # the ablations' training times
            stage_seconds[seed].update(read_json(cfg.run_dir, "bench/seconds.json"))
    rows, differences = table(run_dirs, names, eval_set)
    sets = {}
    for name in EVAL_SETS + ([eval_set] if eval_set not in EVAL_SETS else []):
        set_rows, set_differences = (rows, differences) if name == eval_set else table(
            run_dirs, names, name)
        pool_metrics = {s: read_json(d, "manifest.json")["stages"]["pool"]["metrics"]
                        for s, d in run_dirs.items()}
        short_key = {"eval": "eval_short", "eval_entities": "eval_entities_short"}.get(name)
        sets[name] = {
            "verified": {n: r["overall"]["verified"] for n, r in set_rows.items()},
            "targets": targets(set_rows), "paired_differences_verified": set_differences,
            # queries a family per seed, and the families that could not fill their share
            "sizes": {str(s): dict(sorted(Counter(r["family"] for r in read_table(
                d, f"data/{name}.parquet")).items())) for s, d in run_dirs.items()},
            "short_families": {str(s): m.get(short_key, {}) for s, m in pool_metrics.items()}
            if short_key else {}}
    result = {
        "bench": "cascade", "config": args.config, "overrides": args.overrides,
        "seeds": args.seeds,
        "command": "python scripts/bench_cascade.py " + shlex.join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}"
                   + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""),
        "wall_s_this_call": round(time.time() - t0, 1),  # finished work is skipped
        "eval_set": f"data/{eval_set}.parquet",
        "targets": targets(rows), "paired_differences_verified": differences, "rows": rows,
        "eval_sets": sets,
        "split": {s: read_json(d, "data/split_report.json")["regions"]
                  for s, d in run_dirs.items()},
        # RL's prompts: the hard set measured again on SFT-1 (stages/remeasure.py)
        "remeasure": {s: {k: v for k, v in read_json(d, "data/remeasure_report.json").items()
                          if k in ("skipped", "candidates", "hard", "hard_before", "moved")}
                      for s, d in run_dirs.items() if exists(d, "data/remeasure_report.json")},
        "training": training,
        "seconds": stage_seconds,
        "config_used": asdict(load_config(args.config, args.overrides))}
    line = json.dumps(result)
    print(line)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    if args.plot:
        extra = " ".join(o for o in args.overrides if not o.startswith("run_dir="))
        plot(rows, args.plot, f"{args.config} {extra}\nseeds {args.seeds}: verified rate on "
                              f"{eval_set}, 95% CI")


if __name__ == "__main__":
    main()
