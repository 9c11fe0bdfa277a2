"""SFT without Ray: the loss, packing, the data order and the schedule."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stagent_ray.config import AgentConfig, ModelConfig
from stagent_ray.models.build import build_tiny_model
from stagent_ray.models.chat_format import format_tool_call, render_ids
from stagent_ray.models.formats import format_for
from stagent_ray.models.tokenizer import SYNTAX_LINES, train_tokenizer
from stagent_ray.train.attention import KERNELS, VARLEN, flat_inputs, register
from stagent_ray.train.data import batch_rows, pack, steps_per_epoch, tokenize_rows
from stagent_ray.train.losses import sft_loss
from stagent_ray.train.sft import (LinearCrossEntropy, attach_packed_nll, chunked_loss_supported,
                                   lr_factor, packed_logits)

TINY = ModelConfig(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2,
                   num_kv_heads=1)


def conversation(i: int) -> list[dict]:
    city = ["Lanford", "Beriton", "Kessa"][i % 3]
    call = format_tool_call("map_search_places", {"query": "cafe"})
    return [{"role": "system", "content": "You help with places."},
            {"role": "user", "content": f"Find a cafe in {city}, request {i}" + " pls" * (i % 4)},
            {"role": "assistant", "content": call},
            {"role": "tool", "content": json.dumps({"places": [{"name": f"Cafe {city} {i}"}]})},
            {"role": "assistant", "content": f"Cafe {city} {i} is open."}]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(SYNTAX_LINES + [json.dumps(conversation(i)) for i in range(12)], 500)


def test_masked_tokens_get_exactly_zero_gradient():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7, requires_grad=True)
    labels = torch.randint(0, 7, (2, 5))
    mask = torch.tensor([[0, 1, 1, 0, 0], [1, 0, 0, 0, 1]])
    loss = sft_loss(logits, labels, mask)
    loss.backward()
    assert (logits.grad[mask == 0] == 0).all()
    assert (logits.grad[mask == 1].abs().sum(-1) > 0).all()
    expected = torch.nn.functional.cross_entropy(logits[mask == 1], labels[mask == 1])
    assert torch.allclose(loss, expected)
    # an explicit token count turns the mean into sum / count (micro-batches, ranks)
    assert torch.allclose(sft_loss(logits, labels, mask, 8), expected * 4 / 8)


def test_tokenize_trains_only_on_assistant_tokens(tok):
    rows = [{"messages": json.dumps(conversation(i))} for i in range(3)]
    samples, stats = tokenize_rows(rows, format_for(tok, AgentConfig()), None, seq_len=512)
    assert stats["rows"] == 3 and stats["truncated"] == stats["dropped"] == 0
    ids, mask = samples[0]
    trained = tok.decode([t for t, m in zip(ids, mask) if m])
    assert "Cafe Lanford 0 is open." in trained and "map_search_places" in trained
    assert "request" not in trained and "You help" not in trained  # user, system
    assert '"places"' not in trained                                  # tool response
    # A trajectory cut before any assistant token is dropped, not trained on.
    first_assistant = mask.index(1)
    _, stats = tokenize_rows(rows[:1], format_for(tok, AgentConfig()), None,
                             seq_len=first_assistant - 1)
    assert stats["truncated"] == stats["dropped"] == 1


def test_pack_layout(tok):
    samples = [render_ids(tok, conversation(i)) for i in range(6)]
    T = 2 * max(len(ids) for ids, _ in samples) + 5
    packed = pack(samples, T, tok.pad_token_id)
    N = len(packed["input_ids"])
    assert N < len(samples)                                    # rows are shared
    assert packed["real_tokens"].sum() == sum(len(ids) - 1 for ids, _ in samples)
    assert packed["loss_mask"].sum() == sum(sum(m[1:]) for _, m in samples)
    for r in range(N):
        pos, inp, lab = packed["position_ids"][r], packed["input_ids"][r], packed["labels"][r]
        starts = [0] + [t for t in range(1, T) if pos[t] == 0]
        ends = starts[1:] + [T]
        for s, e in zip(starts, ends):
            assert (pos[s:e] == np.arange(e - s)).all()        # positions restart per sample
            if s < packed["real_tokens"][r]:                   # a real sample: labels shifted
                whole = next(ids for ids, _ in samples if ids[:e - s] == list(inp[s:e]))
                assert list(lab[s:e]) == whole[1:e - s + 1]
        assert (packed["loss_mask"][r, packed["real_tokens"][r]:] == 0).all()  # padding


def mean_loss_unpacked(model, samples):
    """Reference: every sample alone, no padding, no packing."""
    nll, count = 0.0, 0
    for ids, mask in samples:
        x = torch.tensor([ids])
        logits = model(input_ids=x[:, :-1]).logits                          # [1, L-1, V]
        m = torch.tensor([mask[1:]])
        nll += float(sft_loss(logits, x[:, 1:], m) * m.sum())
        count += int(m.sum())
    return nll / count


def mean_loss_packed(model, packed):
    keep = torch.from_numpy(packed["loss_mask"]).bool()
    logits = packed_logits(model, torch.from_numpy(packed["input_ids"]).long(),
                           torch.from_numpy(packed["position_ids"]).long(), keep)   # [N, V]
    return float(sft_loss(logits, torch.from_numpy(packed["labels"]).long()[keep]))


# stagent_varlen: the rows as one flat row with sample borders (torch's varlen flash kernel on
# GPUs; here its CPU stand-in, per-sample SDPA), the path GPUs without flash-attn take.
@pytest.mark.parametrize("attn", ["sdpa", "eager", VARLEN])
def test_packed_loss_equals_unpacked(tok, attn):
    torch.manual_seed(0)
    register()
    model = build_tiny_model(TINY, tok, seed=3).eval()
    samples = [render_ids(tok, conversation(i)) for i in range(7)]
    packed = pack(samples, 3 * max(len(ids) for ids, _ in samples), tok.pad_token_id)
    assert len(packed["input_ids"]) < len(samples)
    with torch.no_grad():
        model.config._attn_implementation = "sdpa" if attn == VARLEN else attn
        reference = mean_loss_unpacked(model, samples)   # varlen needs sample borders
        model.config._attn_implementation = attn
        assert abs(mean_loss_packed(model, packed) - reference) < 1e-4
        # The check has teeth: positions that run on across samples let attention leak.
        leaky = dict(packed, position_ids=np.tile(np.arange(packed["input_ids"].shape[1]),
                                                  (len(packed["input_ids"]), 1)))
        assert abs(mean_loss_packed(model, leaky) - reference) > 1e-3


def test_flat_inputs_pad_sample_borders_to_a_power_of_two():
    """Packed rows -> one flat row whose sample borders are padded with empty samples (so
    cuDNN's graphs are few); the cuDNN kernel, asked for where it cannot run, says why."""
    pos = torch.tensor([[0, 1, 2, 0, 1], [0, 1, 0, 1, 2]])
    cu = flat_inputs(pos * 0, pos)["cu_seq_lens_q"]
    assert cu.tolist() == [0, 3, 5, 7] + [10] * 13                        # 16 slots, 12 empty
    pos = torch.zeros(1, 17, dtype=torch.long)                             # 17 one-token samples
    assert len(flat_inputs(pos, pos)["cu_seq_lens_q"]) == 33
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="nvidia-cudnn-frontend"):
            register("cudnn")
    with pytest.raises(ValueError, match="expected one of"):
        register("fa3")


