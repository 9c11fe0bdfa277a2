"""Engines from config, and fault injection around them.

`make_token_engine` (hf | vllm) and `make_message_engine` (oracle | openai) build the
engines the stages roll out with; `with_faults` wraps one to replace a share of its
generations with garbage (config.FaultConfig.engine_garbage). The interface they implement
is in engine.py; this module sits above the engines so none of them imports it back.
"""

from __future__ import annotations

from stagent_ray.rollout.engine import Generation, SamplingParams, TokenEngine, prompt_seeds


def make_token_engine(kind: str, model_path: str, device: str = "auto", dtype: str = "float32",
                      max_batch_size: int = 16, compile: bool | None = None) -> TokenEngine:
    from stagent_ray.runio import local_model_dir

    model_path = local_model_dir(model_path)  # a URI: copied to this node first
    if kind == "hf":
        from stagent_ray.rollout.hf_engine import HFEngine
        return HFEngine(model_path, device=device, dtype=dtype, max_batch_size=max_batch_size,
                        compile=compile)
    if kind == "vllm":
        from stagent_ray.rollout.vllm_engine import VLLMEngine
        return VLLMEngine(model_path, dtype=dtype, max_batch_size=max_batch_size)
    raise ValueError(f"{kind!r} is not a token engine (hf | vllm)")


def make_message_engine(cfg, tool_schemas: list[dict] | None = None, temperature: float = 1.0,
                        max_tokens: int = 1024):
    """A conversation-level engine from an `EngineConfig` (oracle | openai)."""
    from stagent_ray.rollout.message_engines import OpenAIEngine, OracleEngine

    if cfg.kind == "oracle":
        return OracleEngine(noise=cfg.noise)
    if cfg.kind == "openai":
        if not cfg.base_url:
            raise ValueError("engine kind 'openai' needs base_url")
        return OpenAIEngine(cfg.base_url, cfg.model or "default", cfg.api_key_env, tool_schemas,
                            temperature, max_tokens, concurrency=cfg.max_batch_size)
    raise ValueError(f"{cfg.kind!r} is not a message engine (oracle | openai)")


# ---- fault injection: a share of generations replaced by garbage (config.FaultConfig)

GARBAGE_TEXTS = ['<tool_call>{"name": "weather_curr', "}}}]]<tool_call>", "\u0000\ufffd\ufffd",
                 "", '<tool_call>{"name": "rm -rf /", "arguments": {"path": "../../etc"}}</tool_call>',
                 "[Unsol", "The answer is 42 km, 17:00, 99 CNY at Nowhere Station."]


def _garbage_rng(seed: int, key: str):
    import random

    from stagent_ray.world.backends import fault_draw

    return fault_draw(seed, key), random.Random(f"{seed}|{key}")


class GarbageTokenEngine(TokenEngine):
    """Wraps a token engine: a `rate` share of generations become random token ids (ending
    with a stop id, so the turn closes), flagged `injected`. Their log-probs are 0.0: no
    model sampled them. Which generations are hit depends on the prompt and its seed only."""

    def __init__(self, inner: TokenEngine, rate: float, seed: int):
        self.inner, self.rate, self.seed = inner, rate, seed
        self.tokenizer = inner.tokenizer

    def corrupt(self, prompt: list[int], seed: int, gen: Generation,
                sampling: SamplingParams) -> Generation:
        u, rng = _garbage_rng(self.seed, f"{seed}|{len(prompt)}|{prompt[-8:]}")
        if u >= self.rate:
            return gen
        n = rng.randint(1, max(1, sampling.max_new_tokens - 1))
        ids = [rng.randrange(len(self.tokenizer)) for _ in range(n)] + sampling.stop_token_ids[:1]
        return Generation(ids, [0.0] * len(ids), "stop" if sampling.stop_token_ids else "length",
                          injected=True)

    def generate(self, prompts, sampling: SamplingParams, seeds=None) -> list[Generation]:
        seeds = seeds if seeds is not None else prompt_seeds(sampling, len(prompts))
        out = self.inner.generate(prompts, sampling, seeds)
        return [self.corrupt(p, s, g, sampling) for p, s, g in zip(prompts, seeds, out)]

    def stream(self, sampling: SamplingParams, max_prompt_len: int, episodes: int,
               reproducible: bool = True):
        return _GarbageStream(self, self.inner.stream(sampling, max_prompt_len, episodes,
                                                      reproducible), sampling)

    def load_weights(self, path_or_state_dict) -> None:
        self.inner.load_weights(path_or_state_dict)


class _GarbageStream:
    def __init__(self, engine: GarbageTokenEngine, inner, sampling: SamplingParams):
        self.engine, self.inner, self.sampling = engine, inner, sampling

    async def __aenter__(self):
        await self.inner.__aenter__()
        return self

    async def __aexit__(self, *exc):
        return await self.inner.__aexit__(*exc)

    def finish(self, episode: int) -> None:
        self.inner.finish(episode)

    async def generate(self, ids: list[int], seed: int, episode: int) -> Generation:
        gen = await self.inner.generate(ids, seed, episode)
        return self.engine.corrupt(ids, seed, gen, self.sampling)


class GarbageMessageEngine:
    """Wraps a message engine (oracle, openai): a `rate` share of turns become garbage text."""

    def __init__(self, inner, rate: float, seed: int):
        self.inner, self.rate, self.seed = inner, rate, seed
        self.last_garbage: list[bool] = []

    def chat(self, queries, conversations, seeds) -> list[str]:
        out = self.inner.chat(queries, conversations, seeds)
        self.last_garbage = []
        for i, (conversation, seed) in enumerate(zip(conversations, seeds)):
            u, rng = _garbage_rng(self.seed, f"{seed}|{len(conversation)}")
            if u < self.rate:
                out[i] = rng.choice(GARBAGE_TEXTS)
            self.last_garbage.append(u < self.rate)
        return out


def with_faults(engine, faults):
    """`engine` wrapped to inject `faults.engine_garbage` (a FaultConfig), or as it is.
    The oracle is left alone: it is a scripted solver, not a model, and cannot go on from a
    turn it did not write."""
    from stagent_ray.rollout.message_engines import OracleEngine

    if faults is None or faults.engine_garbage <= 0 or isinstance(engine, OracleEngine):
        return engine
    wrapper = GarbageTokenEngine if isinstance(engine, TokenEngine) else GarbageMessageEngine
    return wrapper(engine, faults.engine_garbage, faults.seed)
