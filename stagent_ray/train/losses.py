"""Losses and advantage estimators: short pure functions over tensors.

Shapes: B sequences, T tokens, G rollouts per prompt, V vocabulary. `mask` is the loss
mask of the rollout (1 on sampled assistant tokens); tool-response and prompt tokens are 0
and so never contribute to a policy, KL, entropy or value term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_mean(x: torch.Tensor, mask: torch.Tensor, agg: str = "token-mean") -> torch.Tensor:
    """Aggregate [B, T] values over masked tokens.

    token-mean: every token in the batch weighs the same (long answers weigh more).
    seq-mean-token-mean: each sequence's mean, then the mean over sequences.
    seq-mean-token-sum: each sequence's sum, then the mean over sequences.
    """
    mask = mask.to(x.dtype)
    if agg == "token-mean":
        return (x * mask).sum() / mask.sum().clamp(min=1.0)
    per_seq_sum = (x * mask).sum(-1)                                   # [B]
    if agg == "seq-mean-token-mean":
        return (per_seq_sum / mask.sum(-1).clamp(min=1.0)).mean()
    if agg == "seq-mean-token-sum":
        return per_seq_sum.mean()
    raise ValueError(f"unknown aggregation {agg!r}")


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor,
                   temperature: float = 1.0) -> torch.Tensor:
    """log p(tokens[t] | ...) from logits aligned with them: [B, T, V], [B, T] -> [B, T]."""
    logp = F.log_softmax(logits.float() / temperature, dim=-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """[B, T, V] -> [B, T] entropy of the token distribution."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def group_advantages(rewards: torch.Tensor, normalize_std: bool = True,
                     eps: float = 1e-6) -> torch.Tensor:
    """GRPO: [P, G] rewards of G rollouts per prompt -> [P, G] advantages.

    Subtract the group mean; divide by the group std unless `normalize_std` is off (Dr. GRPO
    drops it so that easy and hard prompts are not rescaled to the same size).
    """
    adv = rewards - rewards.mean(dim=-1, keepdim=True)
    if normalize_std:
        adv = adv / (rewards.std(dim=-1, keepdim=True, unbiased=False) + eps)
    return adv


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the masked tokens of each sequence.

    rewards, values, mask: [B, T]; rewards usually hold the trajectory reward at its last
    masked token. Unmasked tokens (tool responses) are skipped: the next masked token's
    value bootstraps across them. Returns (advantages, returns), both [B, T], 0 off-mask.
    """
    B, T = rewards.shape
    adv = torch.zeros_like(rewards)
    next_value = torch.zeros(B, dtype=values.dtype, device=values.device)
    running = torch.zeros(B, dtype=values.dtype, device=values.device)
    m = mask.to(values.dtype)
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        new_running = delta + gamma * lam * running
        running = torch.where(m[:, t] > 0, new_running, running)
        next_value = torch.where(m[:, t] > 0, values[:, t], next_value)
        adv[:, t] = running * m[:, t]
    returns = (adv + values) * m
    return adv, returns


def clipped_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor,
                        advantages: torch.Tensor, mask: torch.Tensor, clip_low: float = 0.2,
                        clip_high: float = 0.28, agg: str = "token-mean"
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO/GRPO token-level clipped surrogate with asymmetric clipping (clip-higher).

    logprobs, old_logprobs, mask: [B, T]; advantages: [B, T] or [B] (one per sequence).
    Returns (loss, clip_fraction).
    """
    if advantages.dim() == 1:
        advantages = advantages[:, None].expand_as(logprobs)
    ratio = torch.exp(logprobs - old_logprobs)                         # [B, T]
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high) * advantages
    loss = -torch.minimum(unclipped, clipped)                           # [B, T]
    clip_frac = masked_mean((clipped < unclipped).float(), mask)
    return masked_mean(loss, mask, agg), clip_frac


def gspo_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor,
                     advantages: torch.Tensor, mask: torch.Tensor, clip_low: float = 3e-4,
                     clip_high: float = 4e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """GSPO: one importance ratio per sequence, the geometric mean of its token ratios,
    s_i = exp(mean_t (logp - old_logp)), clipped at the sequence level.

    logprobs, old_logprobs, mask: [B, T]; advantages: [B]. Returns (loss, clip_fraction).
    """
    m = mask.to(logprobs.dtype)
    log_ratio = ((logprobs - old_logprobs) * m).sum(-1) / m.sum(-1).clamp(min=1.0)  # [B]
    ratio = torch.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high) * advantages
    loss = -torch.minimum(unclipped, clipped)                           # [B]
    has_tokens = (m.sum(-1) > 0).to(loss.dtype)
    n = has_tokens.sum().clamp(min=1.0)
    return (loss * has_tokens).sum() / n, ((clipped < unclipped).to(loss.dtype) * has_tokens).sum() / n


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
               kind: str = "k3") -> torch.Tensor:
    """Per-token KL(π || π_ref) estimate from sampled tokens: [B, T] -> [B, T].

    k1 = log π − log π_ref (unbiased, can be negative); k3 = e^(ref−logp) − (ref−logp) − 1
    (unbiased, always ≥ 0, lower variance; Schulman's estimator).
    """
    diff = ref_logprobs - logprobs
    if kind == "k1":
        return -diff
    if kind == "k3":
        return torch.exp(diff) - diff - 1.0
    raise ValueError(f"unknown KL estimator {kind!r}")


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               mask: torch.Tensor, clip: float = 0.2) -> torch.Tensor:
    """PPO clipped value loss: [B, T] -> scalar."""
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    loss = 0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)
    return masked_mean(loss, mask)


def sft_loss(logits: torch.Tensor, labels: torch.Tensor, loss_mask: torch.Tensor | None = None,
             num_loss_tokens: int | torch.Tensor | None = None) -> torch.Tensor:
    """Token-level cross-entropy over the assistant tokens.

    logits [B, T, V], labels [B, T] (the token each position predicts), loss_mask [B, T]
    (bool or 0/1); or, with loss_mask None, logits [N, V] and labels [N] already picked at
    the loss positions (packed_logits(keep=...)). Returns the summed CE of the masked tokens
    / num_loss_tokens (default: this batch's count; the trainer passes the whole step's count
    across micro-batches and ranks). Only masked positions enter the graph, so every other
    logit gets a gradient of exactly zero — and the fp32 copy is made only of the rows that
    count.
    """
    if loss_mask is not None:
        mask = loss_mask.bool()
        logits, labels = logits[mask], labels[mask]                 # [N, V], [N]
    nll = F.cross_entropy(logits.float(), labels.long(), reduction="sum")  # []
    if num_loss_tokens is None:
        num_loss_tokens = max(1, labels.numel())
    return nll / num_loss_tokens
