"""Stages `sft0` and `sft1`: supervised fine-tuning on verified trajectories, on Ray Train.

    summary = run_sft(cfg, "sft0", "data/tiny_qa.parquet", base_ckpt, "ckpt/sft0")

The driver renders every trajectory to token ids and a loss mask (1 only on tokens the
assistant wrote: system, user and tool-response tokens never train), packs them into rows of
`seq_len` tokens (see data.py) and starts a `TorchTrainer`. Each worker loads the init
checkpoint, shards it with FSDP2 (bf16 mixed precision on GPUs, fp32 over gloo on CPU),
and runs AdamW with warmup + cosine, gradient accumulation and clipping.

Batch arithmetic: `batch_size` is the number of packed rows per optimizer step over all
workers; each worker takes batch_size / num_workers of them, in `grad_accum` micro-batches.
So the data order, the schedule and the loss curve do not depend on how many workers run
the stage — only the speed does. The loss of a step is the mean over all its assistant
tokens (every token weighs the same, whichever rank or micro-batch holds it).

Checkpoints go through Ray Train every `checkpoint_every` steps and at the end: model and
optimizer shards, scheduler, step (the data position: batches are a pure function of the
step, data.batch_rows), RNG state, and the metric history. `RunConfig(storage_path=
<run_dir>/train, name=<stage>)` is fixed per stage, so running the stage again after a
crash finds the checkpoints and `ray.train.get_checkpoint()` resumes the run; re-running a
finished stage only re-exports. The last checkpoint also holds the final model as a Hugging
Face directory (`hf/`, LoRA merged), which the driver copies to `<run_dir>/<out_relative>`.

Metrics (loss, lr, grad norm, tokens/s, MFU on GPUs) go to `ray.train.report` every
`log_every` steps and to `<run_dir>/train/<stage>_metrics.jsonl` for the report's plots.
"""

from __future__ import annotations

import logging
import math
import os
import posixpath
import signal
import tempfile
import time
from functools import cache, partial

import torch
from torch.distributed.fsdp import register_fsdp_forward_method

from stagent_ray.config import SFTConfig
from stagent_ray.loggers import report_progress
from stagent_ray.runio import write_jsonl
from stagent_ray.train.attention import VARLEN, flat_inputs
from stagent_ray.train.losses import sft_loss
from stagent_ray.train.common import (adamw, all_reduce_sum, attention_for, base_model,
                                      compile_layers, export_hf, fit_on_ray_train,
                                      flops_per_token, grad_norm_and_clip, load_for_training,
                                      load_train_state, peak_flops, publish_dir,
                                      save_train_state, shard_model, storage_path)
from stagent_ray.train.data import (batch_rows, fingerprint, pack, steps_per_epoch,
                                    tokenize_rows)

logger = logging.getLogger(__name__)
FLAT_ATTENTION = {"flash_attention_2", VARLEN}  # read sample borders from cu_seq_lens
# sft.chunked_loss=None turns the chunked loss on for GPUs at this vocabulary size and up:
# below it the [N, V] logits are small and compiling the chunk kernel costs more than it saves
CHUNKED_LOSS_MIN_VOCAB = 32768
MIN_LR_RATIO = 0.1        # cosine decays to 10% of the peak lr (no config field yet)
CHECKPOINTS_TO_KEEP = 2


# ---------------------------------------------------------------- pure functions

