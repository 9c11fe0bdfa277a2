"""The agent loop with a real tiny model: garbage output never crashes it, and the ids,
log-probs and loss mask it records line up with a fresh forward pass."""

import json

import pytest
import torch

from stagent_ray.config import AgentConfig
from stagent_ray.models.build import load_model
from stagent_ray.rollout.agent_loop import run_episodes
from stagent_ray.rollout.engine import SamplingParams
from stagent_ray.rollout.hf_engine import HFEngine
from stagent_ray.world.backends import make_executor

QUERIES = [("q1", "Find a quiet cafe in Moling open at 9:00."),
           ("q2", "Weather in Moling now?"),
           ("q3", "Cheapest train to the coast on 2026-06-03?"),
           ("q4", "Convert 5 km to miles.")]


def test_agent_loop_survives_garbage_and_records_aligned_logprobs(tiny_checkpoint):
    engine = HFEngine(tiny_checkpoint, device="cpu", max_batch_size=4)
    executor = make_executor()
    agent = AgentConfig(max_turns=3, max_tokens=900, tool_prompt="compact")
    sampling = SamplingParams(temperature=1.0, max_new_tokens=40, seed=3)
    trajs = run_episodes(engine, executor, QUERIES, sampling, agent)
    assert [t.query_id for t in trajs] == ["q1", "q2", "q3", "q4"]
    for t in trajs:
        assert t.stop_reason in {"answer", "max_turns", "max_tokens"}
        assert len(t.token_ids) == len(t.logprobs) == len(t.loss_mask)
        assert t.loss_mask[:t.prompt_len] == [0] * t.prompt_len and sum(t.loss_mask) > 0
        assert t.messages[0]["role"] == "system" and t.messages[1]["role"] == "user"
        # Every non-final assistant turn is followed by an observation (a result or an error).
        roles = [m["role"] for m in t.messages[2:]]
        for i, role in enumerate(roles[:-1]):
            if role == "assistant":
                assert roles[i + 1] == "tool"
    # An untrained model writes garbage: its turns come back as structured error observations.
    errors = [json.loads(m["content"]) for t in trajs for m in t.messages if m["role"] == "tool"]
    assert any("error" in e and e["error"]["type"] for e in errors)
    assert sum(t.num_tool_errors for t in trajs) > 0

    # Log-probs recorded during the rollout equal one forward pass over the whole sequence.
    model = load_model(tiny_checkpoint)
    for t in trajs:
        ids = torch.tensor([t.token_ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)
        recomputed = logp.gather(-1, ids[0, 1:, None])[:, 0]
        mask = torch.tensor(t.loss_mask[1:], dtype=torch.bool)
        rollout = torch.tensor(t.logprobs[1:])
        assert torch.allclose(recomputed[mask], rollout[mask], atol=1e-3), \
            (recomputed[mask] - rollout[mask]).abs().max()
        assert torch.all(rollout[~mask] == 0)


def test_an_episode_replays_the_same_in_any_batch(tiny_checkpoint):
    """Episodes run on their own over one engine stream; with its seed, an episode's trajectory
    does not depend on the other episodes or on the batch size."""
    agent = AgentConfig(max_turns=3, max_tokens=900, tool_prompt="compact")
    sampling = SamplingParams(temperature=1.0, max_new_tokens=40)
    seeds = [101, 102, 103, 104]
    executor = make_executor()
    together = run_episodes(HFEngine(tiny_checkpoint, device="cpu", max_batch_size=3), executor,
                            QUERIES, sampling, agent, seeds=seeds)
    engine = HFEngine(tiny_checkpoint, device="cpu", max_batch_size=2)
    for i in (3, 0):
        alone, = run_episodes(engine, executor, QUERIES[i:i + 1], sampling, agent,
                              seeds=seeds[i:i + 1])
        assert alone.token_ids == together[i].token_ids
        assert alone.messages == together[i].messages
    assert sum(t.num_turns for t in together) > len(together)  # multi-turn episodes were run


def test_an_engine_failure_reaches_every_episode(tiny_checkpoint):
    """The decode thread dies mid-rollout: run_episodes raises its error instead of hanging."""
    engine = HFEngine(tiny_checkpoint, device="cpu", max_batch_size=2)
    calls = {"n": 0}
    forward = engine.model.forward

    def failing_forward(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 5:  # after the first prefills and a few decode steps
            raise RuntimeError("device lost")
        return forward(*args, **kwargs)

    engine.model.forward = failing_forward
    agent = AgentConfig(max_turns=3, max_tokens=900, tool_prompt="compact")
    with pytest.raises(RuntimeError, match="device lost"):
        run_episodes(engine, make_executor(), QUERIES, SamplingParams(max_new_tokens=40), agent,
                     seeds=[1, 2, 3, 4])
