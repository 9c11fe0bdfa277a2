"""The generation-engine interface shared by every stage.

Token engines (`hf`, `vllm`) take token-id prompts and return sampled ids with the
log-prob of each, so rollouts are token-in/token-out. Message engines (`openai`, `oracle`)
take conversations and return assistant text; the agent loop tokenises their turns itself.

Log-prob convention: `log_softmax(logits / temperature)` at the sampled token, before any
top-p/top-k truncation (temperature 0 = greedy, scored at temperature 1). The trainer
recomputes exactly this, so rollout and trainer log-probs agree on unchanged weights.

Seeds: each prompt has its own seed, and what a row samples depends on that seed only (not on
the other prompts of the call, nor on batch size), so an episode replays the same whatever it
was batched with. `generate(prompts, sampling)` derives them from `sampling.seed`.

Streams: the agent loop runs its episodes independently; each sends its turns to the engine's
`stream` as they come (`await stream.generate(ids, seed, episode)`). A token engine's default
stream batches the turns that are waiting into one `generate` call; HFEngine's stream feeds
them into its running decode batch instead, so no episode waits for another's turn to end.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field


@dataclass
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0                   # 0 = off
    max_new_tokens: int = 256
    stop_token_ids: list[int] = field(default_factory=list)  # generation ends after one of these
    seed: int | None = None


@dataclass
class Generation:
    token_ids: list[int]             # sampled ids, the stop token included
    logprobs: list[float]            # one per sampled id
    finish_reason: str               # "stop" (a stop id was sampled) | "length"
    injected: bool = False           # replaced by fault injection (engine_garbage)


def derive_seed(*parts) -> int:
    """A 62-bit seed from any parts, the same in every process (unlike `hash`)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 2


def prompt_seeds(sampling: SamplingParams, n: int) -> list[int]:
    """One seed per prompt from `sampling.seed` (a random base when it is None)."""
    import random

    base = sampling.seed if sampling.seed is not None else random.getrandbits(62)
    return [derive_seed(base, i) for i in range(n)]


class TokenEngine:
    """Interface of token-in/token-out engines."""

    tokenizer = None

    def generate(self, prompts: list[list[int]], sampling: SamplingParams,
                 seeds: list[int] | None = None) -> list[Generation]:
        """`seeds`: one per prompt; None derives them from `sampling.seed`."""
        raise NotImplementedError

    def stream(self, sampling: SamplingParams, max_prompt_len: int, episodes: int,
               reproducible: bool = True) -> "BatchingStream":
        """A stream for `episodes` episodes that send their turns one by one (prompts of up to
        `max_prompt_len` ids). `reproducible`: when turns arrive never changes which of them
        are batched together (here: a call waits until every running episode has sent its
        turn, and takes them in seed order)."""
        return BatchingStream(self, sampling, episodes, reproducible)

    def load_weights(self, path_or_state_dict) -> None:
        """Swap in new weights (a checkpoint directory or a state dict)."""
        raise NotImplementedError


class BatchingStream:
    """Turns from many episodes into `engine.generate` calls: each call takes every turn that
    is waiting, and turns that arrive meanwhile wait for the next call. Use as
    `async with engine.stream(...) as stream:` inside one event loop; episodes are numbered
    0..episodes-1, and each calls `finish(episode)` when it ends."""

    def __init__(self, engine: TokenEngine, sampling: SamplingParams, episodes: int,
                 reproducible: bool = True):
        self.engine, self.sampling = engine, sampling
        self.live, self.reproducible = episodes, reproducible  # live: episodes not finished
        self.waiting: list[tuple[list[int], int, asyncio.Future]] = []
        self.drain: asyncio.Task | None = None
        self.changed = asyncio.Event()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        if self.drain is not None:
            await self.drain

    def finish(self, episode: int) -> None:
        self.live -= 1
        self.changed.set()

    async def generate(self, ids: list[int], seed: int, episode: int) -> Generation:
        future = asyncio.get_running_loop().create_future()
        self.waiting.append((ids, seed, future))
        self.changed.set()
        if self.drain is None or self.drain.done():
            self.drain = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self.waiting:
            if self.reproducible:  # every running episode has sent its turn
                while len(self.waiting) < self.live:
                    self.changed.clear()
                    await self.changed.wait()
            else:  # episodes that are ready in this same tick join the call
                await asyncio.sleep(0)
            batch, self.waiting = sorted(self.waiting, key=lambda w: w[1]), []
            try:
                outs = await asyncio.to_thread(self.engine.generate, [b[0] for b in batch],
                                               self.sampling, [b[1] for b in batch])
            except Exception as exc:  # every episode of the call sees the engine's error
                for _, _, future in batch:
                    future.set_exception(exc)
                continue
            for (_, _, future), out in zip(batch, outs):
                future.set_result(out)


def make_token_engine(kind: str, model_path: str, device: str = "auto", dtype: str = "float32",
                      max_batch_size: int = 16, compile: bool | None = None) -> TokenEngine:
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
    from stagent_ray.rollout import message_engines

    if cfg.kind == "oracle":
        return message_engines.OracleEngine(noise=cfg.noise)
    if cfg.kind == "openai":
        if not cfg.base_url:
            raise ValueError("engine kind 'openai' needs base_url")
        return message_engines.OpenAIEngine(cfg.base_url, cfg.model or "default",
                                            cfg.api_key_env, tool_schemas, temperature,
                                            max_tokens, concurrency=cfg.max_batch_size)
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