def _ce_and_grad(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [n, V], labels [n] -> (summed CE [], dCE/dlogits [n, V] in the logits' dtype).
    The softmax is taken in (at least) fp32 and not kept: the gradient is softmax - one_hot."""
    z = logits.to(torch.promote_types(logits.dtype, torch.float32))
    lse = torch.logsumexp(z, dim=-1)                                      # [n]
    nll = (lse - z.gather(1, labels[:, None]).squeeze(1)).sum()
    grad = torch.exp(z - lse[:, None])                                    # [n, V]
    grad.scatter_add_(1, labels[:, None], torch.full_like(lse[:, None], -1.0))
    return nll, grad.to(logits.dtype)


@cache
def _ce_and_grad_compiled():
    """On GPUs one fused kernel per chunk: it reads the bf16 logits twice and writes the bf16
    gradient, where eager makes ~6 passes over fp32 copies. dynamic: the last chunk is
    shorter."""
    return torch.compile(_ce_and_grad, dynamic=True)


class LinearCrossEntropy(torch.autograd.Function):
    """Summed CE of hidden @ weight.T against labels, `chunk` rows at a time, so that the
    [N, V] logits never exist at once (Qwen's 150k vocabulary makes them the largest tensor
    of a step: [16k, 150k] in fp32 is 10 GB). Forward computes the gradients too, chunk by
    chunk, and keeps only those ([N, d] and [V, d]); backward scales them."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, chunk):
        # hidden [N, d], weight [V, d], labels [N] -> []
        want_hidden, want_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(hidden) if want_hidden else None
        grad_weight = (torch.zeros(weight.shape, device=weight.device,
                                   dtype=torch.promote_types(weight.dtype, torch.float32))
                       if want_weight else None)
        total = torch.zeros((), dtype=torch.promote_types(hidden.dtype, torch.float32),
                            device=hidden.device)
        ce = _ce_and_grad_compiled() if hidden.is_cuda else _ce_and_grad
        for a in range(0, hidden.shape[0], chunk):
            h = hidden[a:a + chunk]                                       # [n, d]
            nll, grad = ce(h @ weight.T, labels[a:a + chunk])             # [], [n, V]
            total += nll
            if want_hidden:
                grad_hidden[a:a + chunk] = grad @ weight                  # [n, d]
            if want_weight:
                grad_weight += grad.T @ h                                 # [V, d], fp32 sum
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype) if want_weight else None)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_hidden, grad_weight = ctx.saved_tensors
        return (grad_hidden * grad_total if grad_hidden is not None else None,
                grad_weight * grad_total if grad_weight is not None else None, None, None)


def chunked_loss_supported(model) -> bool:
    """True when the model's logits are plain lm_head(final hidden state): no bias, no
    soft-capping or scaling (Gemma, Cohere, Granite keep the logits path)."""
    base = base_model(model)
    head = base.get_output_embeddings()
    return (type(head) is torch.nn.Linear and head.bias is None
            and all(getattr(base.config, key, None) in (None, 1, 1.0)
                    for key in ("final_logit_softcapping", "logit_scale", "logits_scaling")))


