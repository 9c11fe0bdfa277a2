"""Fault injection without Ray: config checks, the executor's injected faults and retries,
garbage generations, and how the agent loop and the per-query summary treat each."""

import asyncio
import json
import time
from collections import Counter
from dataclasses import asdict

import pytest

from stagent_ray.config import ConfigError, EngineConfig, FaultConfig, load_config
from stagent_ray.rollout.agent_loop import run_message_episodes
from stagent_ray.rollout.engines import GarbageMessageEngine, make_message_engine, with_faults
from stagent_ray.stages.rollouts import summarise_query
from stagent_ray.tasks.families import FAMILIES, generate_queries
from stagent_ray.world.backends import TOOL_FAULTS, make_executor
from stagent_ray.world.generate import load_world

CITIES = ["Moling", "Yunhai", "Qingshan", "Lanxi"]


def calls(n: int) -> list[tuple[str, dict]]:
    return [("weather_current_conditions", {"location": CITIES[i % 4]}) if i < 4 else
            ("web_search", {"query": f"opening hours of museum {i}"}) for i in range(n)]


def faulty(rates: dict, retries: int, **kw):
    faults = asdict(FaultConfig(**{f"tool_{k}": v for k, v in rates.items()}, seed=7))
    return make_executor("world", seed=0, retries=retries, faults=faults, **kw)


