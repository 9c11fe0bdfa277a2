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
