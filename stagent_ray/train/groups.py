"""RL's prompts and groups: the prompt stream, dynamic sampling with refill, advantages.

Pure functions (no Ray, no model), so each rule is tested on hand-built groups
(tests/test_rl_groups.py). A group is a list of G episode dicts with at least `query_id`,
`reward`, `verified` and `infra_fault`.
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch

from stagent_ray.train import losses as L


def prompt_order(n: int, epoch: int, seed: int, curriculum: bool) -> list[int]:
    """The prompt stream, pass `epoch` over the n prompts: with `curriculum` the first pass
    takes them in the order given (the hard set comes most uncertain first), later passes
    (and every pass without it) a fresh shuffle."""
    order = list(range(n))
    if not (curriculum and epoch == 0):
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def take_prompts(n: int, cursor: int, count: int, seed: int, curriculum: bool) -> list[int]:
    return [prompt_order(n, (cursor + i) // n, seed, curriculum)[(cursor + i) % n]
            for i in range(count)]


def keep_group(group: list[dict], filter_on: str) -> bool:
    """Dynamic sampling: a group teaches only when its outcomes differ. `verified`: its
    verdicts (a group that all fails, or all passes, differs only in the rubric, and its
    normalised advantages would teach the rubric at full size); `reward`: any spread of the
    shaped reward. Infra-faulted episodes are no outcome of the model's."""
    scored = [e for e in group if not e["infra_fault"]]
    if filter_on == "verified":
        return len({e["verified"] for e in scored}) > 1
    rewards = [e["reward"] for e in scored]
    return bool(rewards) and max(rewards) - min(rewards) > 1e-9


def episode_advantages(group: list[dict], norm_by_std: bool) -> list[float]:
    """[G] advantages of one group, relative to the group's mean over the episodes the model
    answers for; an infra-faulted episode (the tools failed) gets 0 and is not in the mean."""
    scored = [i for i, e in enumerate(group) if not e["infra_fault"]]
    out = [0.0] * len(group)
    if scored:
        rewards = torch.tensor([group[i]["reward"] for i in scored])       # [G']
        for i, a in zip(scored, L.group_advantages(rewards[None], norm_by_std)[0].tolist()):
            out[i] = a
    return out


def sample_groups(draw, prompts_per_step: int, max_refill_rounds: int,
                  filter_on: str | None) -> tuple[list, dict, list]:
    """Dynamic sampling with refill (DAPO): `draw(count, round_)` rolls out `count` new
    prompts and returns their groups; groups that `keep_group` rejects are dropped and more
    are drawn, sized by the keep rate seen so far (at most 4x what is missing), until
    `prompts_per_step` are kept or `max_refill_rounds` refills are spent. `filter_on` None
    keeps every group in one round (PPO: the critic learns from all of them). Returns the
    kept groups (at most prompts_per_step), the counts and every group sampled."""
    P = prompts_per_step
    kept, sampled, rounds = [], [], 0
    for round_ in range(1 + (max_refill_rounds if filter_on else 0)):
        need = P - len(kept)
        if need <= 0:
            break
        rate = len(kept) / len(sampled) if sampled else 1.0
        count = P if round_ == 0 else min(4 * need, math.ceil(need / max(rate, 0.25)))
        groups = draw(count, round_)
        rounds = round_
        sampled += groups
        kept += [g for g in groups if filter_on is None or keep_group(g, filter_on)]
    counts = {"groups_sampled": len(sampled), "groups_informative": len(kept),
              "groups_kept": min(P, len(kept)), "groups_short": max(0, P - len(kept)),
              "refill_rounds": rounds,
              # how often the policy is uncertain, whatever was kept
              "sampled_mixed_verdict_share": sum(keep_group(g, "verified") for g in sampled)
              / max(1, len(sampled)),
              "kept_mixed_verdict_share": sum(keep_group(g, "verified") for g in kept[:P])
              / max(1, min(P, len(kept)))}
    return kept[:P], counts, sampled


def verdict_share(seqs: list[dict]) -> float:
    """Squared correlation of the trained episodes' advantages with their verdicts: 1 when
    the advantages say only pass or fail, near 0 when the rubric sets them."""
    a = np.array([s["advantage"] for s in seqs], dtype=float)
    v = np.array([s["verified"] for s in seqs], dtype=float)
    if len(a) < 2 or a.std() < 1e-12 or v.std() < 1e-12:
        return 0.0
    return float(np.corrcoef(a, v)[0, 1] ** 2)
