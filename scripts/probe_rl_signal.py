"""What would RL's advantages say? The groups SFT-1 rolls out on the hard set, under each choice
of group filter, rubric share and std normalisation.

    python scripts/probe_rl_signal.py --run-dir runs/bench_cascade_cpu_rl --seeds 0 1 2 \
        --out scripts/results/cascade_cpu_rl_signal.json

For each <run-dir>/seed<k> whose `remeasure` stage ran, the stage's rollouts (SFT-1 at
rl.temperature, rl.group_size a query, on the split's hard queries: what RL's first step
draws from, before the re-measured set narrows it) are regrouped by query, and their rewards
recomputed from the scored parts for every setting: reward = (1 − w)·verified + w·rubric (0
without an answer or under the veto), groups kept on `reward` (any spread) or `verified`
(mixed verdicts), advantages divided by the group's std or not (Dr. GRPO). Per setting:
groups kept, their share with mixed verdicts, `verdict_adv_share` (squared correlation of
the kept episodes' advantages with their verdicts), `sign_against_verdict` (the share of
kept episodes pushed against their verdict: a pass with a negative advantage or a fail with
a positive one) and `rubric_only_adv_mass` (the share of the summed |advantage| that sits in
groups whose verdicts are all equal). No model runs: it reads the rollouts. Prints one JSON
line.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import sys
from collections import defaultdict

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from stagent_ray.reward.score import weighted_value  # noqa: E402
from stagent_ray.runio import read_table  # noqa: E402
from stagent_ray.stages.rollouts import list_parts  # noqa: E402


def reward(t: dict, w: float) -> float:
    parts = json.loads(t["parts"])
    if t["stop_reason"] != "answer" or parts.get("veto") or "rubric" not in parts:
        return 0.0
    return weighted_value(t["verified"], parts["rubric"], w)


def measure(groups: list[list[dict]], filter_on: str, w: float, norm: bool) -> dict:
    kept, adv_mass_flat, adv_mass_all = [], 0.0, 0.0
    for g in groups:
        r = np.array([reward(t, w) for t in g])
        v = np.array([float(t["verified"]) for t in g])
        mixed = 0 < v.sum() < len(v)
        if not (mixed if filter_on == "verified" else r.max() - r.min() > 1e-9):
            continue
        a = r - r.mean()
        if norm:
            a = a / (r.std() + 1e-6)
        kept.append((a, v, mixed))
        adv_mass_all += np.abs(a).sum()
        adv_mass_flat += 0.0 if mixed else np.abs(a).sum()
    if not kept:
        return {"groups_kept": 0}
    a = np.concatenate([k[0] for k in kept])
    v = np.concatenate([k[1] for k in kept])
    corr = float(np.corrcoef(a, v)[0, 1] ** 2) if a.std() > 1e-12 and v.std() > 1e-12 else 0.0
    against = ((v == 1) & (a < -1e-9)) | ((v == 0) & (a > 1e-9))
    return {"groups_kept": len(kept), "kept_mixed_verdict_share": round(
                sum(k[2] for k in kept) / len(kept), 4),
            "verdict_adv_share": round(corr, 4),
            "sign_against_verdict": round(float(against.mean()), 4),
            "rubric_only_adv_mass": round(adv_mass_flat / max(adv_mass_all, 1e-12), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run-dir", required=True, help="the benchmark's run_dir (holds seed<k>/)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()

    groups = []
    for seed in args.seeds:
        run_dir = os.path.abspath(f"{args.run_dir}/seed{seed}")
        by_query = defaultdict(list)
        for part in list_parts(run_dir, "data/parts/remeasure", "traj-"):
            for t in read_table(run_dir, part, columns=["query_id", "verified", "parts",
                                                        "stop_reason", "infra_fault"]):
                if not t["infra_fault"]:
                    by_query[(seed, t["query_id"])].append(t)
        groups += list(by_query.values())
    settings = {}
    for filter_on, w, norm in itertools.product(["reward", "verified"], [0.0, 0.1, 0.3],
                                                [True, False]):
        settings[f"filter_on={filter_on} rubric_weight={w} norm_adv_by_std={norm}"] = \
            measure(groups, filter_on, w, norm)
    result = {"probe": "rl_signal",
              "command": "python scripts/probe_rl_signal.py " + shlex.join(sys.argv[1:]),
              "groups": len(groups),
              "mixed_verdict_groups": sum(0 < sum(t["verified"] for t in g) < len(g)
                                          for g in groups),
              "settings": settings}
    print(json.dumps(result))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