def packed_nll(model, input_ids: torch.Tensor, position_ids: torch.Tensor, keep: torch.Tensor,
               labels: torch.Tensor) -> torch.Tensor:
    """The summed CE of packed_logits(model, ..., keep) against labels [N], without the
    [N, V] logits: the decoder's hidden states at the kept positions go through
    LinearCrossEntropy with the lm_head weight. Under FSDP this runs outside forward():
    call it as the method attach_packed_nll gives the sharded model."""
    base = base_model(model)
    B, T = input_ids.shape
    kwargs = (flat_inputs(input_ids, position_ids)
              if base.config._attn_implementation in FLAT_ATTENTION
              else {"input_ids": input_ids, "position_ids": position_ids})
    hidden = base.get_decoder()(**kwargs, use_cache=False).last_hidden_state  # [1|B, ·, d]
    hidden = hidden.reshape(B, T, -1)[keep]                                  # [N, d]
    weight = base.get_output_embeddings().weight                             # [V, d]
    # ~1 GB of bf16 logits a chunk; fewer chunks, fewer passes over the fp32 [V, d] sum
    chunk = max(256, 2**29 // weight.shape[0])
    return LinearCrossEntropy.apply(hidden, weight, labels, chunk)


def use_chunked_loss(setting: bool | None, model, device: torch.device) -> bool:
    """sft.chunked_loss resolved for this model and device: None means on GPUs for
    vocabularies of CHUNKED_LOSS_MIN_VOCAB and up; never for a lm_head that is not plain."""
    if setting is None:
        setting = device.type == "cuda" and model.config.vocab_size >= CHUNKED_LOSS_MIN_VOCAB
    return setting and chunked_loss_supported(model)


def packed_loss(model, chunked: bool, input_ids: torch.Tensor, position_ids: torch.Tensor,
                keep: torch.Tensor, labels: torch.Tensor,
                num_loss_tokens: int | torch.Tensor) -> torch.Tensor:
    """The SFT loss of packed rows: the summed CE of the kept tokens (labels [N]) over
    num_loss_tokens, through the chunked loss (attach_packed_nll first) or the logits."""
    if chunked:
        return model.packed_nll(input_ids, position_ids, keep, labels) / num_loss_tokens
    return sft_loss(packed_logits(model, input_ids, position_ids, keep), labels, None,
                    num_loss_tokens)


def attach_packed_nll(model) -> None:
    """Give the sharded model a `packed_nll(input_ids, position_ids, keep, labels)` method
    that FSDP treats as a forward (gathers the weights it reads outside forward())."""
    model.packed_nll = partial(packed_nll, model)
    register_fsdp_forward_method(model, "packed_nll")


def packed_logits(model, input_ids: torch.Tensor, position_ids: torch.Tensor,
                  keep: torch.Tensor | None = None) -> torch.Tensor:
    """[B, T] packed rows -> logits [B, T, V], attention kept inside each sample; with
    `keep` (a [B, T] mask) only the logits at those positions, [N, V]: the lm_head then runs
    on the trained tokens only (a vocabulary of 150k makes it a third of a small model's
    FLOPs, and its fp32 logits the largest activation).

    Varlen attention (flash-attn, or torch's kernel: attention.py) takes the rows as one
    flat row with sample borders; SDPA reads the borders from position_ids as a block mask.
    use_cache=False is load-bearing: with a KV cache object present, transformers skips
    reading sample borders from position_ids and attends across the whole row.
    """
    B, T = input_ids.shape
    if model.config._attn_implementation in FLAT_ATTENTION:
        kwargs = flat_inputs(input_ids, position_ids)
        index = keep.reshape(-1).nonzero().squeeze(1) if keep is not None else 0
        logits = model(**kwargs, use_cache=False, logits_to_keep=index).logits[0]
        return logits if keep is not None else logits.view(B, T, -1)
    if keep is None:
        return model(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits
    # logits_to_keep indexes the sequence dim, shared by all rows: take every column any
    # row trains on, then pick this row's positions.
    columns = keep.any(0).nonzero().squeeze(1)
    logits = model(input_ids=input_ids, position_ids=position_ids, use_cache=False,
                   logits_to_keep=columns).logits                 # [B, C, V]
    return logits[keep[:, columns].bool()]


def lr_factor(step: int, warmup: int, total: int, min_ratio: float = MIN_LR_RATIO) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based): linear warmup over
    `warmup` steps, then cosine down to `min_ratio` at the last step."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - 1 - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


# ---------------------------------------------------------------- the worker loop

def train_loop(config: dict) -> None:
    """Runs in every Ray Train worker (so it lives in the package, not in a test)."""
    import ray
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL collectives (DCP, state dicts) use the current one
    else:  # one thread per core share; oversubscribing only slows down
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // ctx.get_local_world_size()))
    # config: the Config itself, the SFT section to train with, the run's name (checkpoints
    # and metrics), and what the driver prepared (run_sft)
    cfg, name = config["cfg"], config["name"]
    sft = getattr(cfg, config["section"])
    lora_rank = sft.lora_rank if sft.lora else 0
    data = ray.get(config["data_ref"])
    n_rows = len(data["input_ids"])
    B, A, total = sft.batch_size, sft.grad_accum, config["total_steps"]
    per_rank, micro = B // world, B // (world * A)
    per_epoch = steps_per_epoch(n_rows, B)
    # what a checkpoint must have been made with to resume this run
    expected = {"fingerprint": config["fingerprint"], "total_steps": total, "batch_size": B}

    # Same seed on every rank: LoRA adapters are initialised identically before sharding.
    torch.manual_seed(cfg.seed)
    model = load_for_training(config["init_checkpoint"], lora_rank, sft.activation_checkpointing,
                              attention_for(device, kernel=sft.attention_kernel))
    if sft.compile:
        compile_layers(model)
    n_params = sum(p.numel() for p in model.parameters())
    trained = float(data["loss_mask"].sum() / data["real_tokens"].sum())  # lm_head share
    flops_tok = flops_per_token(model.config, n_params, sft.seq_len, trained)
    peak = peak_flops(device)
    chunked = use_chunked_loss(sft.chunked_loss, model, device)
    model = shard_model(model, device)
    if chunked:
        attach_packed_nll(model)
    optimizer = adamw(model, sft.lr, sft.weight_decay, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(lr_factor, warmup=sft.warmup_steps, total=total))

    start, history, tokens_seen, train_time = 0, [], 0, 0.0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = load_train_state(d, model, optimizer, rank)
        for key, value in expected.items():
            if state[key] != value:
                raise ValueError(
                    f"{name}: the checkpoint in {storage_path(cfg.run_dir)}/{name} was made "
                    f"with {key}={state[key]!r}, this run has {value!r}. Delete that directory "
                    f"to start over, or restore the old data/config to resume.")
        scheduler.load_state_dict(state["scheduler"])
        start, history = state["step"], state["history"]
        tokens_seen, train_time = state["tokens_seen"], state["train_time"]

    model.train()
    t0, window_tokens = time.perf_counter(), 0
    for step in range(start, total):
        if config["fail_at_step"] == step + 1 and rank == 0:
            os.kill(os.getpid(), signal.SIGKILL)  # fault injection: die like an OOM kill
        rows = batch_rows(n_rows, B, step, cfg.seed)
        n_loss = int(data["loss_mask"][rows].sum())  # the whole step's count, all ranks
        mine = rows[rank * per_rank:(rank + 1) * per_rank]
        step_loss = torch.zeros((), device=device)
        for k in range(A):
            idx = mine[k * micro:(k + 1) * micro]
            inputs = {key: torch.from_numpy(data[key][idx]).long().to(device)
                      for key in ("input_ids", "position_ids", "labels", "loss_mask")}
            keep = inputs["loss_mask"].bool()
            # FSDP averages gradients over ranks; x world turns that back into the sum of
            # every rank's share / n_loss, i.e. the mean over the step's assistant tokens.
            loss = packed_loss(model, chunked, inputs["input_ids"], inputs["position_ids"],
                               keep, inputs["labels"][keep], n_loss) * world
            loss.backward()
            step_loss += loss.detach() / world
        grad_norm = grad_norm_and_clip(model, sft.grad_clip)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        window_tokens += int(data["real_tokens"][rows].sum())

        done = step + 1
        log_now = done % sft.log_every == 0 or done == total
        checkpoint_now = done % sft.checkpoint_every == 0 or done == total
        if not (log_now or checkpoint_now):
            continue
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
        tokens_seen += window_tokens
        train_time += elapsed
        metrics = {"step": done, "epoch": round(done / per_epoch, 4),
                   "loss": all_reduce_sum(float(step_loss), device), "lr": lr,
                   "grad_norm": float(grad_norm), "tokens_per_s": window_tokens / elapsed,
                   "tokens_seen": tokens_seen, "train_time_s": train_time, "start_step": start,
                   "chunked_loss": chunked}
        if peak:
            metrics["mfu"] = flops_tok * metrics["tokens_per_s"] / (peak * world)
        history.append(metrics)
        if rank == 0:
            write_jsonl(cfg.run_dir, f"train/{name}_metrics.jsonl", history)
            report_progress(name, done, total, train_time / (done - start),
                            {"loss": metrics["loss"], "tokens_per_s": metrics["tokens_per_s"]})
        if checkpoint_now:
            with tempfile.TemporaryDirectory() as d:
                save_train_state(d, model, optimizer, rank, {
                    "step": done, "scheduler": scheduler.state_dict(), "history": history,
                    "tokens_seen": tokens_seen, "train_time": train_time,
                    **expected})
                if done == total:
                    export_hf(model, config["init_checkpoint"], os.path.join(d, "hf"), rank,
                              lora_rank, config["merge_lora"])
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d),
                                 checkpoint_dir_name=f"step_{done:06d}")
        else:
            ray.train.report(metrics)
        t0, window_tokens = time.perf_counter(), 0  # checkpoint time is not training time


