"""Attention over packed rows for GPUs without the flash-attn package.

Training rows hold several samples (data.pack); attention must stay inside each. transformers
does that with SDPA and a block-diagonal mask, which rules out SDPA's flash kernel, or with
flash-attn's varlen kernel, a package that is often missing (and absent on our GPU machine).
PyTorch ships the same varlen flash kernel as `torch.nn.attention.varlen.varlen_attn`; this
module registers it with transformers as the attention implementation `stagent_varlen`; on
Hopper GPUs with cudnn-frontend installed it can run cuDNN's fused attention instead
(`register("cudnn")`, cudnn_attention.py: ~1.6x the kernel's speed, ~1.06-1.10x the SFT
step's).

The model then sees all packed rows of a micro-batch as ONE row of B·T tokens with the
sample borders in `cu_seq_lens` (see `flat_inputs`), as flash-attn's varlen path does. On
CPU the same function runs each sample through SDPA in turn: slow, but it lets the CPU tests
check that the flat path gives the loss of the masked one.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

VARLEN = "stagent_varlen"
KERNELS = ("flash", "cudnn")  # torch's varlen flash kernel | cuDNN's (cudnn_attention.py)
_KERNEL = {}  # set by register(): looked up once, not inside compiled layers


def varlen_kernel():
    """torch's varlen flash attention if this torch has the causal (`window_size`) form."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn if "window_size" in inspect.signature(varlen_attn).parameters else None


def varlen_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                     cu_seq_lens_q=None, max_length_q=None, **kwargs):
    """A transformers attention function. query [1, Hq, N, D], key/value [1, Hkv, N, D] for
    one flat row of N tokens; cu_seq_lens_q [S+1] int32 sample borders; max_length_q the
    longest sample. Returns ([1, N, Hq, D], None), causal within each sample."""
    if cu_seq_lens_q is None or query.shape[0] != 1:
        raise ValueError(f"{VARLEN} needs one flat row and its cu_seq_lens_q "
                         "(stagent_ray.train.attention.flat_inputs builds both)")
    q, k, v = (x[0].transpose(0, 1).contiguous() for x in (query, key, value))  # [N, H, D]
    if q.is_cuda and _KERNEL.get("name") == "cudnn":
        from stagent_ray.train import cudnn_attention

        return cudnn_attention.attention(q, k, v, cu_seq_lens_q, max_length_q,
                                         scaling).unsqueeze(0), None
    groups = q.shape[1] // k.shape[1]
    kernel, gqa = _KERNEL.get("fn") if q.is_cuda else None, _KERNEL.get("gqa", False)
    if kernel is not None:
        if groups > 1 and not gqa:  # older kernels want as many k/v heads as q heads
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        extra = {"enable_gqa": True} if groups > 1 and gqa else {}
        out = kernel(q, k, v, cu_seq_lens_q, cu_seq_lens_q, max_length_q, max_length_q,
                     scale=scaling, window_size=(-1, 0), **extra)         # causal
        return out.unsqueeze(0), None
    borders = cu_seq_lens_q.tolist()
    outs = []
    for a, b in zip(borders[:-1], borders[1:]):                     # one sample at a time
        if a == b:  # the empty samples flat_inputs pads with
            continue
        qs, ks, vs = (x[a:b].transpose(0, 1) for x in (q, k, v))    # [H, n, D]
        outs.append(F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scaling,
                                                   enable_gqa=groups > 1).transpose(0, 1))
    return torch.cat(outs).unsqueeze(0), None


def register(kernel: str = "flash") -> None:
    """Make `attn_implementation="stagent_varlen"` known to transformers (per process), its
    GPU kernel one of KERNELS, or "auto": cuDNN's where it can run, else flash."""
    from transformers import AttentionInterface

    from stagent_ray.train import cudnn_attention

    if kernel == "auto":
        kernel = "cudnn" if cudnn_attention.available() else "flash"
    if kernel not in KERNELS:
        raise ValueError(f"attention kernel {kernel!r}: expected one of {KERNELS} or auto")
    if kernel == "cudnn" and not cudnn_attention.available():
        raise RuntimeError("attention kernel 'cudnn' needs a Hopper (or newer) GPU and the "
                           "nvidia-cudnn-frontend package (pip install stagent-ray[cudnn])")
    _KERNEL["name"] = kernel
    fn = varlen_kernel()
    if fn is not None:
        _KERNEL.update(fn=fn, gqa="enable_gqa" in inspect.signature(fn).parameters)
    AttentionInterface.register(VARLEN, varlen_attention)


def flat_inputs(input_ids: torch.Tensor, position_ids: torch.Tensor) -> dict:
    """[B, T] packed rows -> model kwargs for one row of B·T tokens. A sample starts where
    its position id is 0 (padding too is its own sample). max_length is T: no sample spans
    rows, and a constant keeps compiled layers from recompiling per batch. The sample count
    is padded with empty samples to a power of two (at least 16): cuDNN builds a graph per
    count, and the flash kernel skips empty samples."""
    pos = position_ids.reshape(1, -1)
    starts = (pos[0] == 0).nonzero().squeeze(1)
    slots = max(16, 1 << (len(starts) - 1).bit_length())
    total = torch.full((slots + 1 - len(starts),), pos.shape[1], device=pos.device)
    cu = torch.cat([starts, total]).to(torch.int32)
    T = input_ids.shape[1]
    return {"input_ids": input_ids.reshape(1, -1), "position_ids": pos,
            "cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": T, "max_length_k": T}
