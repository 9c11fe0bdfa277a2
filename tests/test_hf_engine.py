"""HFEngine: log-probs match a fresh forward pass, greedy matches `model.generate`, stops,
lengths, seeds, top-k, weight swaps; plus a GPU-only check of the compiled (CUDA graph) path."""

import copy

import pytest
import torch

from stagent_ray.config import ModelConfig
from stagent_ray.models.build import build_tiny_model, save_checkpoint
from stagent_ray.models.tokenizer import SYNTAX_LINES, train_tokenizer
from stagent_ray.rollout.engine import SamplingParams
from stagent_ray.rollout.hf_engine import (DECODE_ATTENTION, HFEngine, decode_attention,
                                           row_uniforms, sample_tokens)

SMALL = ModelConfig(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2,
                    num_kv_heads=1)


@pytest.fixture(scope="module")
def tok():
    texts = SYNTAX_LINES + ["Find a quiet cafe near the river, open at 9:00.",
                            "Route from the museum to the station by train, then the weather."] * 5
    return train_tokenizer(texts, vocab_size=500)


def build_model(tok, seed):
    """A tiny Qwen3 with larger random weights: at the default init (std 0.02) greedy decoding
    just repeats the last prompt token, which would make the comparisons below vacuous."""
    model = build_tiny_model(SMALL, tok, seed=seed).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2, generator=g)
    return model


@pytest.fixture(scope="module")
def model(tok):
    return build_model(tok, seed=1)


