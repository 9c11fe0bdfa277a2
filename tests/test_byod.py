"""Bring your own domain: queries from the user's file, tools from an MCP server, a hosted
teacher and judge, no ground truth.

The file reader, the config checks and the OpenAI message pairing run without Ray. The
end-to-end test runs the whole cascade: the teacher and the judge are one scripted
OpenAI-compatible server on loopback (told apart by the request's `model`), the tools are the
project's MCP server over stdio, started with a later `--today` than the config's world so its
answers are recognisably its own.
"""

import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stagent_ray.config import ConfigError, load_config
from stagent_ray.models.chat_format import format_tool_call, parse_assistant_turn
from stagent_ray.pipeline import STAGES, run_pipeline, stage_artifacts
from stagent_ray.reward.rubric import TASK_WEIGHTS
from stagent_ray.models.chat_format import to_openai_messages
from stagent_ray.stages.pool import read_query_files, run_pool
from stagent_ray.tasks.taxonomy import task_type

TEACHER, JUDGE = "scripted-teacher", "scripted-judge"
MCP_TODAY = "2026-07-15"  # the world config says 2026-06-01: only the MCP server answers this
CITIES = ["Moling", "Tianlu", "Xiaqiao", "Yunhai"]  # the MCP server's world (seed 0)
# The judge grades an answer that quotes a tool output GOOD, anything else POOR.
GOOD = {"planning": 5, "fidelity": 4, "presentation": 5, "hallucination": False,
        "reason": "quotes the tool output"}
POOR = {"planning": 3, "fidelity": 1, "presentation": 2, "hallucination": False,
        "reason": "not grounded in any tool output"}


def byod_overrides(query_file: str, run_dir: str) -> list[str]:
    return [f"run_dir={run_dir}", "pool.source=file", f"pool.query_files=[{query_file}]",
            "pool.eval_fraction=0.25", "reward.kind=judge",
            "reward.judge_base_url=http://127.0.0.1:9/v1"]


# ---------------------------------------------------------------- no Ray

def test_read_query_files_jsonl_and_parquet(tmp_path):
    jsonl = tmp_path / "q.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in [
        {"text": " Weather in Moling now? ", "metadata": {"intent_l2": "current_conditions",
                                                         "city": "Moling", "channel": "app"}},
        {"text": "Top hotpot in Yunhai", "family": "food", "difficulty": 2, "reference": "X"},
        {"text": "Plan a rainy-day trip", "intent_l1": "Planning & Decision",
         "intent_l2": "itinerary", "metadata": {"intent_l2": "forecast"}},
    ]) + "\n\n")
    a, b, c = read_query_files([str(jsonl)])
    assert a.text == "Weather in Moling now?" and a.family == "user" and a.city == "Moling"
    assert a.intent == {"level1": "Dynamic Information", "level2": "current_conditions"}
    assert a.difficulty == 1 and a.params == {"channel": "app"} and a.ground_truth == {}
    assert b.family == "food" and b.difficulty == 2 and b.ground_truth == {"reference": "X"}
    assert b.intent == {"level1": "Discovery", "level2": "constrained_poi_search"}  # default
    assert c.intent["level2"] == "itinerary"  # a key beside the text wins over metadata
    assert read_query_files([str(jsonl)])[0].query_id == a.query_id  # stable: from the text

    parquet = tmp_path / "q.parquet"
    pq.write_table(pa.table({"question": ["Forecast for Tianlu", None],
                             "metadata": ['{"intent_l2": "forecast"}', None]}), parquet)
    with pytest.raises(ValueError, match=r"q\.parquet row 2: no 'question' field"):
        read_query_files([str(parquet)], "question")
    pq.write_table(pa.table({"question": ["Forecast for Tianlu"],
                             "metadata": ['{"intent_l2": "forecast"}']}), parquet)
    (q,) = read_query_files([str(parquet)], "question")
    assert q.intent["level1"] == "Dynamic Information" and q.text == "Forecast for Tianlu"


@pytest.mark.parametrize("line, needle", [
    ('{"text": "ok"', r"bad\.jsonl:2: not valid JSON"),
    ('{"query": "no text key"}', r"bad\.jsonl:2: no 'text' field"),
    ('["a", "list"]', r"bad\.jsonl:2: expected a JSON object"),
    ('{"text": "x", "intent_l2": "teleport"}', r"bad\.jsonl:2: intent None/teleport"),
    ('{"text": "x", "difficulty": 9}', r"bad\.jsonl:2: difficulty"),
])
def test_read_query_files_names_file_and_line(tmp_path, line, needle):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n' + line + "\n")
    with pytest.raises(ValueError, match=needle):
        read_query_files([str(path)])