@pytest.mark.parametrize("override, message", [
    ("faults.tool_error=1.5", "faults.tool_error: 1.5 is outside [0, 1]"),
    ("faults.engine_garbage=-0.1", "faults.engine_garbage"),
    ("faults.tool_retries=-1", "faults.tool_retries: must be >= 0"),
    ("faults.tool_timeot=0.1", "unknown config key 'faults.tool_timeot'"),
])
def test_fault_config_errors_name_the_field(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config("configs/tiny.yaml", [override])
    with pytest.raises(ConfigError, match="over 1"):
        load_config("configs/tiny.yaml", ["faults.tool_error=0.6", "faults.tool_malformed=0.6"])
    assert load_config("configs/tiny.yaml").faults == FaultConfig()  # off by default


def test_injected_tool_faults_are_retried_counted_and_deterministic():
    clean = make_executor("world", seed=0, cache_size=0)
    want = [clean.call(*c) for c in calls(60)]
    rates = {"timeout": 0.1, "error": 0.1, "malformed": 0.1}
    runs = []
    # The timeout only has to cut the injected hangs: a real call on a loaded CI machine
    # (60 calls queued on a few worker threads) must never reach it, or the runs differ.
    for _ in range(2):  # same seed, fresh executors: the same faults
        ex = faulty(rates, retries=3, timeout_s=1.0, cache_size=0)
        counts = Counter()
        got = asyncio.run(ex.acall_many(calls(60), "ep", counts))
        runs.append((got, dict(counts)))
        assert counts == Counter(ex.fault_stats())
    assert runs[0] == runs[1]
    got, counts = runs[0]
    injected = sum(counts.get(f"injected_{k}", 0) for k in TOOL_FAULTS)
    assert all(counts.get(f"injected_{k}", 0) > 0 for k in TOOL_FAULTS)
    # Every injected fault was handled: retried, or (last attempt) reported as unrecovered.
    assert injected == counts["infra_errors"] == counts["retried"] + counts.get("unrecovered", 0)
    for result, expected in zip(got, want):
        assert result == expected or result["error"]["type"] in ("timeout", "internal_error")
    assert sum(r == e for r, e in zip(got, want)) >= 58  # 4 attempts: ~0.8% stay failed

    # A different key (another episode) meets other faults.
    other = Counter()
    asyncio.run(faulty(rates, retries=3, timeout_s=1.0, cache_size=0).acall_many(
        calls(60), "another-episode", other))
    assert other != Counter(counts)


def test_injected_timeout_is_a_real_executor_timeout_and_cache_does_not_hide_faults():
    ex = faulty({"timeout": 1.0}, retries=1, timeout_s=0.2)
    start = time.perf_counter()
    counts = Counter()
    result = asyncio.run(ex.acall(*calls(1)[0], "k", counts))
    assert 0.35 < time.perf_counter() - start < 2.0  # two attempts, each cut at 0.2 s
    assert result["error"]["type"] == "timeout"
    assert counts == {"injected_timeout": 2, "infra_errors": 2, "retried": 1, "unrecovered": 1}
    assert ex.stats()["timeouts"] == 1 and ex.stats()["cache_entries"] == 0

    # Malformed payloads and raising backends become structured errors, never exceptions.
    for kind in ("malformed", "error"):
        ex = faulty({kind: 1.0}, retries=0)
        assert ex.call(*calls(1)[0])["error"]["type"] == "internal_error"
    # A faulty link hits cached answers too: what a call meets depends on its key alone.
    ex = faulty({"error": 0.5}, retries=0)
    first = [ex.call(*c, key=f"k{i}") for i, c in enumerate(calls(4) * 10)]
    again = [ex.call(*c, key=f"k{i}") for i, c in enumerate(calls(4) * 10)]
    assert first == again and ex.stats()["cache_hits"] > 0
    assert 5 < sum("error" in r for r in first) < 35


def test_agent_loop_marks_infra_faults_and_counts_garbage():
    from stagent_ray.config import AgentConfig

    world = load_world()
    queries = [q for f in FAMILIES for q in generate_queries(world, f, 1, seed=3)][:16]
    oracle = make_message_engine(EngineConfig(kind="oracle", noise=0.0))
    agent = AgentConfig(max_turns=4)
    # No retries and a 50% error rate: many episodes keep a failed call, and are marked.
    ex = faulty({"error": 0.5}, retries=0)
    trajs = run_message_episodes(oracle, ex, queries, agent, list(range(16)))
    marked = [t for t in trajs if t.infra_fault]
    assert marked and len(marked) < 16
    for t in marked:  # the model saw the failure as an observation; the episode is flagged
        assert any('"internal_error"' in m["content"] for m in t.messages if m["role"] == "tool")
    assert sum(t.faults["injected_error"] for t in trajs) == ex.fault_stats()["injected_error"]
    again = run_message_episodes(oracle, faulty({"error": 0.5}, retries=0), queries, agent,
                                 list(range(16)))
    assert [t.messages for t in again] == [t.messages for t in trajs]  # same seed, same faults
    # With retries the infrastructure faults are absorbed: nothing is marked.
    retried = run_message_episodes(oracle, faulty({"error": 0.2}, retries=4), queries, agent,
                                   list(range(16)))
    assert not any(t.infra_fault for t in retried)
    assert sum(t.faults["retried"] for t in retried) > 0

    # Garbage turns (a hosted model's, here on top of the oracle's first turn) are counted
    # and end as the model's own failure, never as an exception.
    assert with_faults(oracle, FaultConfig(engine_garbage=0.3)) is oracle  # scripted: left alone
    garbage = GarbageMessageEngine(oracle, 0.5, seed=1)
    trajs = run_message_episodes(garbage, make_executor(), queries, AgentConfig(max_turns=1),
                                 list(range(16)))
    hit = [t for t in trajs if t.faults["injected_garbage"]]
    assert 2 < len(hit) < 14 and not any(t.infra_fault for t in trajs)


def traj(reward: float, verified: bool, infra: bool, faults: dict) -> dict:
    return {"reward": reward, "verified": verified, "infra_fault": infra,
            "faults": json.dumps(faults), "num_generated_tokens": 5, "num_tool_calls": 1,
            "num_tool_errors": int(infra), "messages": "[]"}


def test_infra_faulted_episodes_are_not_scored_as_the_models_failure():
    row = {"query_id": "q", "family": "f", "difficulty": 1, "text": "t"}
    trajs = [traj(1.0, True, False, {"retried": 1, "injected_error": 1}),
             traj(0.0, False, True, {"unrecovered": 1, "injected_timeout": 1}),
             traj(0.8, True, False, {})]
    s = summarise_query(row, trajs)
    assert s["n"] == 2 and s["rewards"] == [1.0, 0.8] and s["pass_rate"] == 1.0
    assert s["infra_faulted"] == 1
    assert json.loads(s["faults"]) == {"injected_error": 1, "injected_timeout": 1,
                                       "retried": 1, "unrecovered": 1}
    with pytest.raises(RuntimeError, match="every episode failed on the tool backend"):
        summarise_query(row, [trajs[1]])


def test_bad_run_dir_input_gives_errors_that_name_the_problem(tmp_path, tiny_checkpoint):
    import shutil

    from stagent_ray.rollout.hf_engine import HFEngine
    from stagent_ray.runio import RunDirError, read_json, read_table, run_path, write_json, write_table

    run_dir = str(tmp_path)
    for path in ("../outside.parquet", "data/../../outside.json", "/etc/passwd", "s3://x/y"):
        with pytest.raises(RunDirError, match="run directory"):
            run_path(run_dir, path)
    write_table(run_dir, "data/t.parquet", [{"query_id": f"q{i}", "x": i} for i in range(100)])
    table = tmp_path / "data" / "t.parquet"
    table.write_bytes(table.read_bytes()[:200])  # truncated
    with pytest.raises(RunDirError, match=f"{table} is not a readable Parquet file"):
        read_table(run_dir, "data/t.parquet")
    with pytest.raises(RunDirError, match="does not exist"):
        read_table(run_dir, "data/missing.parquet")
    write_json(run_dir, "m.json", {"stages": {"pool": {"status": "complete"}}})
    (tmp_path / "m.json").write_text('{"stages": {"po')
    with pytest.raises(RunDirError, match="m.json is not valid JSON"):
        read_json(run_dir, "m.json")
    # A truncated model checkpoint: the error names it.
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    with pytest.raises(ValueError, match=f"checkpoint {ckpt} cannot be loaded"):
        HFEngine(str(ckpt), device="cpu")