@pytest.mark.parametrize("frozen_weight", [False, True])
def test_chunked_cross_entropy_equals_full_logits(frozen_weight):
    """LinearCrossEntropy (row chunks, gradients made in forward) gives the loss and the
    gradients of CE over the whole [N, V] logits; a frozen weight (LoRA) gets none."""
    torch.manual_seed(0)
    hidden = torch.randn(10, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(13, 8, dtype=torch.float64, requires_grad=not frozen_weight)
    labels = torch.randint(0, 13, (10,))
    reference = F.cross_entropy(hidden @ weight.T, labels, reduction="sum")
    want = torch.autograd.grad(reference * 0.7, [hidden] + [weight] * (not frozen_weight))
    chunked = LinearCrossEntropy.apply(hidden, weight, labels, 3)         # chunks 3, 3, 3, 1
    got = torch.autograd.grad(chunked * 0.7, [hidden] + [weight] * (not frozen_weight))
    assert torch.allclose(chunked, reference, rtol=1e-12)
    for g, w in zip(got, want):
        assert torch.allclose(g, w, atol=1e-10)
    if frozen_weight:
        assert weight.grad is None


@pytest.mark.parametrize("attn", ["sdpa", VARLEN])
def test_chunked_loss_under_fsdp_equals_the_logits_path(tok, attn):
    """The trainer's chunked path (decoder + LinearCrossEntropy, run as an FSDP forward
    method on the sharded model) gives the loss and gradients of sft_loss(packed_logits)
    on an unsharded copy, the tied embedding/lm_head weight included."""
    import torch.distributed as dist

    from stagent_ray.train.common import shard_model

    register()
    samples = [render_ids(tok, conversation(i)) for i in range(5)]
    packed = pack(samples, 2 * max(len(ids) for ids, _ in samples), tok.pad_token_id)
    t = {k: torch.from_numpy(packed[k]).long() for k in ("input_ids", "position_ids",
                                                          "labels", "loss_mask")}
    keep = t["loss_mask"].bool()
    plain = build_tiny_model(TINY, tok, seed=3)
    plain.config._attn_implementation = attn
    assert chunked_loss_supported(plain)
    n = int(keep.sum())
    reference = sft_loss(packed_logits(plain, t["input_ids"], t["position_ids"], keep),
                         t["labels"][keep]) * n
    reference.backward()

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        model = build_tiny_model(TINY, tok, seed=3)
        model.config._attn_implementation = attn
        model = shard_model(model, torch.device("cpu"))
        attach_packed_nll(model)
        loss = model.packed_nll(t["input_ids"], t["position_ids"], keep, t["labels"][keep])
        loss.backward()
        assert abs(loss.item() - reference.item()) < 1e-4 * reference.item()
        for name in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
                     "model.norm.weight"):
            got = dict(model.named_parameters())[name].grad.full_tensor()
            want = dict(plain.named_parameters())[name].grad
            assert torch.allclose(got, want, atol=1e-5, rtol=1e-4), name
    finally:
        dist.destroy_process_group()


