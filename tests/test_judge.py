"""LLMJudge against a scripted OpenAI-compatible server on loopback: values, the veto, retries,
the cache, the concurrency limit and the errors. No Ray, no model."""

import json
import pickle
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from stagent_ray.models.chat_format import format_tool_call
from stagent_ray.reward.judge import JUDGE_SYSTEM_PROMPT, LLMJudge, combined_score, parse_verdict
from stagent_ray.reward.score import Score


def verdict(p=5, f=4, r=3, hallucination=False, reason="grounded and complete"):
    return json.dumps({"planning": p, "fidelity": f, "presentation": r, "hallucination": hallucination,
                       "reason": reason})


class Script:
    """What the server answers: per tag (a "Q-..." word in the prompt) a list of steps, the n-th
    request for that tag getting step n (the last step repeats). A step is an HTTP status (int)
    or the assistant's reply text. Default: a 5/4/3 verdict."""

    def __init__(self):
        self.lock = threading.Lock()
        self.steps: dict[str, list] = {}
        self.seen: dict[str, int] = {}
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        self.delay = 0.0
        self.inflight = self.max_inflight = 0

    def requests(self, tag=None) -> int:
        return len(self.bodies) if tag is None else self.seen.get(tag, 0)


class Handler(BaseHTTPRequestHandler):
    script: Script

    def log_message(self, *args):
        pass

    def do_POST(self):
        s = self.script
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        tag = re.search(r"Q-[\w-]+", body["messages"][1]["content"]).group(0)
        with s.lock:
            s.bodies.append(body)
            s.headers.append(dict(self.headers))
            n = s.seen.get(tag, 0)
            s.seen[tag] = n + 1
            steps = s.steps.get(tag, [verdict()])
            step = steps[min(n, len(steps) - 1)]
            s.inflight += 1
            s.max_inflight = max(s.max_inflight, s.inflight)
        time.sleep(s.delay)
        with s.lock:
            s.inflight -= 1
        if isinstance(step, int):
            payload, status = json.dumps({"error": {"message": f"scripted {step}"}}).encode(), step
        else:
            reply = {"choices": [{"message": {"role": "assistant", "content": step}}]}
            payload, status = json.dumps(reply).encode(), 200
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def script(server):
    Handler.script = Script()
    return Handler.script


@pytest.fixture
def judge(server, script):
    return LLMJudge(f"http://127.0.0.1:{server.server_address[1]}/v1", "judge-7b", retries=3, backoff_s=0.01,
                    concurrency=3)


def trajectory(tag: str, answer: str = "Lotus Cafe (rating 4.6) is a quiet cafe in Moling.") -> tuple:
    text = f"Find a quiet cafe in Moling ({tag})"
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": text},
        {"role": "assistant",
         "content": format_tool_call("map_search_places", {"query": "quiet cafe", "region": "Moling"})},
        {"role": "tool", "content": json.dumps({"results": [{"name": "Lotus Cafe", "rating": 4.6}]})},
        {"role": "assistant", "content": answer},
    ]
    return text, messages


# ---------------------------------------------------------------- values and the veto

