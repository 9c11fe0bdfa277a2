"""Teacher and Policy as Ray Serve deployments, and the client engines that call them.

Each request carries one prompt (or one conversation, for a message teacher). The Policy
feeds concurrent requests from every Ray Data actor and trainer into one running engine
batch; `max_ongoing_requests` (serve.max_ongoing_requests) lets a replica hold more requests
than that batch, so the batch can fill (Ray's default, 5, would cap it at 5). A weight push
reaches every replica (`handle.broadcast`), and a response from a replica that missed it is
sent again after another push. A request whose replica dies is sent again (Serve routes it
to a live replica; the controller starts a new one).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import time
from dataclasses import asdict

from ray import serve

from stagent_ray.rollout.engine import Generation, SamplingParams, TokenEngine, prompt_seeds
from stagent_ray.rollout.engines import make_token_engine
from stagent_ray.rollout.message_engines import MessageEngine


@serve.deployment
class Policy:
    """Token generation for every caller of one checkpoint. Requests join the engine's running
    batch as rows free up (HFEngine's stream: continuous batching, up to `max_batch_size`
    rows), so concurrent callers share decode steps instead of queueing behind each other's
    batches. Rows with other sampling settings wait until the running batch drains; so does
    a weight swap (`reload`), so no row ever mixes two versions."""

    def __init__(self, model_path: str, kind: str = "hf", device: str = "cpu",
                 dtype: str = "float32", max_batch_size: int = 16, version: int = 0,
                 compile: bool | None = None):
        import torch

        torch.set_num_threads(1)  # CPU replicas: a second thread does not help HF decode
        self.engine = make_token_engine(kind, model_path, device, dtype, max_batch_size, compile)
        self.max_batch_size = max_batch_size
        self._path, self._version = model_path, version
        self._cond = asyncio.Condition()
        self._stream = self._key = None
        self._cap = 0                  # longest prompt the open stream takes
        self._rows = 0                 # requests inside the open stream
        self._draining = self._swapping = False
        self._episodes = itertools.count()
        self._stats = {"requests": 0, "max_rows": 0, "rows_sum": 0}

    def _can_join(self, key: str, n: int) -> bool:
        if self._stream is None:
            return not self._swapping
        return self._key == key and n <= self._cap and not self._draining

    async def _enter(self, key: str, sampling: SamplingParams, n: int):
        async with self._cond:
            while not self._can_join(key, n):
                if self._stream is not None:
                    self._draining = True  # let the running batch finish, then reopen
                await self._cond.wait()
            if self._stream is None:
                # cache columns are sized by the longest prompt: round up, grow when needed
                self._cap = max(256, 1 << (n - 1).bit_length())
                self._stream = self.engine.stream(sampling, self._cap, self.max_batch_size,
                                                  reproducible=False)
                await self._stream.__aenter__()
                self._key = key
            self._rows += 1
            s = self._stats
            s["requests"] += 1
            s["rows_sum"] += min(self._rows, self.max_batch_size)
            s["max_rows"] = max(s["max_rows"], min(self._rows, self.max_batch_size))
            return self._stream

    async def _leave(self) -> None:
        async with self._cond:
            self._rows -= 1
            if self._rows == 0:  # idle: close, so other settings or a swap can go next
                stream, self._stream, self._draining = self._stream, None, False
                await stream.__aexit__(None, None, None)
                self._cond.notify_all()

    async def generate_one(self, request: tuple[list[int], dict]) -> dict:
        """One request: (prompt ids, sampling dict); its `seed` is the request's own (what it
        samples does not depend on the batch)."""
        ids, sampling = request
        settings = {k: v for k, v in sampling.items() if k != "seed"}
        seed = sampling.get("seed")
        seed = seed if seed is not None else random.getrandbits(62)
        stream = await self._enter(json.dumps(settings, sort_keys=True),
                                   SamplingParams(**settings), len(ids))
        try:
            gen = await stream.generate(ids, seed, next(self._episodes))
            return {**asdict(gen), "version": self._version}
        finally:
            await self._leave()

    async def generate(self, prompts: list[list[int]], sampling: dict) -> list[dict]:
        seeds = prompt_seeds(SamplingParams(**sampling), len(prompts))
        return await asyncio.gather(*[self.generate_one((p, {**sampling, "seed": s}))
                                      for p, s in zip(prompts, seeds)])

    async def reload(self, checkpoint_path: str, version: int) -> int:
        """Swap in new weights once the running batch drains. Sent to every replica with
        `handle.broadcast("reload", ...)` (ServePolicyEngine.push_weights)."""
        from transformers import AutoModelForCausalLM

        from stagent_ray.runio import local_model_dir

        if version == self._version and checkpoint_path == self._path:
            return version  # a repeated push (a resent broadcast)
        # Read the new weights off the event loop, while requests still run (a URI is
        # copied to this node first).
        local = await asyncio.to_thread(local_model_dir, checkpoint_path)
        model = await asyncio.to_thread(AutoModelForCausalLM.from_pretrained, local)
        state = model.state_dict()
        async with self._cond:
            self._swapping = True
            self._draining = self._stream is not None
            await self._cond.wait_for(lambda: self._stream is None)
        try:
            await asyncio.to_thread(self.engine.load_weights, state)
            self._path, self._version = checkpoint_path, version
        finally:
            async with self._cond:
                self._swapping = False
                self._cond.notify_all()
        return version

    def version(self) -> dict:
        return {"version": self._version, "checkpoint": self._path}

    def stats(self) -> dict:
        """Requests served, and the rows they shared the engine with (this replica)."""
        s = self._stats
        return {"requests": s["requests"], "max_rows": s["max_rows"],
                "mean_rows": s["rows_sum"] / max(1, s["requests"]), "version": self._version}


@serve.deployment
class Teacher:
    """A conversation-level engine (openai, or the oracle) behind Serve. Model teachers that
    generate tokens (hf, vllm) are served by the Policy class instead (`deploy_teacher`)."""

    def __init__(self, engine_cfg: dict, tool_schemas: list[dict] | None = None,
                 max_batch_size: int = 16, batch_wait_timeout_s: float = 0.01):
        from stagent_ray.config import EngineConfig
        from stagent_ray.rollout.engines import make_message_engine

        self.engine = make_message_engine(EngineConfig(**engine_cfg), tool_schemas)
        self.chat_one.set_max_batch_size(max_batch_size)
        self.chat_one.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self.requests = 0

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def chat_one(self, requests: list[tuple[dict, list[dict], int]]) -> list[str]:
        from stagent_ray.tasks.query import Query

        self.requests += len(requests)
        queries = [Query.from_dict(q) for q, _, _ in requests]
        return await asyncio.to_thread(self.engine.chat, queries, [m for _, m, _ in requests],
                                       [s for _, _, s in requests])

    def stats(self) -> dict:
        return {"requests": self.requests}


def result_with_retries(response, resend, retries: int = 4):
    """The result of a Serve request; when the replica that held it died or was unreachable,
    `resend()` sends it again (a retried generation is sampled afresh)."""
    from ray.exceptions import ActorUnavailableError, RayActorError
    from ray.serve.exceptions import ReplicaUnavailableError

    for attempt in range(retries + 1):
        try:
            return response.result()
        except (RayActorError, ActorUnavailableError, ReplicaUnavailableError):
            if attempt == retries:
                raise
            time.sleep(0.5 * 2 ** attempt)  # give the controller time to route around it
            response = resend()


class ServePolicyEngine(TokenEngine):
    """A TokenEngine that sends each prompt to the Policy deployment (batched there)."""

    def __init__(self, handle, tokenizer):
        self.handle, self.tokenizer = handle, tokenizer
        self.last_version = None
        self.pushed = None  # (checkpoint, version) of the last push_weights

    def push_weights(self, checkpoint: str, version: int) -> list[int]:
        """Load `checkpoint` on every running replica. `remote()` would reach one replica
        (Serve routes it); `broadcast` calls each. A replica started later (a restart) comes
        up with the deployment's first weights: generate() finds it by the version it
        answers with and pushes again."""
        versions = self.handle.broadcast("reload", checkpoint, version).results(timeout_s=600)
        if not versions or set(versions) != {version}:
            raise RuntimeError(f"weight push v{version}: replicas answered {versions}")
        self.pushed = (checkpoint, version)
        return versions

    def generate(self, prompts, sampling: SamplingParams, seeds=None) -> list[Generation]:
        seeds = seeds if seeds is not None else prompt_seeds(sampling, len(prompts))
        requests = [(p, {**asdict(sampling), "seed": s}) for p, s in zip(prompts, seeds)]
        responses = [self.handle.generate_one.remote(r) for r in requests]
        out = []
        for request, r in zip(requests, responses):
            resend = lambda: self.handle.generate_one.remote(request)  # noqa: E731
            d = result_with_retries(r, resend)
            if self.pushed and d["version"] != self.pushed[1]:  # a replica missed the push
                self.push_weights(*self.pushed)
                d = result_with_retries(resend(), resend)
                if d["version"] != self.pushed[1]:
                    raise RuntimeError(f"a Policy replica answered with weights "
                                       f"v{d['version']} after the push of v{self.pushed[1]}")
            self.last_version = d.pop("version")
            out.append(Generation(**d))
        return out


class ServeTeacherEngine(MessageEngine):
    def __init__(self, handle):
        self.handle = handle

    def chat(self, queries, conversations, seeds):
        requests = [(q.to_dict(), msgs, seed) for q, msgs, seed in zip(queries, conversations, seeds)]
        responses = [self.handle.chat_one.remote(req) for req in requests]
        out = []
        for req, r in zip(requests, responses):
            out.append(result_with_retries(r, lambda: self.handle.chat_one.remote(req)))
        return out


def serve_client_engine(app_name: str, engine_cfg):
    """The client engine for the app `deploy_policy`/`deploy_teacher` made for `engine_cfg`:
    tokens (hf, vllm: tokenizer from `engine_cfg.model`) or conversations."""
    if engine_cfg.kind in ("hf", "vllm"):
        from stagent_ray.models.build import load_tokenizer
        return ServePolicyEngine(serve.get_deployment_handle("Policy", app_name=app_name),
                                 load_tokenizer(engine_cfg.model))
    return ServeTeacherEngine(serve.get_deployment_handle("Teacher", app_name=app_name))


def _replica_options(serve_cfg, replicas: int) -> dict:
    actor = {"num_cpus": serve_cfg.cpus_per_replica, "num_gpus": serve_cfg.gpus_per_replica}
    if getattr(serve_cfg, "accelerator_type", None):
        actor["accelerator_type"] = serve_cfg.accelerator_type
    # more than one batch's worth: the next rows wait at the replica, ready to join
    return {"num_replicas": replicas, "ray_actor_options": actor,
            "max_ongoing_requests": serve_cfg.max_ongoing_requests or 2 * serve_cfg.max_batch_size}


def _policy_app(model_path: str, engine_cfg, serve_cfg, replicas: int, version: int = 0):
    return Policy.options(**_replica_options(serve_cfg, replicas)).bind(
        model_path, engine_cfg.kind, "cpu" if serve_cfg.gpus_per_replica == 0 else "cuda",
        engine_cfg.dtype, serve_cfg.max_batch_size, version, engine_cfg.compile)


def deploy_policy(model_path: str, engine_cfg, serve_cfg, name: str = "policy",
                  version: int = 0, ingress: bool = False, model_name: str = "stagent"):
    """Deploy the Policy (and optionally the OpenAI-compatible ingress); return the handle
    of the Policy deployment."""
    policy = _policy_app(model_path, engine_cfg, serve_cfg, serve_cfg.replicas, version)
    if not ingress:
        serve.run(policy, name=name, route_prefix=None)
        return serve.get_deployment_handle("Policy", app_name=name)
    from stagent_ray.serve.ingress import OpenAIIngress

    # The key is read here, in the driver: replicas do not see the driver's environment.
    api_key = None
    if serve_cfg.api_key_env:
        api_key = os.environ.get(serve_cfg.api_key_env)
        if not api_key:
            raise ValueError(f"serve.api_key_env names {serve_cfg.api_key_env}, which is not set")
    app = OpenAIIngress.options(ray_actor_options={"num_cpus": 0.1}).bind(
        policy, model_path, model_name, api_key)
    serve.run(app, name=name, route_prefix="/")
    return serve.get_deployment_handle("Policy", app_name=name)


def deploy_teacher(engine_cfg, serve_cfg, tool_schemas=None, name: str = "teacher"):
    """The teacher on `serve.teacher_replicas` replicas: a token teacher (hf, vllm) as a
    Policy of its checkpoint, a message teacher (openai, oracle) as a Teacher. Returns the
    app name (see serve_client_engine)."""
    if engine_cfg.kind in ("hf", "vllm"):
        app = _policy_app(engine_cfg.model, engine_cfg, serve_cfg, serve_cfg.teacher_replicas)
    else:
        app = Teacher.options(**_replica_options(serve_cfg, serve_cfg.teacher_replicas)).bind(
            asdict(engine_cfg), tool_schemas, serve_cfg.max_batch_size,
            serve_cfg.batch_wait_timeout_s)
    serve.run(app, name=name, route_prefix=None)
    return name


def replica_stats(app_name: str, engine_cfg) -> list[dict]:
    """`stats()` of every replica of the app serve_client_engine would call."""
    name = "Policy" if engine_cfg.kind in ("hf", "vllm") else "Teacher"
    handle = serve.get_deployment_handle(name, app_name=app_name)
    return handle.broadcast("stats").results(timeout_s=60)


@contextlib.contextmanager
def teacher_app(cfg, name: str = "teacher"):
    """For a model teacher (hf, vllm, openai): the Teacher app deployed for the block, its
    name yielded (rollout_pool's `serve_app`); the oracle stays in-process (None)."""
    if cfg.teacher.kind == "oracle":
        yield None
        return
    schemas = None
    if cfg.teacher.kind == "openai":
        from stagent_ray.world.backends import executor_from_config
        schemas = executor_from_config(cfg.world, cfg.faults).schemas()
    deploy_teacher(cfg.teacher, cfg.serve, schemas, name)
    try:
        yield name
    finally:
        serve.delete(name)