def test_batch_rows_is_a_function_of_the_step():
    n, B, seed = 10, 4, 7
    per_epoch = steps_per_epoch(n, B)
    assert per_epoch == 3
    epoch0 = np.concatenate([batch_rows(n, B, s, seed) for s in range(per_epoch)])
    assert set(epoch0) == set(range(n))                         # every row, every epoch
    assert all(len(batch_rows(n, B, s, seed)) == B for s in range(9))
    assert (batch_rows(n, B, 4, seed) == batch_rows(n, B, 4, seed)).all()
    assert not (batch_rows(n, B, 0, seed) == batch_rows(n, B, per_epoch, seed)).all()


def test_lr_warmup_then_cosine():
    f = [lr_factor(s, warmup=4, total=20, min_ratio=0.1) for s in range(20)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0]
    assert f[4] == 1.0 and abs(f[-1] - 0.1) < 1e-12
    assert all(a >= b for a, b in zip(f[4:], f[5:]))
    assert lr_factor(0, warmup=0, total=1) == 1.0


def _needs(kernel: str) -> None:
    from stagent_ray.train import cudnn_attention

    if kernel == "cudnn" and not cudnn_attention.available():
        pytest.skip("cuDNN kernel: needs a Hopper GPU and nvidia-cudnn-frontend")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kernel", KERNELS)