def test_value_weights_parts_and_prompt(judge, script, monkeypatch):
    text, messages = trajectory("Q-good")
    score = judge.judge(text, messages, task_type="retrieval")
    # (5, 4, 3) -> (1, 0.75, 0.5); retrieval weights (0.2, 0.6, 0.2)
    assert score.value == pytest.approx(0.2 * 1 + 0.6 * 0.75 + 0.2 * 0.5)
    assert score.verified is False and score.reason == "grounded and complete"
    assert score.parts["planning"] == 1.0 and score.parts["fidelity"] == 0.75 and score.parts["presentation"] == 0.5
    assert score.parts["veto"] is False and score.parts["judge_model"] == "judge-7b"
    assert score.parts["verdict"] == {"planning": 5, "fidelity": 4, "presentation": 3, "hallucination": False}
    # the same trajectory as a planning task: same verdict from the cache, planning weights
    assert judge.judge(text, messages, task_type="planning").value == pytest.approx(0.5 + 0.3 * 0.75 + 0.2 * 0.5)
    assert script.requests() == 1

    body = script.bodies[0]
    assert body["model"] == "judge-7b" and body["temperature"] == 0.0
    assert body["messages"][0] == {"role": "system", "content": JUDGE_SYSTEM_PROMPT}
    prompt = body["messages"][1]["content"]
    for piece in (text, '"name": "map_search_places"', '"Lotus Cafe"', "## Final answer\nLotus Cafe (rating 4.6)"):
        assert piece in prompt
    assert "Authorization" not in script.headers[0]

    # an API key from the environment; OpenAI-style messages (tool_calls) are accepted too
    monkeypatch.setenv("JUDGE_KEY", "sk-test")
    keyed = LLMJudge(judge.args["base_url"], "judge-7b", api_key_env="JUDGE_KEY")
    openai_messages = [{"role": "user", "content": "Find a quiet cafe (Q-openai)"},
                       {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
                        "function": {"name": "web_search", "arguments": '{"query": "cafe"}'}}]},
                       {"role": "tool", "tool_call_id": "c1", "content": '{"results": []}'},
                       {"role": "assistant", "content": "[Unsolved] No page mentions a quiet cafe."}]
    assert keyed.judge("Find a quiet cafe (Q-openai)", openai_messages).value > 0
    assert script.headers[-1]["Authorization"] == "Bearer sk-test"
    assert '"name": "web_search"' in script.bodies[-1]["messages"][1]["content"]
    monkeypatch.delenv("JUDGE_KEY")
    with pytest.raises(ValueError, match="JUDGE_KEY"):
        LLMJudge(judge.args["base_url"], "judge-7b", api_key_env="JUDGE_KEY")


def test_hallucination_veto(judge, script):
    script.steps["Q-hall"] = [verdict(5, 5, 5, hallucination=True, reason="the rating 4.9 is in no tool output")]
    score = judge.judge(*trajectory("Q-hall", "Lotus Cafe, rated 4.9."))
    assert score.value == 0.0 and score.parts["veto"] is True
    assert score.reason == "hallucination: the rating 4.9 is in no tool output"
    assert score.parts["rubric"] == 1.0  # what it would have scored: kept for analysis


def test_no_final_answer_costs_no_request(judge, script):
    text, messages = trajectory("Q-none")
    score = judge.judge(text, messages[:-1])  # ends on a tool output
    assert (score.value, score.reason, script.requests()) == (0.0, "no final answer", 0)
    with pytest.raises(ValueError, match="task_type"):
        judge.judge(text, messages, task_type="chitchat")


# ---------------------------------------------------------------- retries and errors

def test_malformed_verdict_is_retried_with_a_note(judge, script):
    script.steps["Q-bad"] = ["Looks fine to me!", "Sure.\n```json\n" + verdict(4, 4, 4) + "\n```\nHope that helps."]
    score = judge.judge(*trajectory("Q-bad"))
    assert score.value == pytest.approx(0.75) and script.requests("Q-bad") == 2
    retry = script.bodies[1]["messages"]
    assert retry[2] == {"role": "assistant", "content": "Looks fine to me!"}
    assert "not a valid verdict: the reply holds no JSON object" in retry[3]["content"]
    assert judge.stats()["malformed"] == 1


def test_malformed_forever_is_a_clear_error(judge, script):
    script.steps["Q-never"] = [verdict(7, 4, 4)]
    with pytest.raises(RuntimeError, match=r"no valid verdict in 4 attempts.*'planning' must be a number from 1 to 5"):
        judge.judge(*trajectory("Q-never"))
    assert script.requests("Q-never") == 4


def test_503_and_429_are_retried(judge, script):
    script.steps["Q-503"] = [503, 429, verdict(5, 5, 5)]
    assert judge.judge(*trajectory("Q-503")).value == pytest.approx(1.0)
    assert script.requests("Q-503") == 3 and judge.stats()["retries"] == 2
    script.steps["Q-down"] = [503]
    with pytest.raises(RuntimeError, match=r"answered HTTP 503 \(attempt 4 of 4\)"):
        judge.judge(*trajectory("Q-down"))
    script.steps["Q-400"] = [400]
    with pytest.raises(RuntimeError, match="HTTP 400"):
        judge.judge(*trajectory("Q-400"))
    assert script.requests("Q-400") == 1  # a client error is not retried