def random_prompts(tok, n, lo=3, hi=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(lo, hi + 1, (n,), generator=g)
    return [torch.randint(0, len(tok), (int(k),), generator=g).tolist() for k in lengths]


def recomputed_logprobs(model, prompt, generated, temperature):
    """The trainer's view: one float32 forward over prompt + generation."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + generated])).logits[0].float()
    logits = logits[len(prompt) - 1:-1] / (temperature if temperature > 0 else 1.0)
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(generated)[:, None])[:, 0]


def hf_greedy(model, prompt, max_new, eos):
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new,
                         do_sample=False, eos_token_id=eos, pad_token_id=eos)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("stop_check_every", [1, 8])  # 8: the GPU setting, rows overrun stops
def test_logprobs_match_recompute_with_refill_and_padding(tok, model, stop_check_every):
    prompts = random_prompts(tok, 16)  # lengths 3..30: left padding within every prefill
    engine = HFEngine(model, tok, device="cpu", max_batch_size=3)
    engine.stop_check_every = stop_check_every
    # a stop set of ~1/16 of the vocabulary ends rows early and at different steps
    sampling = SamplingParams(temperature=0.8, top_p=0.9, top_k=40, max_new_tokens=16,
                              stop_token_ids=list(range(0, len(tok), 16)), seed=5)
    outs = engine.generate(prompts, sampling)
    stats = engine.last_stats
    # rows were refilled, and the cache ran out of columns and was compacted at least once
    assert stats["prefills"] > 1 and stats["compactions"] >= 1, stats
    assert {o.finish_reason for o in outs} == {"stop", "length"}
    stops = set(sampling.stop_token_ids)
    for prompt, out in zip(prompts, outs):
        assert len(out.logprobs) == len(out.token_ids) >= 1
        assert not stops & set(out.token_ids[:-1])  # a stop id only ever ends a generation
        assert (out.token_ids[-1] in stops) == (out.finish_reason == "stop")
        expected = recomputed_logprobs(model, prompt, out.token_ids, 0.8)
        assert torch.allclose(torch.tensor(out.logprobs), expected, atol=1e-3), (prompt, out)


def test_greedy_equals_model_generate(tok, model):
    prompts = random_prompts(tok, 7, seed=1)
    engine = HFEngine(model, tok, device="cpu", max_batch_size=3)
    eos = tok.eos_token_id
    outs = engine.generate(prompts, SamplingParams(temperature=0, max_new_tokens=16,
                                                   stop_token_ids=[eos]))
    for prompt, out in zip(prompts, outs):
        assert out.token_ids == hf_greedy(model, prompt, 16, eos)
        # greedy is scored at temperature 1
        expected = recomputed_logprobs(model, prompt, out.token_ids, 0)
        assert torch.allclose(torch.tensor(out.logprobs), expected, atol=1e-3)


def test_stop_ids_end_a_row_and_are_included(tok, model):
    prompts = random_prompts(tok, 5, seed=2)
    engine = HFEngine(model, tok, device="cpu", max_batch_size=2)
    free = engine.generate(prompts, SamplingParams(temperature=0, max_new_tokens=12))
    stop = free[0].token_ids[3]
    outs = engine.generate(prompts, SamplingParams(temperature=0, max_new_tokens=12,
                                                   stop_token_ids=[stop]))
    assert outs[0].finish_reason == "stop" and len(outs[0].token_ids) <= 4
    for ref, out in zip(free, outs):
        if stop in ref.token_ids:
            end = ref.token_ids.index(stop) + 1
            assert out.token_ids == ref.token_ids[:end] and out.finish_reason == "stop"
        else:
            assert out.token_ids == ref.token_ids and out.finish_reason == "length"


def test_max_new_tokens_respected(tok, model):
    prompts = random_prompts(tok, 6, seed=3)
    engine = HFEngine(model, tok, device="cpu", max_batch_size=4)
    for max_new in (1, 5):
        outs = engine.generate(prompts, SamplingParams(max_new_tokens=max_new, seed=0))
        assert [len(o.token_ids) for o in outs] == [max_new] * len(prompts)
        assert all(o.finish_reason == "length" for o in outs)
    outs = engine.generate(prompts, SamplingParams(max_new_tokens=0))
    assert all(o.token_ids == [] for o in outs)
    assert engine.generate([], SamplingParams()) == []


def test_seeded_determinism(tok, model):
    prompts = random_prompts(tok, 5, seed=4)
    engine = HFEngine(model, tok, device="cpu", max_batch_size=2)
    sampling = SamplingParams(temperature=1.0, max_new_tokens=10, seed=7,
                              stop_token_ids=list(range(0, len(tok), 16)))
    a, b = engine.generate(prompts, sampling), engine.generate(prompts, sampling)
    assert a == b
    sampling.seed = 8
    c = engine.generate(prompts, sampling)
    assert [o.token_ids for o in a] != [o.token_ids for o in c]


def test_generate_from_several_threads_takes_turns(tok, model):
    """Serve replicas and tests may call one engine from several threads; the engine has
    one KV cache, so the calls must not interleave: each gets what it gets alone."""
    from concurrent.futures import ThreadPoolExecutor

    engine = HFEngine(model, tok, device="cpu", max_batch_size=3)
    jobs = [(random_prompts(tok, 5, seed=s), SamplingParams(temperature=1.0, max_new_tokens=12,
                                                            seed=s)) for s in range(4)]
    alone = [engine.generate(p, sp) for p, sp in jobs]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda job: engine.generate(*job), jobs))
    assert together == alone


def test_top_k_1_and_tiny_top_p_equal_greedy(tok, model):
    prompts = random_prompts(tok, 5, seed=5)
    engine = HFEngine(model, tok, device="cpu", max_batch_size=3)
    greedy = engine.generate(prompts, SamplingParams(temperature=0, max_new_tokens=10))
    for sampling in (SamplingParams(temperature=0.7, top_k=1, max_new_tokens=10, seed=1),
                     SamplingParams(temperature=1.3, top_p=1e-6, max_new_tokens=10, seed=2)):
        outs = engine.generate(prompts, sampling)
        assert [o.token_ids for o in outs] == [o.token_ids for o in greedy]


def test_decode_attention_groups_query_heads_like_repeated_kv(tok, model):
    """One-token queries: grouped matmuls give SDPA's answer with k/v repeated per query head
    (6 query heads on 2 k/v heads, so a wrong grouping order shows), masked columns ignored."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, 6, 1, 8, generator=g)
    k, v = torch.randn(3, 2, 11, 8, generator=g), torch.randn(3, 2, 11, 8, generator=g)
    mask = torch.zeros(3, 1, 1, 11)
    mask[0, ..., :4] = mask[2, ..., 7:] = torch.finfo(torch.float32).min
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal, module.training = 3, True, False
    ours, _ = decode_attention(module, q, k, v, mask, scaling=0.3)
    expected, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=0.3)
    assert ours.shape == expected.shape == (3, 1, 6, 8)
    assert torch.allclose(ours, expected, atol=1e-6)
    changed = v.clone()
    changed[0, :, :4] = 100.0  # columns row 0 must not see
    assert torch.allclose(decode_attention(module, q, k, changed, mask, scaling=0.3)[0], ours)
    engine = HFEngine(copy.deepcopy(model), tok, device="cpu")
    assert engine.model.config._attn_implementation == DECODE_ATTENTION


