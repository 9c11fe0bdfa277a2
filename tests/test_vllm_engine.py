"""VLLMEngine against a stand-in `vllm` module (no vLLM, no GPU, no Ray).

This checks our calls against the signatures of vLLM 0.33.0 (read from its wheel, commit
4ba787ec9), not vLLM itself: the stand-in keeps the argument names, defaults and checks we rely
on, and models two things of the default multiprocess engine that broke the first version:
`collective_rpc` refuses a function unless VLLM_ALLOW_INSECURE_SERIALIZATION=1, and tensors in
its arguments arrive as plain lists (utility arguments are decoded untyped).
"""

from __future__ import annotations

import dataclasses
import glob
import os
import sys
import tempfile
import types
from typing import TypedDict

import pytest
import torch

from stagent_ray.rollout.engine import Generation, SamplingParams, prompt_seeds

# EngineArgs fields that LLM(**kwargs) may receive (a subset of vLLM 0.33's; an unknown
# keyword fails in EngineArgs(...) there, as here)
ENGINE_ARGS = {"max_num_seqs", "max_model_len", "logprobs_mode", "max_logprobs",
               "enable_prefix_caching", "enable_sleep_mode", "distributed_executor_backend",
               "worker_extension_cls", "weight_transfer_config", "disable_log_stats"}
LOGPROBS_MODES = {"raw_logits", "raw_logprobs", "processed_logits", "processed_logprobs"}
FINISH_REASONS = ("stop", "length", "abort", "error", "repetition")  # str(FinishReason)


class FakeTokensPrompt(TypedDict, total=False):  # vllm.inputs.TokensPrompt
    prompt_token_ids: list[int]
    prompt: str


@dataclasses.dataclass
class FakeSamplingParams:  # the vllm.SamplingParams fields we use, with 0.33's defaults
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    stop: list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    max_tokens: int | None = 16
    min_tokens: int = 0
    logprobs: int | None = None
    detokenize: bool = True
    skip_special_tokens: bool = True

    def __post_init__(self):
        assert self.top_k >= -1 and isinstance(self.top_k, int)  # 0 (or -1): off
        assert 0 < self.top_p <= 1 and self.temperature >= 0
        assert self.logprobs is None or self.logprobs >= -1
        assert all(isinstance(t, int) for t in self.stop_token_ids or [])
        assert self.seed is None or -2**63 <= self.seed < 2**63  # int64 in the sampler


@dataclasses.dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclasses.dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclasses.dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool = True


def _untyped(value):
    """What a utility argument becomes after msgpack's untyped decode: tensors turn into
    [dtype, shape, data] lists."""
    if isinstance(value, torch.Tensor):
        return [str(value.dtype).removeprefix("torch."), list(value.shape), 0]
    if isinstance(value, (list, tuple)):
        return [_untyped(v) for v in value]
    if isinstance(value, dict):
        return {k: _untyped(v) for k, v in value.items()}
    return value


def logprob_of(token: int, step: int) -> float:
    return -0.01 * token - 0.1 * step


class FakeLLM:
    """vllm.LLM: records what the engine asks for. `replies[tuple(prompt)]` scripts the ids and
    finish reason a prompt gets; its log-probs are `logprob_of(token, step)`, and each step's
    dict also holds a runner-up token (as with logprobs >= 1), so only the sampled token's
    entry gives the right number."""

    last: FakeLLM | None = None

    def __init__(self, model: str, *, tokenizer: str | None = None, dtype: str = "auto",
                 seed: int = 0, gpu_memory_utilization: float = 0.92,
                 enforce_eager: bool = False, **kwargs):
        unknown = set(kwargs) - ENGINE_ARGS
        if unknown:
            raise TypeError(f"EngineArgs got unexpected keyword(s) {sorted(unknown)}")
        assert kwargs.get("logprobs_mode", "raw_logprobs") in LOGPROBS_MODES
        self.init = dict(model=model, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
                         **kwargs)
        self.replies: dict[tuple, tuple[list[int], str]] = {}
        self.calls: list[tuple] = []
        self.loaded: dict[str, torch.Tensor] = {}
        FakeLLM.last = self

    def get_tokenizer(self):
        return "vllm-tokenizer"

    def generate(self, prompts, sampling_params=None, *, use_tqdm=True, lora_request=None,
                 priority=None, tokenization_kwargs=None, mm_processor_kwargs=None):
        assert isinstance(sampling_params, list) and len(sampling_params) == len(prompts)
        self.calls.append(("generate", prompts, sampling_params, use_tqdm))
        outs = []
        for i, (prompt, sp) in enumerate(zip(prompts, sampling_params)):
            assert set(prompt) == {"prompt_token_ids"}
            ids, reason = self.replies[tuple(prompt["prompt_token_ids"])]
            steps = [{t: Logprob(logprob_of(t, k), rank=2), t + 1: Logprob(-0.001, rank=1)}
                     for k, t in enumerate(ids)]
            outs.append(RequestOutput(str(i), prompt["prompt_token_ids"], [CompletionOutput(
                0, "", list(ids), None, steps if sp.logprobs is not None else None, reason)]))
        return outs

    def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
        if callable(method) and not os.environ.get("VLLM_ALLOW_INSECURE_SERIALIZATION"):
            raise TypeError(f"Object of type {type(method)} is not serializable")
        args, kwargs = _untyped(args), _untyped(kwargs or {})
        self.calls.append(("collective_rpc", method, args, kwargs))
        assert method == "reload_weights"  # Worker.reload_weights(weights_iterator=None,
        assert set(kwargs) <= {"weights_iterator", "weights_path", "is_checkpoint_format"}
        from safetensors.torch import load_file  # weights_path: vLLM's loader reads it

        files = glob.glob(os.path.join(kwargs["weights_path"], "*.safetensors"))
        assert files, f"no *.safetensors in {kwargs['weights_path']}"
        self.loaded = {k: v for f in files for k, v in load_file(f).items()}
        return [None]

    def reset_prefix_cache(self, reset_running_requests: bool = False,
                           reset_connector: bool = False) -> bool:
        self.calls.append(("reset_prefix_cache",))
        return True