def test_unreachable_endpoint():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket closes
    judge = LLMJudge(f"http://127.0.0.1:{port}/v1", "judge-7b", retries=2, backoff_s=0.01)
    with pytest.raises(RuntimeError, match=rf"cannot reach judge endpoint http://127.0.0.1:{port}/v1/chat/completions "
                                           r"after 3 attempts"):
        judge.judge(*trajectory("Q-x"))


# ---------------------------------------------------------------- cache and concurrency

def test_cache(judge, script):
    text, messages = trajectory("Q-cache")
    first = judge.judge(text, messages)
    again = judge.judge(text, [dict(m) for m in messages])  # equal content, new objects
    assert first.to_dict() == again.to_dict() and script.requests("Q-cache") == 1
    judge.judge(*trajectory("Q-cache", "Lotus Cafe is quiet."))  # another answer: another request
    assert script.requests("Q-cache") == 2
    assert judge.stats()["cache_hits"] == 1 and judge.stats()["cache_entries"] == 2
    # a pickled judge (Ray ships it to actors) starts with an empty cache
    clone = pickle.loads(pickle.dumps(judge))
    clone.judge(text, messages)
    assert script.requests("Q-cache") == 3


def test_judge_many_concurrency_limit_order_and_shared_duplicates(judge, script):
    script.delay = 0.05
    items = []
    for i in range(12):
        script.steps[f"Q-c{i}"] = [verdict(1 + i % 5, 3, 3)]
        items.append((*trajectory(f"Q-c{i}"), "planning"))
    duplicate = trajectory("Q-dup")
    items += [duplicate] * 4 + [{"query_text": duplicate[0], "messages": duplicate[1], "task_type": "consultation"}]
    t0 = time.time()
    scores = judge.judge_many(items)
    elapsed = time.time() - t0
    assert [s.parts["verdict"]["planning"] for s in scores[:12]] == [1 + i % 5 for i in range(12)]  # in order
    assert 2 <= script.max_inflight <= 3  # concurrency=3: parallel, never more
    assert script.requests("Q-dup") == 1  # identical trajectories judged at once share one request
    assert scores[-1].value == pytest.approx(0.2 * 1 + 0.3 * 0.75 + 0.5 * 0.5)
    assert elapsed < 13 * 0.05  # not serial


# ---------------------------------------------------------------- parsing and combining

def test_parse_verdict():
    good = {"planning": 4.0, "fidelity": 5.0, "presentation": 3.0, "hallucination": False, "reason": "ok"}
    assert parse_verdict('{"note": 1} then ' + verdict(4, 5, 3, reason="ok")) == (good, "")
    assert parse_verdict('{"planning": "4", "fidelity": 5, "presentation": 3, "hallucination": "false", '
                         '"reason": "ok"}') == (good, "")
    assert parse_verdict(None)[1] == "the reply is empty"
    assert "'hallucination'" in parse_verdict(verdict(4, 5, 3, hallucination=None))[1]
    assert "'fidelity'" in parse_verdict(verdict(4, True, 3))[1]
    assert "'presentation'" in parse_verdict(verdict(4, 5, 0))[1]


def test_combined_score():
    judge_score = Score(0.75, False, {"veto": False, "rubric": 0.75}, "fine")
    verifier = Score(1.0, True, {"veto": False}, "matches")
    both = combined_score(judge_score, verifier)
    assert both.value == pytest.approx(0.875) and both.verified is True
    assert both.parts["judge"] == 0.75 and both.parts["verifier"] == 1.0 and both.parts["rubric"] == 0.75
    assert combined_score(judge_score, verifier, weight=1.0).value == pytest.approx(0.75)
    vetoed_by_verifier = Score(0.0, False, {"veto": True}, "hallucination: place 'Moon Cafe'")
    assert combined_score(judge_score, vetoed_by_verifier).value == 0.0
    vetoed_by_judge = Score(0.0, False, {"veto": True, "rubric": 1.0}, "hallucination: made-up time")
    vetoed = combined_score(vetoed_by_judge, verifier)
    assert vetoed.value == 0.0 and vetoed.verified is True and vetoed.parts["veto"] is True
    with pytest.raises(ValueError):
        combined_score(judge_score, verifier, weight=2)
