"""Scoring trajectories: verified check against ground truth, rubric, hallucination veto."""

from stagent_ray.reward.score import Score, score_trajectory

__all__ = ["Score", "score_trajectory"]
