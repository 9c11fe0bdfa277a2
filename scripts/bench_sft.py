"""SFT training throughput: our step against a plain transformers loop, in one process.

    python scripts/bench_sft.py --compile            # GPU: Qwen3-0.6B shape, 8 x 2048, bf16
    python scripts/bench_sft.py --device cpu --tiny  # a small CPU version, to exercise it

Prints ONE JSON line: tokens/s, MFU (GPU) and peak memory of
  baseline: a plain transformers loop — bf16 weights, SDPA, fused AdamW, unpacked rows of
            random tokens, `model(input_ids, labels=input_ids).loss`;
  ours:     the step train/sft.py runs in each Ray Train worker — fp32 master weights
            sharded with FSDP2 (world of 1 here) under bf16 mixed precision, packed rows
            (varlen attention on GPUs: cuDNN's fused kernels where cudnn-frontend is
            installed on Hopper, else flash-attn if installed, else torch's flash kernel,
            `--attention-kernel` to choose, train/attention.py; SDPA with a block mask
            otherwise), logits and loss on the
            trained tokens only (by default in row chunks, without the [N, V] logits:
            sft.LinearCrossEntropy; `--loss logits` for the full logits), clipping, AdamW;
            `--compile` compiles each decoder layer (sft.compile). MFU counts only the
            lm_head work done.
It runs the step directly, without Ray, to measure kernel-level speed; Ray Train adds
start-up and a report every `log_every` steps, not per-step work. Random weights and data
(lengths uniform in [seq/8, seq], half of each sample's tokens trained): speed only.
Tokens/s count real tokens (ours excludes the padding at the end of packed rows).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import torch.distributed as dist

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from stagent_ray.train.common import (adamw, attention_for, compile_layers,  # noqa: E402
                                      flops_per_token, grad_norm_and_clip, peak_flops,
                                      shard_model)
from stagent_ray.train.attention import _KERNEL, KERNELS, VARLEN, register  # noqa: E402
from stagent_ray.train.data import pack  # noqa: E402
from stagent_ray.train.sft import (attach_packed_nll, packed_loss,  # noqa: E402
                                   use_chunked_loss)

QWEN3_06B = dict(hidden_size=1024, num_hidden_layers=28, num_attention_heads=16,
                 num_key_value_heads=8, head_dim=128, intermediate_size=3072,
                 vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=40960)
TINY = dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
            head_dim=32, intermediate_size=384, vocab_size=4096, tie_word_embeddings=True,
            max_position_embeddings=4096)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(step, device, warmup: int, steps: int) -> float:
    """Seconds per step, after `warmup` untimed steps."""
    for _ in range(warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - t0) / steps


def peak_mem_gb(device) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None


def bench_baseline(config, device, batch: int, seq: int, warmup: int, steps: int) -> dict:
    from transformers import Qwen3ForCausalLM

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config).to(device=device, dtype=dtype)
    model.config.use_cache = False
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    ids = torch.randint(0, config.vocab_size, (batch, seq), device=device)

    def step():
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sec = timed(step, device, warmup, steps)
    out = {"step_s": sec, "tokens_per_s": batch * seq / sec, "peak_mem_gb": peak_mem_gb(device)}
    del model, opt
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def bench_ours(config, device, batch: int, seq: int, warmup: int, steps: int,
               compiled: bool, activation_checkpointing: bool, attention: str, loss: str,
               kernel: str = "auto", profile: bool = False) -> dict:
    from transformers import Qwen3ForCausalLM

    torch.manual_seed(0)
    if attention == "auto":
        attention = attention_for(device, kernel=kernel)
    elif attention == VARLEN:
        register(kernel)
    config._attn_implementation = attention
    model = Qwen3ForCausalLM(config)  # fp32 master weights; FSDP casts compute to bf16
    model.config.use_cache = False
    if activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if compiled:
        compile_layers(model)
    chunked = use_chunked_loss({"auto": None, "chunked": True, "logits": False}[loss], model,
                               device)
    model = shard_model(model, device)
    if chunked:
        attach_packed_nll(model)
    opt = adamw(model, 1e-5, 0.0, device)

    rng = np.random.default_rng(0)
    samples = []
    while sum(len(s[0]) for s in samples) < 4 * batch * seq:  # a pool to pack from
        n = int(rng.integers(seq // 8, seq + 1))
        ids = rng.integers(0, config.vocab_size, n + 1).tolist()
        samples.append((ids, [0] * (n // 2 + 1) + [1] * (n - n // 2)))
    packed = pack(samples, seq, pad_id=0)
    rows = np.arange(batch) % len(packed["input_ids"])
    t = {k: torch.from_numpy(packed[k][rows]).long().to(device)
         for k in ("input_ids", "position_ids", "labels", "loss_mask")}
    real = int(packed["real_tokens"][rows].sum())

    keep = t["loss_mask"].bool()

    def step():
        packed_loss(model, chunked, t["input_ids"], t["position_ids"], keep, t["labels"][keep],
                    int(keep.sum())).backward()
        grad_norm_and_clip(model, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sec = timed(step, device, warmup, steps)
    if profile:  # where a step's time goes, to stderr (the JSON line stays alone on stdout)
        from torch.profiler import ProfilerActivity, profile as torch_profile

        with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(2):
                step()
            sync(device)
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=25),
              file=sys.stderr)
    return {"step_s": sec, "tokens_per_s": real / sec, "peak_mem_gb": peak_mem_gb(device),
            "pack_efficiency": round(real / (batch * seq), 4),
            "trained_fraction": round(int(keep.sum()) / real, 4),
            "attention": config._attn_implementation,
            "attention_kernel": _KERNEL.get("name") if attention == VARLEN else None,
            "loss": "chunked" if chunked else "logits",
            "compile": compiled, "activation_checkpointing": activation_checkpointing}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="small model, short rows (CPU check)")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--seq", type=int)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="torch.compile each decoder layer")
    ap.add_argument("--activation-checkpointing", action="store_true")
    ap.add_argument("--attention", default="auto", choices=["auto", "sdpa", VARLEN],
                    help="ours: auto = what train/sft.py picks for the device")
    ap.add_argument("--attention-kernel", default="auto", choices=["auto", *KERNELS],
                    help="ours, varlen attention on GPUs: auto = what train/sft.py picks")
    ap.add_argument("--loss", default="auto", choices=["auto", "chunked", "logits"],
                    help="ours: auto = what train/sft.py picks (chunked on GPUs, large vocab)")
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--profile", action="store_true", help="print a kernel table to stderr")
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU threads; on a shared, busy host more threads spin and run slower")
    args = ap.parse_args()
    from transformers import Qwen3Config

    device = torch.device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", device.index or 0)
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
    else:
        torch.set_num_threads(args.threads)
    batch = args.batch or (4 if args.tiny else 8)
    seq = args.seq or (256 if args.tiny else 2048)
    config = Qwen3Config(**(TINY if args.tiny else QWEN3_06B))
    # FSDP2 needs a process group even for one rank; an in-memory store needs no network.
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=dist.HashStore(),
                            rank=0, world_size=1)

    from transformers import Qwen3ForCausalLM
    with torch.device("meta"):
        n_params = sum(p.numel() for p in Qwen3ForCausalLM(config).parameters())
    flops_tok = flops_per_token(config, n_params, seq)
    peak = peak_flops(device)
    results = {}
    if not args.skip_baseline:
        results["baseline"] = bench_baseline(config, device, batch, seq, args.warmup, args.steps)
    results["ours"] = bench_ours(config, device, batch, seq, args.warmup, args.steps,
                                 args.compile, args.activation_checkpointing, args.attention,
                                 args.loss, args.attention_kernel, args.profile)
    # Ours computes logits only at trained tokens: that lm_head work is not counted.
    flops = {"baseline": flops_tok, "ours": flops_per_token(
        config, n_params, seq, results["ours"]["trained_fraction"])}
    for name, r in results.items():
        r["mfu"] = round(flops[name] * r["tokens_per_s"] / peak, 4) if peak else None
        r["tokens_per_s"] = round(r["tokens_per_s"], 1)
        r["step_s"] = round(r["step_s"], 4)
    line = {"bench": "sft", "model": "tiny" if args.tiny else "qwen3-0.6b-shape",
            "params": n_params, "device": torch.cuda.get_device_name(device)
            if device.type == "cuda" else "cpu", "threads": torch.get_num_threads(),
            "batch": batch, "seq_len": seq, "steps": args.steps,
            "harness": "direct step, no Ray (same setup, loss and optimizer as train/sft.py)",
            "mfu_flops_per_token": flops, "peak_flops": peak, **results}
    if "baseline" in results:
        ours, base = results["ours"]["tokens_per_s"], results["baseline"]["tokens_per_s"]
        line["speedup"] = round(ours / base, 3)
    print(json.dumps(line))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
