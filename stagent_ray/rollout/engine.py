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
                      max_batch_size: int = 16) -> TokenEngine:
    if kind == "hf":
        from stagent_ray.rollout.hf_engine import HFEngine
        return HFEngine(model_path, device=device, dtype=dtype, max_batch_size=max_batch_size)
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
