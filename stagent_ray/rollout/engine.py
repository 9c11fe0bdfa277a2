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