# ---------------------------------------------------------------- the driver

def _resolve(run_dir: str, path: str) -> str:
    """An init checkpoint given relative to the run dir (e.g. "ckpt/sft0") becomes an
    absolute path or URI (workers run elsewhere, in other directories); absolute paths,
    URIs and hub ids pass through."""
    from stagent_ray.runio import exists, run_path

    if "://" in path or os.path.isabs(path) or not exists(run_dir, path):
        return os.path.abspath(path) if os.path.isdir(path) else path
    return run_path(run_dir, path)


def run_sft(cfg, stage: str, data_relative: str, init_checkpoint: str,
            out_relative: str, tool_schemas: list[dict] | None = None, *,
            max_steps: int | None = None, merge_lora: bool = True, failure_config=None,
            fail_at_step: int | None = None, name: str | None = None) -> dict:
    """Train stage `stage` ("sft0" | "sft1" | "pretrain": picks that section of cfg) on the
    trajectories in `<run_dir>/<data_relative>`, starting from `init_checkpoint`; export the model to
    `<run_dir>/<out_relative>`. Resumes from the stage's last Ray Train checkpoint if any.

    tool_schemas: the tools rendered into the system prompt (default: the world's, as the
    rollouts render them). max_steps caps the schedule. failure_config: Ray Train's
    (default: retry a worker failure twice from the last checkpoint, give up on start-up
    after three controller failures instead of waiting forever). fail_at_step: fault
    injection for tests — rank 0 SIGKILLs itself as it starts that step. (Ray registers a
    checkpoint only after its controller polled every rank's report of it, so a kill right
    after a checkpoint may resume from the one before.) name: keys the checkpoints and
    metrics (default: the stage; another name is another run, e.g. a benchmark ablation).

    Returns a summary: steps, final_loss, tokens_per_s, path (the exported model),
    resumed_from_step (0 for a fresh run), and the data counts (samples, truncated,
    dropped, packed_rows, pack_efficiency).
    """
    import ray

    from stagent_ray.models.build import load_tokenizer
    from stagent_ray.runio import read_table

    run_dir = cfg.run_dir
    sft = getattr(cfg, stage, None)
    if not isinstance(sft, SFTConfig):
        raise ValueError(f"stage {stage!r} has no SFT config (cfg.{stage} is {type(sft).__name__})")
    init = _resolve(run_dir, init_checkpoint)
    tokenizer = load_tokenizer(init)
    if tool_schemas is None:  # the tools as the rollouts show them (agent.tool_prompt)
        from stagent_ray.rollout.agent_loop import shown_tool_schemas

        tool_schemas = shown_tool_schemas(cfg.world, cfg.agent.tool_prompt)
    from stagent_ray.models.formats import format_for

    samples, stats = tokenize_rows(read_table(run_dir, data_relative),
                                   format_for(tokenizer, cfg.agent), tool_schemas, sft.seq_len)
    if not samples:
        raise ValueError(f"{stage}: no trainable trajectory in {data_relative}: {stats}. Every "
                         f"one was cut at seq_len={sft.seq_len} before its first assistant "
                         f"token (the shortest renders to {stats['shortest']} tokens, tool "
                         f"schemas in the system prompt included)" if stats["rows"] else
                         f"{stage}: {data_relative} has no rows")
    if stats["truncated"]:
        logger.warning("%s: %d of %d trajectories cut at seq_len=%d (%d dropped: nothing left "
                       "to learn)", stage, stats["truncated"], stats["rows"], sft.seq_len,
                       stats["dropped"])
    packed = pack(samples, sft.seq_len, tokenizer.pad_token_id)
    n_rows = len(packed["input_ids"])
    total = sft.epochs * steps_per_epoch(n_rows, sft.batch_size)
    if max_steps:
        total = min(total, max_steps)

    name = name or stage
    config = {"cfg": cfg, "section": stage, "name": name, "init_checkpoint": init,
              "data_ref": ray.put(packed), "fingerprint": fingerprint(packed),
              "total_steps": total, "merge_lora": merge_lora, "fail_at_step": fail_at_step}
    result = fit_on_ray_train(train_loop, config, name, run_dir, sft.num_workers,
                              failure_config, CHECKPOINTS_TO_KEEP)
    ckpt, metrics = result.checkpoint, result.metrics or {}
    if ckpt is None or metrics.get("step") != total:
        raise RuntimeError(f"{stage}: training ended without its final checkpoint "
                           f"(last metrics: {metrics})")
    path = publish_dir(ckpt.filesystem, posixpath.join(ckpt.path, "hf"), run_dir, out_relative)
    real = int(packed["real_tokens"].sum())
    return {"stage": stage, "steps": total, "final_loss": metrics["loss"],
            "tokens_per_s": metrics["tokens_seen"] / max(metrics["train_time_s"], 1e-9),
            "mfu": metrics.get("mfu"), "path": path, "checkpoint": ckpt.path,
            "resumed_from_step": metrics["start_step"],
            "samples": len(samples), "truncated": stats["truncated"],
            "dropped": stats["dropped"], "packed_rows": n_rows,
            "pack_efficiency": real / (n_rows * sft.seq_len),
            "loss_tokens": int(packed["loss_mask"].sum())}
