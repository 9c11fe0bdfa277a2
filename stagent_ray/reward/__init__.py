"""Scoring trajectories: verified check against ground truth, rubric, hallucination veto,
and an optional LLM judge (reward.kind: verifier | judge | both)."""

from dataclasses import replace
from functools import partial

from stagent_ray.reward.score import RUBRIC_WEIGHT, Score, score_trajectory

__all__ = ["Score", "score_trajectory", "make_scorer", "score_episode"]


def score_episode(score, query, messages: list[dict], stop_reason: str) -> Score:
    """Score a rolled-out episode. The scorer sees only messages: an episode cut off (its
    last turn hit max_new_tokens at max_turns, or the token budget ran out) ends on a
    fragment it would grade as an answer, and a policy learns to ramble into the cut when
    that pays. Such an episode has no answer: reward 0."""
    if stop_reason != "answer":
        return Score(0.0, False, {"stop_reason": stop_reason},
                     f"no final answer (stopped: {stop_reason})")
    return score(query, messages)


def make_scorer(reward_cfg, rubric_weight: float = RUBRIC_WEIGHT):
    """A `score(query, messages) -> Score` function for the configured reward; the verifier's
    value weighs the rubric by `rubric_weight` (each stage sets its own).

    judge: the LLM judge's value; with no ground truth, a value at or above
    `judge_pass_threshold` counts as verified, so the certainty split still has passes to
    count. both: the judge and the verifier combined; verified comes from the verifier.
    """
    verifier = partial(score_trajectory, rubric_weight=rubric_weight)
    if reward_cfg.kind == "verifier":
        return verifier
    from stagent_ray.reward.judge import LLMJudge, combined_score
    from stagent_ray.tasks.taxonomy import task_type

    judge = LLMJudge(reward_cfg.judge_base_url, reward_cfg.judge_model,
                     reward_cfg.judge_api_key_env, reward_cfg.judge_concurrency,
                     reward_cfg.judge_retries, reward_cfg.judge_timeout_s)

    def score(query, messages) -> Score:
        intent = query.intent if hasattr(query, "intent") else query["intent"]
        text = query.text if hasattr(query, "text") else query["text"]
        judged = judge.judge(text, messages, task_type(intent["level1"], intent["level2"]))
        if reward_cfg.kind == "judge":
            return replace(judged, verified=judged.value >= reward_cfg.judge_pass_threshold)
        return combined_score(judged, verifier(query, messages), reward_cfg.judge_weight)

    return score