def test_sampler_draws_from_the_truncated_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0]]).repeat(40000, 1)
    uniforms = row_uniforms(torch.arange(40000) * 7919 + 3, torch.full((40000,), 5))
    assert 0 < uniforms.min() and uniforms.max() < 1
    # uniform enough: each tenth of (0, 1) gets its share
    assert torch.allclose(torch.histc(uniforms, 10, 0, 1) / 40000, torch.full((10,), 0.1),
                          atol=0.01)
    cases = [(SamplingParams(temperature=0.7), None),
             (SamplingParams(temperature=1.0, top_k=2), 2),
             (SamplingParams(temperature=1.0, top_p=0.8), 3)]  # top 3 hold 0.56, 0.21, 0.13
    for sampling, kept in cases:
        tokens, logprobs = sample_tokens(logits, sampling, uniforms)
        full = torch.log_softmax(logits[0] / sampling.temperature, -1)
        assert torch.allclose(logprobs, full[tokens])  # scored before truncation
        target = full.exp()
        if kept:
            target[kept:] = 0
            target /= target.sum()
        freq = torch.bincount(tokens, minlength=5) / len(tokens)
        assert torch.allclose(freq, target, atol=0.01), (sampling, freq, target)


def test_a_row_samples_the_same_whatever_it_is_batched_with(tok, model):
    """Each prompt's draws depend on its own seed only: not on batch size, refill order, or
    the other prompts of the call (what lets an episode replay the same in any batch)."""
    prompts = random_prompts(tok, 7, seed=8)
    seeds = [11, 12, 13, 14, 15, 16, 17]
    sampling = SamplingParams(temperature=1.0, max_new_tokens=12,
                              stop_token_ids=list(range(0, len(tok), 16)))
    alone = [HFEngine(model, tok, device="cpu", max_batch_size=1).generate([p], sampling, [s])[0]
             for p, s in zip(prompts, seeds)]
    together = HFEngine(model, tok, device="cpu", max_batch_size=3).generate(prompts, sampling,
                                                                             seeds)
    reordered = HFEngine(model, tok, device="cpu", max_batch_size=4).generate(
        prompts[::-1], sampling, seeds[::-1])[::-1]
    for a, b, c in zip(alone, together, reordered):
        assert a.token_ids == b.token_ids == c.token_ids
        assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-4)
    other = HFEngine(model, tok, device="cpu", max_batch_size=3).generate(
        prompts, sampling, [s + 100 for s in seeds])
    assert [o.token_ids for o in other] != [o.token_ids for o in together]


def test_equal_prompts_prefilled_once_sample_as_if_alone(tok, model):
    """The n rollouts of a query start from one prompt: it is prefilled once and the other
    rows get copies of its keys and values. Each row must still sample what it samples
    alone, with log-probs the trainer's forward recomputes (a bad copy breaks both)."""
    p, q = random_prompts(tok, 2, lo=8, hi=20, seed=9)
    prompts, seeds = [p, q, p, p, q], [21, 22, 23, 24, 25]
    sampling = SamplingParams(temperature=1.0, max_new_tokens=12,
                              stop_token_ids=list(range(0, len(tok), 16)))
    engine = HFEngine(model, tok, device="cpu", max_batch_size=5)
    together = engine.generate(prompts, sampling, seeds)
    assert engine.last_stats["prompts_copied"] == 3
    assert engine.last_stats["prefills"] == 1
    alone = [HFEngine(model, tok, device="cpu", max_batch_size=1).generate([x], sampling, [s])[0]
             for x, s in zip(prompts, seeds)]
    for prompt, a, b in zip(prompts, alone, together):
        assert a.token_ids == b.token_ids
        expected = recomputed_logprobs(model, prompt, b.token_ids, 1.0)
        assert torch.allclose(torch.tensor(b.logprobs), expected, atol=1e-3)
    assert len({tuple(o.token_ids) for o in together}) > 2  # the seeds, not the copy, decide


def test_stream_takes_requests_as_they_come(tok, model):
    """HFEngine.stream: requests sent at different times, from concurrent coroutines, join
    the running batch; each gets what a plain generate call gives it."""
    import asyncio

    prompts = random_prompts(tok, 9, seed=9)
    sampling = SamplingParams(temperature=1.0, max_new_tokens=10,
                              stop_token_ids=list(range(0, len(tok), 16)))
    engine = HFEngine(model, tok, device="cpu", max_batch_size=3)
    expected = engine.generate(prompts, sampling, list(range(9)))

    async def main(reproducible, delay):
        async with engine.stream(sampling, 30, 9, reproducible) as stream:
            async def one(i):
                await asyncio.sleep(delay(i))  # arrive while others decode
                out = await stream.generate(prompts[i], i, i)
                stream.finish(i)
                return out
            outs = await asyncio.gather(*[one(i) for i in range(9)])
            with pytest.raises(ValueError):
                await stream.generate(list(range(31)), 0, 0)
            return outs

    runs = {}
    for reproducible in (False, True):
        for name, delay in (("early", lambda i: 0.01 * (i % 4)),
                            ("late", lambda i: 0.03 - 0.01 * (i % 4))):
            runs[reproducible, name] = outs = asyncio.run(main(reproducible, delay))
            assert engine.last_stats["prefills"] > 1
            for a, b in zip(outs, expected):
                assert a.token_ids == b.token_ids
                assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs),
                                      atol=1e-4)
    # reproducible: other arrival times, the same batches, the same floats to the last bit
    assert runs[True, "early"] == runs[True, "late"]