@pytest.fixture
def fake_vllm(monkeypatch):
    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams, vllm.TokensPrompt = FakeLLM, FakeSamplingParams, FakeTokensPrompt
    inputs = types.ModuleType("vllm.inputs")
    inputs.TokensPrompt = FakeTokensPrompt
    vllm.inputs = inputs
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.inputs", inputs)
    monkeypatch.delenv("VLLM_ALLOW_INSECURE_SERIALIZATION", raising=False)
    return vllm


def make_engine(**kw):
    from stagent_ray.rollout.vllm_engine import VLLMEngine

    return VLLMEngine("/ckpt/base", max_batch_size=32, **kw), FakeLLM.last


def test_llm_arguments(fake_vllm):
    engine, llm = make_engine(max_model_len=4096, enforce_eager=True)
    assert llm.init == dict(model="/ckpt/base", dtype="bfloat16", gpu_memory_utilization=0.85,
                            max_num_seqs=32, max_model_len=4096,
                            logprobs_mode="processed_logprobs")
    assert engine.tokenizer == "vllm-tokenizer"
    with pytest.raises(TypeError, match="unexpected"):
        make_engine(max_batch_tokens=1)  # a stale keyword fails as in EngineArgs

    from stagent_ray.rollout.engines import make_token_engine  # the config path

    make_token_engine("vllm", "/ckpt/base", dtype="bfloat16", max_batch_size=8)
    assert FakeLLM.last.init["max_num_seqs"] == 8 and FakeLLM.last.init["dtype"] == "bfloat16"


def test_generate_maps_requests_and_outputs(fake_vllm):
    engine, llm = make_engine()
    prompts = [[1, 2, 3], [4, 5], [6]]
    llm.replies = {(1, 2, 3): ([20, 21, 7], "stop"), (4, 5): ([30, 31, 32, 33], "length"),
                   (6,): ([7], "stop")}
    sampling = SamplingParams(temperature=0.7, top_p=1.0, top_k=0, max_new_tokens=4,
                              stop_token_ids=[7, 9])
    gens = engine.generate(prompts, sampling, seeds=[11, 12, 13])

    _, sent, params, use_tqdm = llm.calls[-1]
    assert sent == [{"prompt_token_ids": p} for p in prompts] and use_tqdm is False
    assert [p.seed for p in params] == [11, 12, 13]  # one seed per prompt, in prompt order
    for p in params:
        assert (p.temperature, p.top_p, p.top_k, p.max_tokens) == (0.7, 1.0, 0, 4)
        assert p.stop_token_ids == [7, 9] and p.ignore_eos and not p.detokenize
        assert p.logprobs == 0  # the sampled token's log-prob only
    assert params[0] is not params[1]

    for gen, p in zip(gens, prompts):
        ids, reason = llm.replies[tuple(p)]
        assert gen == Generation(ids, [logprob_of(t, k) for k, t in enumerate(ids)], reason)
    assert gens[0].token_ids[-1] == 7  # the stop id stays in the turn

    engine.generate(prompts[:2], SamplingParams(seed=5, stop_token_ids=[7]))
    assert [p.seed for p in llm.calls[-1][2]] == prompt_seeds(SamplingParams(seed=5), 2)


def test_generate_rejects_aborted_requests(fake_vllm):
    engine, llm = make_engine()
    llm.replies = {(1,): ([5], "abort")}
    with pytest.raises(RuntimeError, match="abort"):
        engine.generate([[1]], SamplingParams(), seeds=[0])


def test_load_weights(fake_vllm, tmp_path, monkeypatch):
    engine, llm = make_engine()
    emb = torch.randn(6, 4)
    state = {"model.embed_tokens.weight": emb, "lm_head.weight": emb,  # tied: one storage
             "model.norm.weight": torch.ones(4, requires_grad=True)}
    engine.load_weights(state)
    kinds = [c[0] for c in llm.calls]
    assert kinds == ["collective_rpc", "reset_prefix_cache"]
    _, method, args, kwargs = llm.calls[0]
    assert method == "reload_weights" and args == [] and set(kwargs) == {"weights_path"}
    assert set(llm.loaded) == set(state)
    for name, value in state.items():
        assert torch.equal(llm.loaded[name], value.detach())
    first_dir = kwargs["weights_path"]
    assert os.path.isdir(first_dir)  # the workers' model path now: kept until the next load

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    from safetensors.torch import save_file

    save_file({"model.norm.weight": torch.zeros(4)}, str(ckpt / "model.safetensors"))
    engine.load_weights(ckpt)  # a checkpoint directory goes as it is
    assert llm.calls[-2][3] == {"weights_path": str(ckpt)}
    assert llm.calls[-1] == ("reset_prefix_cache",)
    assert torch.equal(llm.loaded["model.norm.weight"], torch.zeros(4))
    assert not os.path.exists(first_dir)

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where local_model_dir copies
    engine.load_weights(f"file://{ckpt}")  # a URI: vLLM is given a local copy
    local = llm.calls[-2][3]["weights_path"]
    assert "://" not in local and os.path.isfile(os.path.join(local, "model.safetensors"))
