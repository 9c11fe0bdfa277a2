"""Attention over packed rows, forward + backward, at the SFT benchmark's shape (GPU only).

    python scripts/bench_attention.py [--rows 8] [--seq 2048]

The MFU profile of bench_sft.py puts ~30% of a step in flash attention (FA2-class kernels,
torch's varlen kernel). This measures the kernels train/attention.py could call for packed
rows, on the same packing (sample lengths uniform in [seq/8, seq], Qwen3-0.6B heads: 16
query heads, 8 key/value heads, head dim 128, bf16):
  varlen        torch.nn.attention.varlen.varlen_attn, GQA in the kernel (what we call now)
  varlen_rep    the same with k/v repeated to every query head (torch without enable_gqa)
  cudnn         aten._cudnn_attention_forward/backward with cumulative sequence lengths
                (cuDNN's ragged layout; Hopper kernels), k/v repeated, where this torch
                exposes it
  cudnn_gqa     the same with 8 key/value heads passed as they are
  cudnn_graph   cuDNN's kernels through our own cudnn-frontend graphs, built once per shape
                (train/cudnn_attention.py: what `attention_kernel: cudnn` runs), GQA in the
                kernel; needs the nvidia-cudnn-frontend package
On torch 2.11 + cuDNN 9.19 (H200) cuDNN's kernels are fast but torch's op is not usable for
training: ~58 ms of CPU per call and dq/dk far from the flash kernel's (README, Performance).
Per kernel: milliseconds for one layer's forward + backward, TFLOP/s of the causal work
actually done (fwd 2·n²·H·D per sample of n tokens, backward 2.5× that), and the largest
difference of output and gradients from `varlen`. A kernel that fails reports its error.
Prints ONE JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from stagent_ray.train import cudnn_attention  # noqa: E402
from stagent_ray.train.attention import flat_inputs  # noqa: E402
from stagent_ray.train.data import pack  # noqa: E402

HEADS, KV_HEADS, HEAD_DIM = 16, 8, 128


def varlen(q, k, v, cu, max_len, gqa: bool):
    from torch.nn.attention.varlen import varlen_attn

    if not gqa:
        k, v = (x.repeat_interleave(HEADS // KV_HEADS, dim=1) for x in (k, v))
        return varlen_attn(q, k, v, cu, cu, max_len, max_len, window_size=(-1, 0))
    return varlen_attn(q, k, v, cu, cu, max_len, max_len, window_size=(-1, 0), enable_gqa=True)


def cudnn(q, k, v, cu, max_len, gqa: bool):
    if not gqa:
        k, v = (x.repeat_interleave(HEADS // KV_HEADS, dim=1) for x in (k, v))
    # aten's autograd formula runs cuDNN's backward (called from Python, the backward op
    # needs a bias tensor, and an empty one fails: IndexError on torch 2.11)
    return torch.ops.aten._cudnn_attention_forward(q, k, v, None, cu, cu, max_len, max_len, True,
                                                   0.0, True, False)[0]                # causal


def fwd_bwd(fn, q, k, v, grad_out):
    q, k, v = (x.detach().requires_grad_() for x in (q, k, v))
    out = fn(q, k, v)
    out.backward(grad_out)
    return out.detach(), q.grad, k.grad, v.grad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_attention.py measures GPU kernels: no CUDA device here")
    dev = torch.device("cuda")

    rng = np.random.default_rng(0)  # bench_sft.py's packing: lengths uniform in [seq/8, seq]
    samples = []
    while sum(len(s[0]) for s in samples) < args.rows * args.seq:
        n = int(rng.integers(args.seq // 8, args.seq + 1))
        samples.append(([0] * (n + 1), [1] * (n + 1)))
    packed = pack(samples, args.seq, pad_id=0)
    ids = torch.from_numpy(packed["input_ids"][:args.rows]).long()
    pos = torch.from_numpy(packed["position_ids"][:args.rows]).long()
    cu = flat_inputs(ids, pos)["cu_seq_lens_q"].to(dev)
    lengths = (cu[1:] - cu[:-1]).double()
    flops_fwd = float((2 * lengths ** 2 * HEADS * HEAD_DIM).sum())  # causal: half of 4·n²·H·D
    flops = flops_fwd * 3.5                                          # + backward (2.5x)

    total = int(cu[-1])
    torch.manual_seed(0)
    q = torch.randn(total, HEADS, HEAD_DIM, device=dev, dtype=torch.bfloat16)
    k, v = (torch.randn(total, KV_HEADS, HEAD_DIM, device=dev, dtype=torch.bfloat16)
            for _ in range(2))
    grad_out = torch.randn_like(q)
    kernels = {"varlen": lambda q, k, v: varlen(q, k, v, cu, args.seq, gqa=True),
               "varlen_rep": lambda q, k, v: varlen(q, k, v, cu, args.seq, gqa=False),
               "cudnn": lambda q, k, v: cudnn(q, k, v, cu, args.seq, gqa=False),
               "cudnn_gqa": lambda q, k, v: cudnn(q, k, v, cu, args.seq, gqa=True),
               "cudnn_graph": lambda q, k, v: cudnn_attention.attention(q, k, v, cu, args.seq)}
    results, reference = {}, None
    for name, fn in kernels.items():
        try:
            got = fwd_bwd(fn, q, k, v, grad_out)
            for _ in range(3):
                fwd_bwd(fn, q, k, v, grad_out)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(args.repeats):
                fwd_bwd(fn, q, k, v, grad_out)
            torch.cuda.synchronize()
            sec = (time.perf_counter() - t0) / args.repeats
        except Exception as exc:  # a kernel this torch/GPU lacks: say which and why
            results[name] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            continue
        reference = reference or got
        results[name] = {"ms": round(sec * 1e3, 3), "tflops": round(flops / sec / 1e12, 1),
                         "max_diff": [round(float((a.float() - b.float()).abs().max()), 4)
                                      for a, b in zip(got, reference)]}  # out, dq, dk, dv
    print(json.dumps({"bench": "attention", "device": torch.cuda.get_device_name(),
                      "torch": torch.__version__, "rows": args.rows, "seq": args.seq,
                      "samples": int((lengths > 0).sum()), "tokens": total,
                      "heads": [HEADS, KV_HEADS],
                      "head_dim": HEAD_DIM, "causal_flops": flops, **results}))


if __name__ == "__main__":
    main()
