"""The generation-engine interface shared by every stage.

Token engines (`hf`, `vllm`) take token-id prompts and return sampled ids with the
log-prob of each, so rollouts are token-in/token-out. Message engines (`openai`, `oracle`)
take conversations and return assistant text; the agent loop tokenises their turns itself.

Log-prob convention: `log_softmax(logits / temperature)` at the sampled token, before any
top-p/top-k truncation (temperature 0 = greedy, scored at temperature 1). The trainer
recomputes exactly this, so rollout and trainer log-probs agree on unchanged weights.
"""

from __future__ import annotations

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


class TokenEngine:
    """Interface of token-in/token-out engines."""

    tokenizer = None

    def generate(self, prompts: list[list[int]], sampling: SamplingParams) -> list[Generation]:
        raise NotImplementedError

    def load_weights(self, path_or_state_dict) -> None:
        """Swap in new weights (a checkpoint directory or a state dict)."""
        raise NotImplementedError


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
    with a stop id, so the turn closes). Their log-probs are 0.0: no model sampled them.
    `last_garbage` flags the rows of the last call, for the agent loop's fault counts."""

    def __init__(self, inner: TokenEngine, rate: float, seed: int):
        self.inner, self.rate, self.seed = inner, rate, seed
        self.tokenizer = inner.tokenizer
        self.last_garbage: list[bool] = []

    def generate(self, prompts, sampling: SamplingParams) -> list[Generation]:
        out = self.inner.generate(prompts, sampling)
        self.last_garbage = []
        for i, (prompt, gen) in enumerate(zip(prompts, out)):
            u, rng = _garbage_rng(self.seed, f"{sampling.seed}|{i}|{len(prompt)}|{prompt[-8:]}")
            hit = u < self.rate
            if hit:
                n = rng.randint(1, max(1, sampling.max_new_tokens - 1))
                ids = [rng.randrange(len(self.tokenizer)) for _ in range(n)]
                ids += sampling.stop_token_ids[:1]
                out[i] = Generation(ids, [0.0] * len(ids), "stop" if sampling.stop_token_ids else "length")
            self.last_garbage.append(hit)
        return out

    def load_weights(self, path_or_state_dict) -> None:
        self.inner.load_weights(path_or_state_dict)


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
