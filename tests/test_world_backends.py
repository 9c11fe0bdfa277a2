"""Backends and the ToolExecutor: cache, errors, timeouts, replay, recording, HTTP, pickling."""

import asyncio
import json
import pickle
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from stagent_ray.world.backends import (HttpBackend, RecordingBackend, ReplayBackend, ToolExecutor, WorldBackend,
                                        make_executor)
from stagent_ray.world.generate import load_world
from stagent_ray.world.tools import call_tool

WEATHER = ("weather_current_conditions", {"location": "Moling"})
PLACES = ("map_search_places", {"query": "cafe", "region": "Moling", "limit": 3})


class SlowBackend(WorldBackend):
    """A world backend that takes `delay` seconds per call (stands in for a slow live service)."""

    def __init__(self, world, delay):
        super().__init__(world)
        self.delay = delay

    def call(self, name, arguments):
        time.sleep(self.delay)
        return super().call(name, arguments)


class BrokenBackend(WorldBackend):
    def call(self, name, arguments):
        raise RuntimeError("boom")


def test_executor_matches_direct_calls_and_counts_cache_hits():
    ex = make_executor("world", seed=0)
    world = load_world(0)
    assert ex.call(*WEATHER) == call_tool(world, *WEATHER)
    ex.call(*WEATHER)
    # the same arguments in another key order / as integral floats hit the same entry
    ex.call("map_search_places", {"region": "Moling", "query": "cafe", "limit": 3})
    ex.call("map_search_places", {"query": "cafe", "region": "Moling", "limit": 3.0})
    stats = ex.stats()
    assert stats == {"calls": 4, "errors": 0, "cache_hits": 2, "cache_misses": 2, "timeouts": 0, "cache_entries": 2}
    # callers get copies: mutating a result does not change the cache
    first = ex.call(*WEATHER)
    first["city"] = "changed"
    assert ex.call(*WEATHER)["city"] == "Moling"


def test_errors_are_not_cached_and_are_counted():
    ex = make_executor("world", seed=0)
    for _ in range(2):
        assert ex.call("weather_current_conditions", {"location": "Atlantis"})["error"]["type"] == "unknown_location"
        assert ex.call("nope", {})["error"]["type"] == "unknown_tool"
    stats = ex.stats()
    assert stats["errors"] == 4 and stats["cache_hits"] == 0 and stats["cache_entries"] == 0
    assert stats["cache_misses"] == 2  # the two valid-looking calls reached the backend


def test_lru_eviction():
    ex = make_executor("world", seed=0, cache_size=2)
    for loc in ("Moling", "Tianlu", "Xiaqiao", "Moling"):
        ex.call("weather_current_conditions", {"location": loc})
    stats = ex.stats()
    assert stats["cache_entries"] == 2 and stats["cache_hits"] == 0 and stats["cache_misses"] == 4


def test_backend_exception_becomes_internal_error():
    ex = ToolExecutor(BrokenBackend(load_world(0)))
    result = ex.call(*WEATHER)
    assert result["error"]["type"] == "internal_error" and "boom" in result["error"]["message"]


def test_acall_timeout_and_concurrency():
    world = load_world(0)
    slow = ToolExecutor(SlowBackend(world, 1.0), timeout_s=0.1)
    result = asyncio.run(slow.acall(*WEATHER))
    assert result["error"]["type"] == "timeout"
    assert slow.stats()["timeouts"] == 1 and slow.stats()["cache_entries"] == 0

    ex = ToolExecutor(SlowBackend(world, 0.2), timeout_s=5.0)
    calls = [("weather_current_conditions", {"location": c.name}) for c in world.cities] + [("nope", {})]
    t = time.perf_counter()
    results = asyncio.run(ex.acall_many(calls))
    assert time.perf_counter() - t < 0.6  # four 0.2 s calls ran concurrently
    assert [r.get("city") for r in results[:-1]] == [c.name for c in world.cities]
    assert results[-1]["error"]["type"] == "unknown_tool"
    assert asyncio.run(ex.acall(*calls[0])) == results[0] and ex.stats()["cache_hits"] == 1