def test_file_pool_curated_and_held_out_without_a_world(tmp_path):
    path = tmp_path / "q.jsonl"
    texts = [f"Weather in {c} right now, and do I need {thing}?" for c in CITIES
             for thing in ("an umbrella", "sunscreen", "a jacket")]
    texts += [texts[0], texts[1] + "!"]  # an exact and a near duplicate
    path.write_text("\n".join(json.dumps({"text": t}) for t in texts))
    cfg = load_config("configs/tiny.yaml", byod_overrides(str(path), str(tmp_path / "run")))
    metrics = run_pool(cfg)
    assert metrics["funnel"]["generated"] == 14 and metrics["funnel"]["lexical_dedup"] == 12
    pool = pq.read_table(tmp_path / "run/data/pool.parquet").to_pylist()
    evals = pq.read_table(tmp_path / "run/data/eval.parquet").to_pylist()
    assert (len(pool), len(evals)) == (9, 3) and metrics["families"] == {"user": 9}
    assert not {r["text"] for r in pool} & {r["text"] for r in evals}


def test_config_checks_and_example(tmp_path):
    cfg = load_config("configs/byod_example.yaml")
    assert cfg.pool.source == "file" and cfg.world.backend == "mcp"
    assert cfg.reward.kind == "judge" and cfg.teacher.kind == "openai"
    queries = read_query_files(cfg.pool.query_files, cfg.pool.text_field)
    assert len(queries) >= 30 and all(q.city in CITIES for q in queries if q.city)
    base = byod_overrides("q.jsonl", str(tmp_path))
    for extra, needle in [(["pool.query_files=[]"], "pool.query_files"),
                          (["pool.query_files=q.jsonl"], "pool.query_files"),
                          (["pool.eval_fraction=0"], "pool.eval_fraction"),
                          (["reward.kind=both"], "reward.kind"),
                          (["pool.source=csv"], "pool.source")]:
        with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
            load_config("configs/tiny.yaml", base + extra)


def test_openai_messages_answer_every_tool_call():
    two_calls = (format_tool_call("weather_current_conditions", {"location": "Moling"}) + "\n"
                 + format_tool_call("weather_current_conditions", {"location": "Yunhai"}))
    messages = [{"role": "user", "content": "u"},
                {"role": "assistant", "content": two_calls},  # rejected whole: one error
                {"role": "tool", "content": '{"error": "too_many_calls"}'},
                {"role": "assistant", "content": "<tool_call>{broken</tool_call>"},
                {"role": "tool", "content": '{"error": "invalid_json"}'},
                {"role": "assistant", "content": "done"}]
    out = to_openai_messages(messages)
    ids = [c["id"] for c in out[1]["tool_calls"]]
    assert [m.get("tool_call_id") for m in out[2:4]] == ids
    assert out[3]["content"] == '{"error": "too_many_calls"}'
    assert out[5]["role"] == "user" and "invalid_json" in out[5]["content"]
    assert [m["role"] for m in out] == ["user", "assistant", "tool", "tool", "assistant", "user",
                                        "assistant"]


# ---------------------------------------------------------------- the scripted endpoint

def judge_verdict(tool_outputs: list[str], answer: str) -> dict:
    """What the scripted judge answers (the test recomputes it from stored trajectories)."""
    quoted = any(o and '"error"' not in o and o in answer for o in tool_outputs)
    return GOOD if quoted else POOR


