"""RL's group rules on hand-built groups (train/groups.py; no Ray, no model): which groups
dynamic sampling keeps, how it refills, what advantage an infra-faulted episode carries, and
the prompt stream's curriculum."""

import pytest
import torch

from stagent_ray.train.groups import (episode_advantages, keep_group, prompt_order,
                                      sample_groups, take_prompts, verdict_share)


def group(verdicts, rewards=None, faulted=(), qid="q"):
    rewards = rewards or [0.7 + 0.3 * (0.5 + 0.01 * i) if v else 0.3 * (0.5 + 0.01 * i)
                          for i, v in enumerate(verdicts)]
    return [{"query_id": qid, "verified": bool(v), "reward": r, "infra_fault": i in faulted}
            for i, (v, r) in enumerate(zip(verdicts, rewards))]


def test_a_group_with_one_verdict_is_dropped_on_verified_but_not_on_reward():
    all_fail = group([0] * 8)  # every reward differs (the rubric), no verdict does
    all_pass = group([1] * 8)
    mixed = group([1, 0, 0, 0, 0, 0, 0, 0])
    flat = group([0] * 8, rewards=[0.0] * 8)
    for g in (all_fail, all_pass):
        assert not keep_group(g, "verified")
        assert keep_group(g, "reward")
    assert keep_group(mixed, "verified") and keep_group(mixed, "reward")
    assert not keep_group(flat, "verified") and not keep_group(flat, "reward")


def test_an_infra_faulted_episode_is_no_outcome():
    # 7 passes and one episode whose tools failed (scored 0, not verified): nothing to
    # compare among the episodes the model answers for
    g = group([1] * 7 + [0], faulted={7})
    assert not keep_group(g, "verified")
    g = group([1] * 7 + [0], rewards=[1.0] * 7 + [0.0], faulted={7})
    assert not keep_group(g, "reward")


def test_infra_faulted_episodes_carry_zero_advantage_and_stay_out_of_the_baseline():
    g = group([1, 0, 1, 0], rewards=[1.0, 0.2, 0.9, 0.0], faulted={3})
    adv = episode_advantages(g, norm_by_std=True)
    assert adv[3] == 0.0
    r = torch.tensor([1.0, 0.2, 0.9])
    expected = (r - r.mean()) / (r.std(unbiased=False) + 1e-6)
    assert adv[:3] == pytest.approx(expected.tolist(), abs=1e-6)
    # Dr. GRPO: no std division
    adv = episode_advantages(g, norm_by_std=False)
    assert adv[:3] == pytest.approx((r - r.mean()).tolist(), abs=1e-6) and adv[3] == 0.0
    assert episode_advantages(group([0, 0], faulted={0, 1}), True) == [0.0, 0.0]


class ScriptedDraw:
    """Hands out groups from a list, in order, the way the RL loop's rollouts would."""

    def __init__(self, groups):
        self.groups, self.calls = list(groups), []

    def __call__(self, count, round_):
        self.calls.append((count, round_))
        out, self.groups = self.groups[:count], self.groups[count:]
        return out


def test_uninformative_groups_are_dropped_and_the_batch_refilled():
    rubric_only = [group([0] * 8, qid=f"f{i}") for i in range(30)]
    mixed = [group([1, 0] * 4, qid=f"m{i}") for i in range(30)]
    # round 0: 1 of 4 informative; refill: 3 missing at a keep rate of 1/4 -> 12 drawn;
    # then 1 missing at 3/16 -> 6, capped at 4x what is missing; the script has run dry
    draw = ScriptedDraw([mixed[0], *rubric_only[:3], *mixed[1:3], *rubric_only[3:13]])
    kept, counts, sampled = sample_groups(draw, 4, max_refill_rounds=3, filter_on="verified")
    assert draw.calls == [(4, 0), (12, 1), (4, 2), (4, 3)]
    assert [g[0]["query_id"] for g in kept] == ["m0", "m1", "m2"]
    assert counts["groups_kept"] == 3 and counts["groups_short"] == 1
    assert counts["groups_sampled"] == len(sampled) == 16 and counts["refill_rounds"] == 3
    assert counts["kept_mixed_verdict_share"] == 1.0
    assert counts["sampled_mixed_verdict_share"] == pytest.approx(3 / 16)

    draw = ScriptedDraw(mixed[:3] + rubric_only[:1] + mixed[3:])
    kept, counts, _ = sample_groups(draw, 4, max_refill_rounds=3, filter_on="verified")
    assert len(kept) == 4 and counts["refill_rounds"] == 1 and counts["groups_short"] == 0
    assert draw.calls == [(4, 0), (2, 1)]  # 1 missing at a keep rate of 3/4 -> 2 drawn
    assert counts["groups_informative"] == 5 and counts["groups_kept"] == 4  # capped at P


def test_the_refill_is_bounded_and_reward_filtering_keeps_rubric_only_groups():
    draw = ScriptedDraw([group([0] * 8, qid=str(i)) for i in range(100)])
    kept, counts, _ = sample_groups(draw, 4, max_refill_rounds=2, filter_on="verified")
    assert kept == [] and counts["groups_short"] == 4 and len(draw.calls) == 3
    assert counts["groups_sampled"] == 4 + 16 + 16

    draw = ScriptedDraw([group([0] * 8, qid=str(i)) for i in range(100)])
    kept, counts, _ = sample_groups(draw, 4, max_refill_rounds=2, filter_on="reward")
    assert len(kept) == 4 and counts["kept_mixed_verdict_share"] == 0.0

    draw = ScriptedDraw([group([0] * 8, rewards=[0.0] * 8, qid=str(i)) for i in range(100)])
    kept, counts, _ = sample_groups(draw, 4, max_refill_rounds=2, filter_on=None)
    assert len(kept) == 4 and draw.calls == [(4, 0)]  # PPO: every group, one round


def test_verdict_share_separates_verdict_from_rubric_advantages():
    by_verdict = [{"advantage": a, "verified": v} for a, v in [(1.0, 1), (-1.0, 0)] * 4]
    by_rubric = [{"advantage": a, "verified": 0} for a in (1.0, -1.0, 0.5, -0.5)]
    assert verdict_share(by_verdict) == pytest.approx(1.0)
    assert verdict_share(by_rubric) == 0.0


def test_the_curriculum_takes_the_given_order_first_then_shuffles():
    assert prompt_order(10, 0, seed=3, curriculum=True) == list(range(10))
    second = prompt_order(10, 1, seed=3, curriculum=True)
    assert sorted(second) == list(range(10)) and second != list(range(10))
    assert prompt_order(10, 0, seed=3, curriculum=False) != list(range(10))
    assert take_prompts(10, 8, 4, seed=3, curriculum=True) == [8, 9] + second[:2]
    assert prompt_order(10, 1, 3, False) != prompt_order(10, 1, 4, False)  # seeds differ
