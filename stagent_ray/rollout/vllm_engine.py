"""VLLMEngine: the token engine on vLLM, for GPU clusters (`pip install 'stagent-ray[vllm]'`).

Untested here: vLLM needs CUDA and pins its own torch, so neither CI nor the project's GPU test
machine can install it. The code follows vLLM 0.33's offline API (`LLM.generate` with
`TokensPrompt`, `LLM.collective_rpc`); check it on a GPU host before relying on it.

Log-probs: vLLM's default (`raw_logprobs`) scores the logits before temperature. We start the
engine with `logprobs_mode="processed_logprobs"`, scored after temperature; vLLM computes them
after top-k/top-p truncation (renormalised over the kept tokens), so they equal our convention
(`engine.py`) only when top_k == 0 and top_p == 1 — the usual RL rollout setting. With
truncation on, have the trainer recompute log-probs rather than trust these.
"""

from __future__ import annotations

import os

from stagent_ray.rollout.engine import Generation, SamplingParams, TokenEngine, prompt_seeds


def _load_into_worker(worker, weights):
    """Runs inside every vLLM worker (sent by `collective_rpc`): in-place weight load through the
    model's own `load_weights`, which maps HF names onto vLLM's fused layers (qkv, gate_up).
    `weights` is a list of (name, tensor), or a checkpoint directory read here."""
    if isinstance(weights, str):
        import glob

        from safetensors.torch import load_file
        files = sorted(glob.glob(os.path.join(weights, "*.safetensors")))
        if not files:
            raise FileNotFoundError(f"no *.safetensors in {weights}")
        weights = [item for f in files for item in load_file(f).items()]
    worker.model_runner.model.load_weights(weights=weights)


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
        self.llm = LLM(model=model_path, dtype=dtype, max_num_seqs=max_batch_size,
                       gpu_memory_utilization=gpu_memory_utilization,
                       max_model_len=max_model_len, logprobs_mode="processed_logprobs",
                       **llm_kwargs)
        self.tokenizer = tokenizer if tokenizer is not None else self.llm.get_tokenizer()

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
            logprobs = [step[t].logprob for t, step in zip(ids, completion.logprobs)]
            reason = "stop" if completion.finish_reason == "stop" else "length"
            results.append(Generation(ids, logprobs, reason))
        return results

    def load_weights(self, path_or_state_dict) -> None:
        """In-place weight update on every worker, then drop the prefix cache (its keys and
        values were computed with the old weights). A state dict travels by pickle to the
        workers: fine for small models; large ones want a NCCL broadcast from the trainer."""
        if isinstance(path_or_state_dict, (str, os.PathLike)):
            weights = str(path_or_state_dict)
        else:
            weights = [(k, v.detach().cpu()) for k, v in path_or_state_dict.items()]
        self.llm.collective_rpc(_load_into_worker, args=(weights,))
        self.llm.reset_prefix_cache()
