"""cuDNN's fused attention for packed rows, through cudnn-frontend graphs (Hopper and newer).

Why: on Hopper cuDNN's SDPA kernels run a packed batch's causal forward + backward in about
two thirds of the time of the FA2-class varlen kernel torch ships (1.2 vs 1.9 ms a layer at
the SFT benchmark's shape on an H100; README, Performance), but torch 2.11 reaches them for
packed rows only through an op that builds a new cuDNN graph on every call (~58 ms of CPU
each, and wrong dq). Here each graph is built once per shape and then only executed.

Layout (THD, as attention.varlen_attention hands it over): q [N, Hq, D], k/v [N, Hkv, D], the
samples back to back; cu [S+1] int32 cumulative sample borders, cu[-1] = N. Each sample is one
"batch" entry of the graph with its ragged offset into the token dim, and a padding mask cuts
it to its length, so nothing attends across samples. The graph is shaped by S; flat_inputs
pads S to a power of two with empty samples, so a handful of graphs serve every batch.
GQA runs in the kernel (k/v are not repeated). Needs the `nvidia-cudnn-frontend` package
(`pip install stagent-ray[cudnn]`); `available()` says whether it can run here.
"""

from __future__ import annotations

import torch

_GRAPHS: dict = {}   # shape key -> (graph, its tensors by name, its workspace)
_HANDLES: dict = {}  # device index -> [cudnn handle, the stream it was last set to]
_BORDERS: dict = {}  # the last sample borders' ragged offsets and lengths (every layer's)


def available() -> bool:
    """A Hopper-or-newer GPU and an importable cudnn-frontend (with its cuDNN library)."""
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9:
        return False
    try:
        import cudnn  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


def _handle(device: torch.device):
    import cudnn

    if device.index not in _HANDLES:
        with torch.cuda.device(device):
            _HANDLES[device.index] = [cudnn.create_handle(), None]
    entry, stream = _HANDLES[device.index], torch.cuda.current_stream(device).cuda_stream
    if entry[1] != stream:  # setting it costs driver calls: only when it changes
        cudnn.set_stream(handle=entry[0], stream=stream)
        entry[1] = stream
    return entry[0]


def _build(key: tuple, device: torch.device):
    """The forward (kind "fwd") or backward ("bwd") graph for one shape, planned and built."""
    import cudnn

    kind, slots, hq, hkv, seq, dim, dtype, scale, max_tokens = key
    types = cudnn.data_type
    io = {torch.bfloat16: types.BFLOAT16, torch.float16: types.HALF}[dtype]
    graph = cudnn.pygraph(io_data_type=io, intermediate_data_type=types.FLOAT,
                          compute_data_type=types.FLOAT, handle=_handle(device))
    t = {}

    def lengths(name):  # [S, 1, 1, 1] sample lengths
        t[name] = graph.tensor(name=name, dim=[slots, 1, 1, 1], stride=[1, 1, 1, 1],
                               data_type=types.INT32)
        return t[name]

    def ragged(name, heads, tensor=None):
        """A [S, H, T, D] view of [N, H, D] memory, sample i starting at offset_<name>[i]."""
        dims, strides = [slots, heads, seq, dim], [seq * heads * dim, dim, heads * dim, 1]
        if tensor is None:
            tensor = graph.tensor(name=name, dim=dims, stride=strides, data_type=io)
        else:
            tensor.set_dim(dims).set_stride(strides)
        offset = graph.tensor(name=f"offset_{name}", dim=[slots + 1, 1, 1, 1],
                              stride=[1, 1, 1, 1], data_type=types.INT64)
        tensor.set_ragged_offset(offset)
        t[name], t[f"offset_{name}"] = tensor, offset
        return tensor

    q, k, v = ragged("q", hq), ragged("k", hkv), ragged("v", hkv)
    mask = dict(attn_scale=scale, use_padding_mask=True, seq_len_q=lengths("len_q"),
                seq_len_kv=lengths("len_kv"), diagonal_band_right_bound=0,     # causal
                diagonal_alignment=cudnn.diagonal_alignment.TOP_LEFT)
    if kind == "fwd":
        out, stats = graph.sdpa(name="sdpa", q=q, k=k, v=v, generate_stats=True, **mask)
        ragged("out", hq, out).set_output(True)
        stats.set_output(True).set_data_type(types.FLOAT)
        stats.set_dim([slots, hq, seq, 1]).set_stride([hq * seq, seq, 1, 1])
        t["stats"] = stats
    else:
        out, grad_out = ragged("out", hq), ragged("grad_out", hq)
        t["stats"] = graph.tensor(name="stats", dim=[slots, hq, seq, 1],
                                  stride=[hq * seq, seq, 1, 1], data_type=types.FLOAT)
        grads = graph.sdpa_backward(name="sdpa_backward", q=q, k=k, v=v, o=out, dO=grad_out,
                                    stats=t["stats"], max_total_seq_len_q=max_tokens,
                                    max_total_seq_len_kv=max_tokens, **mask)
        for name, grad, heads in zip(("dq", "dk", "dv"), grads, (hq, hkv, hkv)):
            ragged(name, heads, grad).set_output(True)
    graph.validate()
    graph.build_operation_graph()
    graph.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
    graph.check_support()
    graph.build_plans()
    return graph, t, torch.empty(graph.get_workspace_size(), device=device, dtype=torch.uint8)