def test_varlen_kernel_matches_masked_sdpa_on_gpu(tok, kernel):
    """torch's varlen flash kernel and cuDNN's (sft.attention_kernel) give the loss and
    gradients of the SDPA block-mask path, in bf16."""
    from stagent_ray.train.attention import _KERNEL

    _needs(kernel)
    register(kernel)
    assert _KERNEL.get("fn") is not None, "this torch has no causal varlen_attn"
    model = build_tiny_model(TINY, tok, seed=3).cuda().to(torch.bfloat16)
    samples = [render_ids(tok, conversation(i)) for i in range(7)]
    packed = pack(samples, 3 * max(len(ids) for ids, _ in samples), tok.pad_token_id)
    t = {k: torch.from_numpy(packed[k]).long().cuda() for k in ("input_ids", "position_ids",
                                                                  "labels", "loss_mask")}
    keep = t["loss_mask"].bool()
    results = {}
    for attn in ("sdpa", VARLEN):
        model.config._attn_implementation = attn
        model.zero_grad()
        loss = sft_loss(packed_logits(model, t["input_ids"], t["position_ids"], keep),
                        t["labels"][keep])
        loss.backward()
        results[attn] = (float(loss), model.model.layers[0].self_attn.q_proj.weight.grad.float())
    register()  # back to the default kernel for the tests that follow
    (a, ga), (b, gb) = results["sdpa"], results[VARLEN]
    assert abs(a - b) < 2e-2 * abs(a)
    assert torch.nn.functional.cosine_similarity(ga.flatten(), gb.flatten(), dim=0) > 0.99


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cudnn_attention_is_as_close_to_exact_as_flash_on_gpu():
    """cuDNN's packed-row attention (GQA, head dim 128, empty padding samples) against
    float32 attention sample by sample: output and gradients no further off than torch's
    flash kernel on the same bf16 inputs."""
    from stagent_ray.train import cudnn_attention
    from stagent_ray.train.attention import varlen_kernel

    _needs("cudnn")
    torch.manual_seed(0)
    lengths = [300, 17, 1024, 1, 700]
    cu = torch.tensor([0, *np.cumsum(lengths), *[sum(lengths)] * 11], dtype=torch.int32,
                      device="cuda")                                    # 16 slots, 11 empty
    n = sum(lengths)
    q = torch.randn(n, 16, 128, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(n, 8, 128, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    grad_out = torch.randn_like(q)

    def run(fn, dtype):
        x = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
        out = fn(*x)
        out.backward(grad_out.to(dtype))
        return [out.float(), *(t.grad.float() for t in x)]

    def exact(q, k, v):
        outs, b = [], cu.tolist()
        for a, e in zip(b[:-1], b[1:]):
            if a < e:
                s = [t[a:e].transpose(0, 1) for t in (q, k, v)]
                outs.append(torch.nn.functional.scaled_dot_product_attention(
                    *s, is_causal=True, enable_gqa=True).transpose(0, 1))
        return torch.cat(outs)

    flash = varlen_kernel()
    reference = run(exact, torch.float32)
    ours = run(lambda q, k, v: cudnn_attention.attention(q, k, v, cu, 1024), torch.bfloat16)
    theirs = run(lambda q, k, v: flash(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1),
                                       cu, cu, 1024, 1024, window_size=(-1, 0)), torch.bfloat16)
    for name, r, a, b in zip(("out", "dq", "dk", "dv"), reference, ours, theirs):
        err_ours, err_flash = (r - a).abs().max().item(), (r - b).abs().max().item()
        assert err_ours <= 2 * err_flash + 1e-2, (name, err_ours, err_flash)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_chunked_loss_matches_logits_in_bf16_on_gpu():
    """The compiled chunk kernel in bf16 (what SFT runs on GPUs) against the full-logits CE:
    a Qwen-sized vocabulary, several chunks."""
    torch.manual_seed(0)
    hidden = torch.randn(3000, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    weight = (torch.randn(151936, 256, device="cuda") / 16).to(torch.bfloat16).requires_grad_()
    labels = torch.randint(0, 151936, (3000,), device="cuda")
    reference = F.cross_entropy((hidden @ weight.T).float(), labels, reduction="sum")
    want = torch.autograd.grad(reference, [hidden, weight])
    chunked = LinearCrossEntropy.apply(hidden, weight, labels, 1024)
    got = torch.autograd.grad(chunked, [hidden, weight])
    assert abs(chunked.item() - reference.item()) < 1e-3 * reference.item()
    for g, w in zip(got, want):
        assert F.cosine_similarity(g.float().flatten(), w.float().flatten(), dim=0) > 0.999


def test_truncated_training_checkpoint_names_itself(tok, tmp_path):
    """A corrupt Ray Train checkpoint (here: its model shard file cut in half) fails the
    resume with an error that names the checkpoint, not a bare DCP/pickle traceback."""
    import torch.distributed as dist

    from stagent_ray.train.common import (CheckpointError, adamw, load_train_state,
                                          save_train_state, shard_model)

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        model = shard_model(build_tiny_model(TINY, tok, seed=3), torch.device("cpu"))
        opt = adamw(model, 1e-3, 0.0, torch.device("cpu"))
        save_train_state(str(tmp_path), model, opt, 0, {"step": 3})
        assert load_train_state(str(tmp_path), model, opt, 0)["step"] == 3
        shard = max((tmp_path / "dcp").glob("*.distcp"), key=lambda p: p.stat().st_size)
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
        with pytest.raises(CheckpointError, match=str(tmp_path)):
            load_train_state(str(tmp_path), model, opt, 0)
    finally:
        dist.destroy_process_group()