class Scripted(BaseHTTPRequestHandler):
    lock = threading.Lock()
    calls: dict = {TEACHER: 0, JUDGE: 0}
    teacher_tools: set = set()

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.lock:
            Scripted.calls[body["model"]] = Scripted.calls.get(body["model"], 0) + 1
        if body["model"] == TEACHER:
            message = self.teacher_turn(body)
        elif body["model"] == JUDGE:
            prompt = body["messages"][-1]["content"]
            lines = prompt.splitlines()
            outputs = [lines[i + 1] for i, line in enumerate(lines[:-1]) if line == "[tool output]"]
            answer = prompt.split("\n## Final answer\n", 1)[1]
            message = {"role": "assistant", "content": json.dumps(judge_verdict(outputs, answer))}
        else:
            self.send_error(404, f"unknown model {body['model']!r}")
            return
        payload = json.dumps({"choices": [{"message": message}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def teacher_turn(self, body: dict) -> dict:
        """Call the weather tool for the query's city; after its answer, quote it."""
        with self.lock:
            Scripted.teacher_tools.update(t["function"]["name"] for t in body.get("tools", []))
        last = body["messages"][-1]
        if last["role"] == "tool":
            return {"role": "assistant", "content": f"Here is what the weather service reports: "
                                                    f"{last['content']}"}
        query = next(m["content"] for m in body["messages"] if m["role"] == "user")
        city = next(c for c in CITIES if c in query)
        return {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {
                "name": "weather_current_conditions",
                "arguments": json.dumps({"location": city})}}]}


@pytest.fixture(scope="module")
def endpoint():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


# ---------------------------------------------------------------- end to end

# Small-model settings from test_pipeline.py; the pool settings come from the file. One
# Data actor and one Train worker: the eval datasets fit in one block anyway, and every
# process spared is an import, a model load and an MCP server start saved on 2 cores.
TINY = [
    "rollout.num_actors=1", "sft0.num_workers=1", "sft1.num_workers=1", "rl.num_workers=1",
    "model.hidden_size=64", "model.intermediate_size=128", "model.num_layers=2",
    "model.num_heads=2", "model.num_kv_heads=1", "model.vocab_size=2048",
    "tiny_qa.fraction=0.5", "tiny_qa.k=2",
    "score.n_rollouts=2", "rollout.batch_size=4", "split.k_max=1",
    "sampling.max_new_tokens=48", "agent.max_turns=3", "agent.max_tokens=1200",
    "sft0.epochs=1", "sft0.batch_size=2", "sft0.seq_len=1024",
    "sft1.epochs=1", "sft1.batch_size=2", "sft1.seq_len=1024",
    "rl.steps=2", "rl.prompts_per_step=2", "rl.group_size=2", "rl.micro_batch_size=2",
    "rl.max_refill_rounds=0", "rl.prompt_set=all", "eval.pass_k=2", "split.certain_threshold=0.5",
    "eval.checkpoints=[sft0,sft1,rl]",
]


def expected_score(query: dict, messages: list[dict]) -> float | None:
    """The reward the judge's verdict implies for this trajectory; None: no final answer."""
    last = messages[-1]
    final = parse_assistant_turn(last["content"], max_calls=64)
    if last["role"] != "assistant" or not final.is_final:
        return None
    verdict = judge_verdict([m["content"] for m in messages[:-1] if m["role"] == "tool"],
                            last["content"])
    intent = json.loads(query["intent"])
    weights = TASK_WEIGHTS[task_type(intent["level1"], intent["level2"])]
    return sum(w * (verdict[d] - 1) / 4
               for w, d in zip(weights, ("planning", "fidelity", "presentation")))


@pytest.mark.ray
@pytest.mark.timeout(900)
def test_byod_cascade_end_to_end(ray_session, endpoint, tmp_path):
    now, plan = "current_conditions", "weather_aware_plan"  # retrieval and planning weights
    labelled = [
        (now, "What's the weather in Moling right now? I want to walk by the river."),
        (plan, "Museum or park this afternoon in Moling, given how the sky looks?"),
        (now, "Is the air clean enough in Moling for a morning jog?"),
        (now, "Do I need an umbrella if I head out in Tianlu now?"),
        (plan, "Should we picnic outdoors or visit the aquarium in Tianlu today?"),
        (now, "How windy is it in Tianlu at the moment? Thinking of cycling."),
        (now, "Current temperature and humidity in Xiaqiao, please."),
        (plan, "We land in Xiaqiao soon: rooftop dinner or an indoor restaurant tonight?"),
        (now, "Xiaqiao AQI right now? My kid has asthma."),
        (now, "Is it sunny in Yunhai? Deciding on sunscreen."),
        (plan, "Beach walk in Yunhai or the shopping mall: which suits today's conditions?"),
        (now, "Quick check: how hot does it feel outside in Yunhai?")]
    rows = [{"text": text, "metadata": {"intent_l2": intent, "channel": "app"}}
            for intent, text in labelled]
    query_file = tmp_path / "queries.jsonl"
    query_file.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    run_dir = str(tmp_path / "run")
    server = json.dumps({"name": "world", "transport": "stdio", "command": sys.executable,
                         "args": ["-m", "stagent_ray.world.mcp_server", "--today", MCP_TODAY]})
    cfg = load_config("configs/tiny.yaml", TINY + byod_overrides(str(query_file), run_dir) + [
        f"reward.judge_base_url={endpoint}", f"reward.judge_model={JUDGE}",
        "world.backend=mcp", f"world.mcp_servers=[{server}]",
        "teacher.kind=openai", f"teacher.base_url={endpoint}", f"teacher.model={TEACHER}"])

    assert run_pipeline(cfg) == 0
    manifest = json.load(open(os.path.join(run_dir, "manifest.json")))
    for stage in STAGES:
        assert manifest["stages"][stage]["status"] == "complete", stage
        for artifact in stage_artifacts(cfg, stage):
            assert os.path.exists(os.path.join(run_dir, artifact)), artifact
    assert manifest["stages"]["pool"]["metrics"]["source"] == "file"

    def table(name):
        return pq.read_table(os.path.join(run_dir, name)).to_pylist()

    queries = {r["query_id"]: r for r in table("data/pool.parquet") + table("data/eval.parquet")}
    assert len(queries) == len(rows) and all(json.loads(q["ground_truth"]) == {}
                                             for q in queries.values())

    # The teacher's seed set: its calls went to the MCP server's tools, its answers quote them,
    # and the judge passed them.
    assert Scripted.teacher_tools >= {"weather_current_conditions", "map_search_places"}
    tiny = table("data/tiny_qa.parquet")
    assert tiny
    for r in tiny:
        messages = json.loads(r["messages"])
        calls = [parse_assistant_turn(m["content"]).calls for m in messages
                 if m["role"] == "assistant" and "<tool_call>" in m["content"]]
        assert calls and calls[0][0].name == "weather_current_conditions"
        tool = [json.loads(m["content"]) for m in messages if m["role"] == "tool"]
        assert tool and tool[0]["observed_at"].startswith(MCP_TODAY)
        assert r["reward"] == pytest.approx(expected_score(queries[r["query_id"]], messages))
        assert r["reward"] >= cfg.reward.judge_pass_threshold

    # Every scored rollout carries the judge's grade, exactly as its verdict implies.
    trajs = table("data/trajectories.parquet")
    assert trajs and Scripted.calls[JUDGE] > 0
    assert any(json.loads(t["parts"]).get("judge_model") == JUDGE for t in trajs)
    by_query: dict = {}
    for t in trajs:
        parts = json.loads(t["parts"])
        want = expected_score(queries[t["query_id"]], json.loads(t["messages"]))
        if t["stop_reason"] != "answer":  # cut off: no answer, never sent to the judge
            assert t["reward"] == 0.0 and t["reason"].startswith("no final answer")
        elif want is None:
            assert parts["judge_model"] == JUDGE
            assert t["reward"] == 0.0 and t["reason"] == "no final answer"
        else:
            assert parts["judge_model"] == JUDGE
            assert t["reward"] == pytest.approx(want) and "verdict" in parts
        assert t["verified"] == (t["reward"] >= cfg.reward.judge_pass_threshold)
        by_query.setdefault(t["query_id"], {})[t["rollout_index"]] = t["reward"]
    full = table("data/full_qa.parquet")
    assert {r["query_id"] for r in full} == {r["query_id"] for r in table("data/pool.parquet")}
    for r in full:
        assert r["rewards"] == [by_query[r["query_id"]][i] for i in range(r["n"])]

    # The scripted teacher always passes, so it recovers every query the policy failed on.
    split = json.load(open(os.path.join(run_dir, "data/split_report.json")))
    assert sum(split["regions"].values()) == len(full)
    assert split["noise_recovered_by_teacher"] == split["regions"]["noise"]
    summary = json.load(open(os.path.join(run_dir, "eval/summary.json")))
    assert set(summary) == {"teacher", "sft0", "sft1", "rl"}
    assert summary["teacher"]["verified_rate"] == 1.0  # every teacher answer quotes its tool
    html = open(os.path.join(run_dir, "report/index.html")).read()
    assert "Held-out evaluation" in html
