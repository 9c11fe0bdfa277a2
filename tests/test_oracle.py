"""The oracle solves every family through the real tools, replays statelessly, never reads
the ground truth, and makes mistakes when asked to."""

import argparse
import dataclasses
import json

import pytest

from stagent_ray.models.chat_format import parse_assistant_turn
from stagent_ray.reward import score_trajectory
from stagent_ray.tasks import cli
from stagent_ray.tasks.families import FAMILIES, generate_queries
from stagent_ray.tasks.oracle import oracle_next_turn, oracle_verified_rates, run_oracle
from stagent_ray.world.backends import make_executor
from stagent_ray.world.generate import load_world
from stagent_ray.world.schemas import SCHEMAS


@pytest.fixture(scope="module")
def world():
    return load_world(0)


@pytest.fixture(scope="module")
def executor():
    return make_executor("world", seed=0)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_oracle_is_verified_at_noise_zero(world, executor, family):
    queries = generate_queries(world, family, 50, seed=0)
    scores = [score_trajectory(q, run_oracle(q, executor)) for q in queries]
    verified = [s for s in scores if s.verified]
    assert len(verified) >= 0.99 * len(scores), [s.reason for s in scores if not s.verified][:3]
    assert all(s.value >= 0.95 for s in verified), [(s.value, s.parts) for s in verified if s.value < 0.95][:3]


def test_trajectories_follow_the_chat_format(world, executor):
    for family in FAMILIES:
        for q in generate_queries(world, family, 5, seed=1):
            messages = run_oracle(q, executor, noise=0.5, seed=1)
            assert messages[0] == {"role": "user", "content": q.text}
            for i, msg in enumerate(messages[1:-1], 1):
                if msg["role"] == "assistant":
                    turn = parse_assistant_turn(msg["content"], SCHEMAS)
                    if turn.error is None:
                        assert len(turn.calls) == 1
                    else:  # a deliberately malformed call (noise): the tool rejects it too
                        assert "error" in json.loads(messages[i + 1]["content"])
                        assert len(parse_assistant_turn(msg["content"]).calls) == 1
                else:
                    assert msg["role"] == "tool"
                    json.loads(msg["content"])
            assert messages[-1]["role"] == "assistant"
            assert parse_assistant_turn(messages[-1]["content"]).is_final


@pytest.mark.parametrize("noise", [0.0, 0.3, 0.8])
def test_next_turn_replay_equals_run_oracle(world, executor, noise):
    for family in FAMILIES:
        for q in generate_queries(world, family, 6, seed=2):
            messages = run_oracle(q, executor, noise=noise, seed=5)
            for i, msg in enumerate(messages):
                if msg["role"] == "assistant":
                    assert oracle_next_turn(q, messages[:i], noise=noise, seed=5) == msg["content"]
                    assert oracle_next_turn(q.to_dict(), messages[:i], noise=noise, seed=5) == msg["content"]


def test_next_turn_rejects_foreign_conversations(world, executor):
    q = generate_queries(world, "current_weather", 1, seed=0)[0]
    messages = run_oracle(q, executor)
    extra = messages[:-1] + [messages[1], messages[2]]
    with pytest.raises(ValueError):
        oracle_next_turn(q, extra)


def test_oracle_never_reads_ground_truth(world, executor):
    for family in FAMILIES:
        for q in generate_queries(world, family, 3, seed=3):
            blind = dataclasses.replace(q, ground_truth={})
            assert run_oracle(blind, executor, noise=0.3, seed=1) == run_oracle(q, executor, noise=0.3, seed=1)


def test_noise_makes_mistakes_of_every_kind(world, executor):
    reasons, verified = [], []
    for family in FAMILIES:
        for q in generate_queries(world, family, 20, seed=4):
            score = score_trajectory(q, run_oracle(q, executor, noise=0.5, seed=4))
            verified.append(score.verified)
            reasons.append(score.reason)
    rate = sum(verified) / len(verified)
    assert 0.3 < rate < 0.9
    text = " ".join(reasons)
    for kind in ("hallucination", "wrong place", "missing [Unsolved]", "missing time", "wrong choice"):
        assert kind in text, kind
    assert any(s.parts["failed"] for s in [score_trajectory(q, run_oracle(q, executor, noise=1.0, seed=9))
                                            for q in generate_queries(world, "ranking_list", 10, seed=4)])


def test_verified_rates_and_cli(capsys):
    rates = oracle_verified_rates(per_family=3, noise=0.0, score_trajectory=score_trajectory, seed=0)
    assert set(rates) == set(FAMILIES) and all(r == 1.0 for r in rates.values())
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["tasks", "oracle", "--per-family", "2", "--noise", "0.3"])
    assert args.func(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) == set(FAMILIES) and all(0.0 <= r <= 1.0 for r in printed.values())
