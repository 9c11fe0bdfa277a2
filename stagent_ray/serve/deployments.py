"""Teacher and Policy as Ray Serve deployments, and the client engines that call them.

Each request carries one prompt; `@serve.batch` gathers concurrent requests from every
Ray Data actor and trainer into one engine call. `Policy.reload` swaps weights between
batches: in-flight requests wait for the swap instead of failing. A request whose replica
dies is sent again (Serve routes it to a live replica; the controller starts a new one).
"""

from __future__ import annotations

import asyncio
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
    def __init__(self, model_path: str, kind: str = "hf", device: str = "cpu",
                 dtype: str = "float32", max_batch_size: int = 16,
                 batch_wait_timeout_s: float = 0.01, version: int = 0,
                 compile: bool | None = None):
        import torch

        torch.set_num_threads(1)  # CPU replicas: a second thread does not help HF decode
        self.engine = make_token_engine(kind, model_path, device, dtype, max_batch_size, compile)
        self._path, self._version = model_path, version
        self._swap = asyncio.Lock()
        self.generate_one.set_max_batch_size(max_batch_size)
        self.generate_one.set_batch_wait_timeout_s(batch_wait_timeout_s)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def generate_one(self, requests: list[tuple[list[int], dict]]) -> list[dict]:
        """Each request: (prompt ids, sampling dict); its `seed` is the request's own (what it
        samples does not depend on the batch). Rows with equal other settings share a call."""
        out: list[dict | None] = [None] * len(requests)
        settings = [{k: v for k, v in r[1].items() if k != "seed"} for r in requests]
        seeds = [r[1].get("seed") for r in requests]
        seeds = [s if s is not None else random.getrandbits(62) for s in seeds]
        key = lambda i: json.dumps(settings[i], sort_keys=True)  # noqa: E731
        async with self._swap:
            for _, rows in itertools.groupby(sorted(range(len(requests)), key=key), key=key):
                rows = list(rows)
                gens = await asyncio.to_thread(self.engine.generate,
                                               [requests[i][0] for i in rows],
                                               SamplingParams(**settings[rows[0]]),
                                               [seeds[i] for i in rows])
                for i, g in zip(rows, gens):
                    out[i] = {**asdict(g), "version": self._version}
        return out

    async def generate(self, prompts: list[list[int]], sampling: dict) -> list[dict]:
        seeds = prompt_seeds(SamplingParams(**sampling), len(prompts))
        return await asyncio.gather(*[self.generate_one((p, {**sampling, "seed": s}))
                                      for p, s in zip(prompts, seeds)])

    async def reload(self, checkpoint_path: str, version: int) -> int:
        from transformers import AutoModelForCausalLM

        # Read the new weights off the event loop, then swap between two batches.
        model = await asyncio.to_thread(AutoModelForCausalLM.from_pretrained, checkpoint_path)
        state = model.state_dict()
        async with self._swap:
            await asyncio.to_thread(self.engine.load_weights, state)
            self._path, self._version = checkpoint_path, version
        return version

    def version(self) -> dict:
        return {"version": self._version, "checkpoint": self._path}


@serve.deployment
class Teacher:
    """A conversation-level engine (oracle or a hosted model) behind Serve."""

    def __init__(self, engine_cfg: dict, tool_schemas: list[dict] | None = None,
                 max_batch_size: int = 16):
        from stagent_ray.config import EngineConfig
        from stagent_ray.rollout.engines import make_message_engine

        self.engine = make_message_engine(EngineConfig(**engine_cfg), tool_schemas)
        self.chat_one.set_max_batch_size(max_batch_size)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def chat_one(self, requests: list[tuple[dict, list[dict], int]]) -> list[str]:
        from stagent_ray.tasks.query import Query

        queries = [Query.from_dict(q) for q, _, _ in requests]
        return await asyncio.to_thread(self.engine.chat, queries, [m for _, m, _ in requests],
                                       [s for _, _, s in requests])


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

    def generate(self, prompts, sampling: SamplingParams, seeds=None) -> list[Generation]:
        seeds = seeds if seeds is not None else prompt_seeds(sampling, len(prompts))
        requests = [(p, {**asdict(sampling), "seed": s}) for p, s in zip(prompts, seeds)]
        responses = [self.handle.generate_one.remote(r) for r in requests]
        out = []
        for request, r in zip(requests, responses):
            d = result_with_retries(r, lambda: self.handle.generate_one.remote(request))
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


def deploy_policy(model_path: str, engine_cfg, serve_cfg, name: str = "policy",
                  version: int = 0, ingress: bool = False, model_name: str = "stagent"):
    """Deploy the Policy (and optionally the OpenAI-compatible ingress); return the handle
    of the Policy deployment."""
    policy = Policy.options(
        num_replicas=serve_cfg.replicas,
        ray_actor_options={"num_cpus": serve_cfg.cpus_per_replica,
                           "num_gpus": serve_cfg.gpus_per_replica},
    ).bind(model_path, engine_cfg.kind, "cpu" if serve_cfg.gpus_per_replica == 0 else "cuda",
           engine_cfg.dtype, serve_cfg.max_batch_size, serve_cfg.batch_wait_timeout_s, version,
           engine_cfg.compile)
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


def deploy_teacher(engine_cfg, serve_cfg, tool_schemas, name: str = "teacher"):
    app = Teacher.options(num_replicas=serve_cfg.replicas,
                          ray_actor_options={"num_cpus": serve_cfg.cpus_per_replica}
                          ).bind(asdict(engine_cfg), tool_schemas, serve_cfg.max_batch_size)
    return serve.run(app, name=name, route_prefix=None)