def _run(kind: str, q: torch.Tensor, k: torch.Tensor, cu: torch.Tensor, max_len: int,
         scale: float, buffers: dict) -> None:
    """Execute the `kind` graph for this shape (built on first use) on torch's stream."""
    slots, (n, hq, dim), hkv = cu.shape[0] - 1, q.shape, k.shape[1]
    key = (kind, slots, hq, hkv, max_len, dim, q.dtype, scale, -(-n // 64) * 64)
    if key not in _GRAPHS:
        _GRAPHS[key] = _build(key, q.device)
    graph, t, workspace = _GRAPHS[key]  # one stream: executions never overlap
    # Every layer, forward and backward, sees the same borders: derive their offsets once
    # (the cached entry holds cu, so its memory cannot be reused while the key stands).
    borders = (cu.data_ptr(), cu._version, slots, hq, hkv, dim)
    if _BORDERS.get("key") != borders:
        cu64 = cu.to(torch.int64).view(-1, 1, 1, 1)
        _BORDERS.update(key=borders, cu=cu, offset_q=(cu64 * (hq * dim)).contiguous(),
                        offset_kv=(cu64 * (hkv * dim)).contiguous(),
                        lengths=(cu[1:] - cu[:-1]).to(torch.int32).view(-1, 1, 1, 1).contiguous())
    lengths = _BORDERS["lengths"]
    pack = {t["len_q"]: lengths, t["len_kv"]: lengths}
    for name in t:  # k, v and their gradients have Hkv heads a token, the rest Hq
        if name.startswith("offset_"):
            pack[t[name]] = _BORDERS["offset_kv" if name[-1] in "kv" else "offset_q"]
    pack.update({t[name]: x for name, x in buffers.items()})
    graph.execute(pack, workspace, handle=_handle(q.device))


@torch.library.custom_op("stagent::cudnn_varlen_fwd", mutates_args=(), device_types="cuda")
def varlen_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor,
               max_len: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention within each sample: (out [N, Hq, D], softmax stats [S, Hq, T, 1])."""
    out = torch.empty_like(q)
    stats = torch.empty(cu.shape[0] - 1, q.shape[1], max_len, 1, device=q.device,
                        dtype=torch.float32)
    _run("fwd", q, k, cu, max_len, scale, {"q": q, "k": k, "v": v, "out": out, "stats": stats})
    return out, stats


@varlen_fwd.register_fake
def _(q, k, v, cu, max_len, scale):
    return torch.empty_like(q), q.new_empty((cu.shape[0] - 1, q.shape[1], max_len, 1),
                                            dtype=torch.float32)


@torch.library.custom_op("stagent::cudnn_varlen_bwd", mutates_args=(), device_types="cuda")
def varlen_bwd(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               out: torch.Tensor, stats: torch.Tensor, cu: torch.Tensor, max_len: int,
               scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    _run("bwd", q, k, cu, max_len, scale, {"q": q, "k": k, "v": v, "out": out, "stats": stats,
                                           "grad_out": grad_out, "dq": dq, "dk": dk, "dv": dv})
    return dq, dk, dv


@varlen_bwd.register_fake
def _(grad_out, q, k, v, out, stats, cu, max_len, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, cu, ctx.max_len, ctx.scale = inputs
    ctx.save_for_backward(q, k, v, output[0], output[1], cu)


def _backward(ctx, grad_out, _grad_stats):
    q, k, v, out, stats, cu = ctx.saved_tensors
    dq, dk, dv = varlen_bwd(grad_out.contiguous(), q, k, v, out, stats, cu, ctx.max_len,
                            ctx.scale)
    return dq, dk, dv, None, None, None


varlen_fwd.register_autograd(_backward, setup_context=_setup_context)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor,
              max_len: int, scale: float | None = None) -> torch.Tensor:
    """q [N, Hq, D], k/v [N, Hkv, D] contiguous, cu [S+1] int32 -> [N, Hq, D], causal within
    each sample (differentiable)."""
    scale = scale if scale is not None else q.shape[-1] ** -0.5
    return varlen_fwd(q, k, v, cu, max_len, float(scale))[0]