def test_record_then_replay(tmp_path):
    path = tmp_path / "calls.jsonl"
    recorder = make_executor("world", seed=0, record_path=str(path))
    calls = [WEATHER, PLACES, ("weather_forecast_days", {"location": "Tianlu", "date": "2026-06-03", "days": 2}),
             ("weather_current_conditions", {"location": "Atlantis"})]
    recorded = [recorder.call(*c) for c in calls]
    assert len(path.read_text().splitlines()) == 4
    replay = make_executor("replay", replay_path=str(path))
    assert [replay.call(*c) for c in calls] == recorded
    # key is canonical: argument order does not matter
    assert replay.call("map_search_places", {"limit": 3, "region": "Moling", "query": "cafe"}) == recorded[1]
    miss = replay.call("weather_current_conditions", {"location": "Tianlu"})
    assert miss["error"]["type"] == "replay_miss"
    assert ReplayBackend(str(path)).call("web_search", {"query": "x"})["error"]["type"] == "replay_miss"


def test_recording_skips_transient_errors(tmp_path):
    path = tmp_path / "calls.jsonl"
    backend = RecordingBackend(BrokenBackend(load_world(0)), str(path))
    assert ToolExecutor(backend).call(*WEATHER)["error"]["type"] == "internal_error"
    assert not path.exists() or path.read_text() == ""


def test_executor_pickles_as_config():
    ex = make_executor("world", seed=0, cache_size=16, timeout_s=3.0)
    ex.call(*WEATHER)
    clone = pickle.loads(pickle.dumps(ex))
    assert len(pickle.dumps(ex)) < 2000  # config only, not the world
    assert clone.config == ex.config and clone.cache_size == 16 and clone.timeout_s == 3.0
    assert clone.stats()["calls"] == 0 and clone.call(*WEATHER) == ex.call(*WEATHER)
    plain = pickle.loads(pickle.dumps(ToolExecutor(WorldBackend(load_world(0)))))
    assert plain.call(*WEATHER) == ex.call(*WEATHER)


def test_make_executor_rejects_bad_config():
    with pytest.raises(ValueError):
        make_executor("replay")
    with pytest.raises(ValueError):
        make_executor("http")
    with pytest.raises(ValueError):
        make_executor("carrier-pigeon")
    with pytest.raises(ValueError):
        HttpBackend("file:///etc/passwd")


# ---------------------------------------------------------------- HTTP backend

class ToolHandler(BaseHTTPRequestHandler):
    """A tiny tool service: POST /tools {"name", "arguments"} -> result; other paths misbehave."""

    seen_paths: list = []

    def do_POST(self):
        self.seen_paths.append(self.path)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "http://127.0.0.1:1/elsewhere")
            self.end_headers()
            return
        if self.path == "/broken":
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"oops")
            return
        if self.path == "/slow":
            time.sleep(1.0)
        payload = json.dumps(call_tool(load_world(0), body["name"], body["arguments"])).encode()
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the /slow client gave up already

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def tool_service():
    server = ThreadingHTTPServer(("127.0.0.1", 0), ToolHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_backend_round_trip(tool_service):
    ex = make_executor("http", http_url=tool_service + "/tools")
    direct = call_tool(load_world(0), *PLACES)
    assert ex.call(*PLACES) == direct
    assert ex.call("weather_current_conditions", {"location": "Atlantis"})["error"]["type"] == "unknown_location"
    # validation happens before the request: a bad call never reaches the service
    before = len(ToolHandler.seen_paths)
    assert ex.call("map_search_places", {"query": "cafe", "center": "http://evil.example"})["error"]["type"] \
        == "invalid_coordinates"
    assert len(ToolHandler.seen_paths) == before
    assert set(ToolHandler.seen_paths) == {"/tools"}  # only ever the configured URL


def test_http_backend_failures(tool_service):
    assert HttpBackend(tool_service + "/broken").call(*WEATHER)["error"]["type"] == "backend_error"
    assert HttpBackend(tool_service + "/redirect").call(*WEATHER)["error"]["type"] == "backend_error"
    assert HttpBackend(tool_service + "/slow", timeout_s=0.2).call(*WEATHER)["error"]["type"] == "timeout"
    assert HttpBackend("http://127.0.0.1:1/tools", timeout_s=1).call(*WEATHER)["error"]["type"] == "backend_error"
