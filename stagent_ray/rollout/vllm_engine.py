"""VLLMEngine: the token engine on vLLM, for GPU clusters (`pip install 'stagent-ray[vllm]'`).

Has not run: vLLM needs CUDA and pins its own torch (2.14), so it cannot be installed on the
project's machines and no test or GPU check has started this engine. What was checked is the
code against the source of vLLM 0.33.0 (the PyPI wheel, commit 4ba787ec9): `LLM(...)` and
`EngineArgs`, `LLM.generate`, `vllm.inputs.TokensPrompt`, `SamplingParams`, `CompletionOutput`
and `FinishReason`, `LLM.collective_rpc`, the worker's `reload_weights` and
`LLM.reset_prefix_cache`. tests/test_vllm_engine.py checks our calls against a stand-in with
those signatures, not vLLM itself. What this check changed:
- Weights now load through the worker's own `reload_weights` (named RPC) instead of a function
  sent by `collective_rpc` that called `model.load_weights`. Under the default multiprocess
  engine a function is refused unless VLLM_ALLOW_INSECURE_SERIALIZATION=1, and tensors in
  RPC arguments arrive as plain lists (they are decoded untyped), so the state-dict path could
  not have worked; `reload_weights` also redoes the post-load weight processing (quantized
  layers) that a bare `model.load_weights` skips.
- A finish other than "stop" or "length" ("abort", "error", "repetition") raises instead of
  passing as "length".
- A checkpoint URI (s3://, gs://) is copied to the node before vLLM reads it, as in HFEngine.

Log-probs: vLLM's default (`raw_logprobs`) scores the logits before temperature. We start the
engine with `logprobs_mode="processed_logprobs"`, scored after temperature; vLLM computes them
after top-k/top-p truncation (renormalised over the kept tokens), so they equal our convention
(`engine.py`) only when top_k == 0 and top_p == 1 — the usual RL rollout setting. With
truncation on, have the trainer recompute log-probs rather than trust these.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from stagent_ray.rollout.engine import Generation, SamplingParams, TokenEngine, prompt_seeds


class VLLMEngine(TokenEngine):
    def __init__(self, model_path: str, tokenizer=None, dtype: str = "bfloat16",
                 max_batch_size: int = 256, gpu_memory_utilization: float = 0.85,
                 max_model_len: int | None = None, **llm_kwargs):
        try:
            from vllm import LLM
        except ImportError as exc:
            raise ImportError("VLLMEngine needs vLLM (GPU hosts only): "
                              "pip install 'stagent-ray[vllm]', or use the 'hf' engine") from exc
        # vLLM schedules its own continuous batch; max_batch_size caps its concurrent sequences
        # (max_num_seqs, max_model_len and logprobs_mode reach EngineArgs through **kwargs)
        self.llm = LLM(model=model_path, dtype=dtype, max_num_seqs=max_batch_size,
                       gpu_memory_utilization=gpu_memory_utilization,
                       max_model_len=max_model_len, logprobs_mode="processed_logprobs",
                       **llm_kwargs)
        self.tokenizer = tokenizer if tokenizer is not None else self.llm.get_tokenizer()
        self._weights_dir: str | None = None  # where the last state dict was written

    def generate(self, prompts: list[list[int]], sampling: SamplingParams,
                 seeds: list[int] | None = None) -> list[Generation]:
        from vllm import SamplingParams as VLLMSamplingParams
        from vllm.inputs import TokensPrompt

        seeds = seeds if seeds is not None else prompt_seeds(sampling, len(prompts))
        params = [VLLMSamplingParams(  # one per prompt: each row samples from its own seed
            temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
            max_tokens=sampling.max_new_tokens, stop_token_ids=list(sampling.stop_token_ids),
            # only our stop ids end a turn, as in HFEngine (not the model's own EOS)
            ignore_eos=True, seed=seed, logprobs=0, detokenize=False) for seed in seeds]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts],
                                    params, use_tqdm=False)
        results = []
        for out in outputs:  # same order as the prompts
            completion = out.outputs[0]
            ids = list(completion.token_ids)  # vLLM keeps a matched stop token id in token_ids
            # logprobs=0: one {token id: Logprob} per step, holding the sampled token
            logprobs = [step[t].logprob for t, step in zip(ids, completion.logprobs)]
            reason = completion.finish_reason
            if reason not in ("stop", "length"):  # abort, error, repetition: not a turn's end
                raise RuntimeError(f"vLLM ended a generation with finish_reason={reason!r}")
            results.append(Generation(ids, logprobs, reason))
        return results

    def load_weights(self, path_or_state_dict) -> None:
        """In-place weight update on every worker through vLLM's `reload_weights` (it maps HF
        names onto vLLM's fused layers and redoes post-load processing), then drop the prefix
        cache (its keys and values were computed with the old weights). A state dict is first
        written as safetensors to a local temporary directory: fine for small models on one
        node; large ones want vLLM's weight-transfer engines (NCCL/IPC) from the trainer."""
        if isinstance(path_or_state_dict, (str, os.PathLike)):
            from stagent_ray.runio import local_model_dir

            # vLLM reads a local directory: a URI (s3://, gs://) is copied to this node first
            path, written = local_model_dir(str(path_or_state_dict)), None
        else:
            path = written = self._write_state_dict(path_or_state_dict)
        try:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_path": path})
        except BaseException:
            if written:
                shutil.rmtree(written, ignore_errors=True)
            raise
        # the workers now read further reloads' defaults from `path`: keep the newest copy
        if self._weights_dir and self._weights_dir != written:
            shutil.rmtree(self._weights_dir, ignore_errors=True)
        self._weights_dir = written
        if not self.llm.reset_prefix_cache():
            raise RuntimeError("vLLM could not reset its prefix cache after a weight update")

    @staticmethod
    def _write_state_dict(state_dict) -> str:
        from safetensors.torch import save_file

        tensors, storages = {}, set()
        for name, value in state_dict.items():
            t = value.detach().to("cpu").contiguous()
            ptr = t.untyped_storage().data_ptr()
            tensors[name] = t.clone() if ptr in storages else t  # tied weights: safetensors
            storages.add(ptr)                                     # refuses shared storage
        directory = tempfile.mkdtemp(prefix="stagent-vllm-weights-")
        save_file(tensors, os.path.join(directory, "model.safetensors"))
        return directory