def test_load_weights_from_checkpoint_and_state_dict(tmp_path, tok, model):
    prompts = random_prompts(tok, 4, seed=6)
    greedy = SamplingParams(temperature=0, max_new_tokens=10)
    other = build_model(tok, seed=2)
    save_checkpoint(other, tok, str(tmp_path / "other"))
    expected_other = HFEngine(str(tmp_path / "other"), device="cpu").generate(prompts, greedy)

    engine = HFEngine(copy.deepcopy(model), tok, device="cpu", max_batch_size=2)
    before = engine.generate(prompts, greedy)
    assert [o.token_ids for o in before] != [o.token_ids for o in expected_other]
    engine.load_weights(str(tmp_path / "other"))
    after = engine.generate(prompts, greedy)
    # same tokens; log-probs agree up to float noise (the batches were padded differently)
    assert [o.token_ids for o in after] == [o.token_ids for o in expected_other]
    for a, b in zip(after, expected_other):
        assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-4)
    engine.load_weights(model.state_dict())
    assert engine.generate(prompts, greedy) == before
    with pytest.raises(ValueError):
        engine.load_weights({"not.a.weight": torch.zeros(1)})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compiled_cuda_path_matches_reference(tok, model):
    gpu_model = copy.deepcopy(model).cuda()
    engine = HFEngine(gpu_model, tok, device="cuda", max_batch_size=4)
    assert engine.compile
    prompts = random_prompts(tok, 10, seed=7)
    eos = tok.eos_token_id
    greedy = engine.generate(prompts, SamplingParams(temperature=0, max_new_tokens=16,
                                                     stop_token_ids=[eos]))
    for prompt, out in zip(prompts, greedy):
        assert out.token_ids == hf_greedy(gpu_model, prompt, 16, eos)
    sampling = SamplingParams(temperature=0.9, top_p=0.95, max_new_tokens=16, seed=3,
                              stop_token_ids=list(range(0, len(tok), 8)))
    for _ in range(2):  # the second call replays the captured graph
        outs = engine.generate(prompts, sampling)
        assert engine.last_stats["prefills"] > 1
        for prompt, out in zip(prompts, outs):
            expected = recomputed_logprobs(model, prompt, out.token_ids, 0.9)
            assert torch.allclose(torch.tensor(out.logprobs), expected, atol=1e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_eager_cuda_bf16_path_matches_recompute(tok, model):
    """The eager decode on CUDA in bf16 (what rollouts use when policy.compile is off): its
    attention window is a slice of the mask, which must stay aligned for the CUDA kernels."""
    gpu_model = copy.deepcopy(model).to("cuda", torch.bfloat16)
    engine = HFEngine(gpu_model, tok, device="cuda", max_batch_size=3, compile=False)
    prompts = random_prompts(tok, 12, seed=11)  # odd lengths, refills, window offsets
    prompts = [p for p in prompts[:3] for _ in (0, 1)] + prompts[3:]  # equal: k/v copied on GPU
    sampling = SamplingParams(temperature=1.0, max_new_tokens=24, seed=5,
                              stop_token_ids=list(range(0, len(tok), 16)))
    outs = engine.generate(prompts, sampling)
    assert engine.last_stats["prefills"] > 1
    assert engine.last_stats["prompts_copied"] >= 1
    for prompt, out in zip(prompts, outs):
        with torch.no_grad():
            logits = gpu_model(torch.tensor([prompt + out.token_ids], device="cuda")).logits[0]
        logits = logits[len(prompt) - 1:-1].float()
        expected = torch.log_softmax(logits, -1).gather(
            -1, torch.tensor(out.token_ids, device="cuda")[:, None])[:, 0].cpu()
        assert torch.allclose(torch.tensor(out.logprobs), expected, atol=0.1, rtol=0.05)  # bf16 kernels
