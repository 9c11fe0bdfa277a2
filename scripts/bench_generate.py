"""Benchmark HFEngine against plain `model.generate` in the same run; prints one JSON line.

    python scripts/bench_generate.py              # tiny model, CPU, batch 8, 128 new tokens
    python scripts/bench_generate.py --model qwen3-0.6b-shape --device cuda --batch 64 \
        --new-tokens 256 --prompt-len 512
    python scripts/bench_generate.py --model cascade-gpu --device cuda --batch 256 \
        --new-tokens 160 --prompt-len 2048 --mode static --compile off   # the GPU cascade's rollouts

Two modes, same prompts and sampling (temperature 1, no top-k/top-p) for both engines:
- static: one batch of `--batch` prompts, no stop ids, exactly `--new-tokens` each (raw speed).
- refill: 8 × batch prompts and stop ids drawn so lengths vary (random weights give a near-uniform
  next-token distribution, so a stop set of vocab/40 ids ends a row after ~40 tokens on average).
  `model.generate` runs the prompts in batches of `--batch` and each batch lasts as long as its
  longest row; HFEngine refills finished rows. Useful tokens (up to and including the stop) count.
- attention: one static batch through the engine twice, with its decode attention (query heads
  grouped onto their k/v head) and with transformers' SDPA (k/v repeated per query head).
Models use random weights: speed does not depend on what they say.
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from stagent_ray.config import ModelConfig, load_config
from stagent_ray.models.build import tiny_model_config
from stagent_ray.rollout.engine import SamplingParams
from stagent_ray.rollout.hf_engine import HFEngine


def build_model(name: str, device: str):
    torch.manual_seed(0)
    if name in ("tiny", "cascade-gpu"):
        shape = ModelConfig()
        if name == "cascade-gpu":  # the 53M model of configs/cascade_gpu.yaml, bf16 on GPUs
            shape = load_config("configs/cascade_gpu.yaml").model
        config = tiny_model_config(shape, vocab_size=4096, eos_id=1, pad_id=0)
        dtype = torch.bfloat16 if name == "cascade-gpu" and device == "cuda" else torch.float32
    else:  # the Qwen3-0.6B shape (508 M parameters with tied embeddings)
        config = Qwen3Config(vocab_size=151936, hidden_size=1024, intermediate_size=3072,
                             num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                             head_dim=128, max_position_embeddings=40960, tie_word_embeddings=True,
                             rope_theta=1000000.0, eos_token_id=1, pad_token_id=0)
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = Qwen3ForCausalLM(config).to(device=device, dtype=dtype).eval()
    model.generation_config.eos_token_id = None  # generate must not stop early unless told
    model.generation_config.pad_token_id = 0
    return model


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def run_generate(model, prompts, batch, new_tokens, stop_ids, device):
    """Plain HF generate over `prompts` in batches; returns (seconds, useful tokens, steps)."""
    useful = steps = 0
    sync(device)
    t0 = time.perf_counter()
    for i in range(0, len(prompts), batch):
        chunk = prompts[i:i + batch]
        width = max(map(len, chunk))
        ids = torch.tensor([[0] * (width - len(p)) + p for p in chunk], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device)
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=mask, do_sample=True, temperature=1.0,
                                 top_k=0, top_p=1.0, max_new_tokens=new_tokens,
                                 eos_token_id=stop_ids or None, pad_token_id=0)
        new = out[:, width:].tolist()
        steps += len(new[0])
        for row in new:
            end = next((j + 1 for j, t in enumerate(row) if t in stop_ids), len(row))
            useful += end
    sync(device)
    return time.perf_counter() - t0, useful, steps


def run_engine(engine, prompts, new_tokens, stop_ids, device, seed=0):
    sampling = SamplingParams(temperature=1.0, max_new_tokens=new_tokens,
                              stop_token_ids=stop_ids, seed=seed)
    sync(device)
    t0 = time.perf_counter()
    outs = engine.generate(prompts, sampling)
    sync(device)
    seconds = time.perf_counter() - t0
    stats = engine.last_stats
    return seconds, sum(len(o.token_ids) for o in outs), stats["decode_steps"] + stats["prefills"]


def compare(model, engine, prompts, batch, new_tokens, stop_ids, device, repeats):
    """Best of `repeats` alternating runs for each (other processes may share the machine)."""
    gen_runs, eng_runs = [], []
    for seed in range(repeats):
        gen_runs.append(run_generate(model, prompts, batch, new_tokens, stop_ids, device))
        eng_runs.append(run_engine(engine, prompts, new_tokens, stop_ids, device, seed))
    gen_s, gen_tokens, gen_steps = max(gen_runs, key=lambda r: r[1] / r[0])
    eng_s, eng_tokens, eng_steps = max(eng_runs, key=lambda r: r[1] / r[0])
    result = {
        "prompts": len(prompts),
        "generate": {"seconds": round(gen_s, 3), "tokens": gen_tokens, "steps": gen_steps,
                     "tokens_per_s": round(gen_tokens / gen_s, 1),
                     "steps_per_s": round(gen_steps / gen_s, 2)},
        "engine": {"seconds": round(eng_s, 3), "tokens": eng_tokens, "steps": eng_steps,
                   "tokens_per_s": round(eng_tokens / eng_s, 1),
                   "steps_per_s": round(eng_steps / eng_s, 2)},
    }
    result["tokens_per_s_ratio"] = round(result["engine"]["tokens_per_s"]
                                         / result["generate"]["tokens_per_s"], 2)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["tiny", "qwen3-0.6b-shape", "cascade-gpu"],
                        default="tiny")
    parser.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                        help="the engine's CUDA-graph decode (auto: on for CUDA)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-len", type=int, default=48, help="prompts get 1/2x..1x this")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    parser.add_argument("--mode", choices=["both", "static", "refill", "attention"],
                        default="both")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1, as in Ray workers; 0: torch's default)")
    parser.add_argument("--repeats", type=int, default=3, help="report the best of this many runs")
    args = parser.parse_args()
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.threads:
        torch.set_num_threads(args.threads)

    model = build_model(args.model, device)
    vocab = model.config.vocab_size
    # a copy: the engine switches its model to its own decode attention, the baseline keeps SDPA
    engine = HFEngine(copy.deepcopy(model), device=device, max_batch_size=args.batch,
                      compile={"auto": None, "on": True, "off": False}[args.compile])
    g = torch.Generator().manual_seed(0)

    def make_prompts(k):
        lengths = torch.randint(args.prompt_len // 2, args.prompt_len + 1, (k,), generator=g)
        return [torch.randint(2, vocab, (int(n),), generator=g).tolist() for n in lengths]

    # Warm-up with the measured shapes (on CUDA this compiles the decode graph).
    warm = make_prompts(args.batch)
    run_generate(model, warm, args.batch, 8, [], device)
    run_engine(engine, warm, args.new_tokens, [], device)

    report = {"model": args.model, "device": device, "batch": args.batch,
              "new_tokens": args.new_tokens, "threads": torch.get_num_threads(),
              "engine_compiled": engine.compile}
    if torch.cuda.is_available() and device == "cuda":
        report["gpu"] = torch.cuda.get_device_name()
    if args.mode in ("both", "static"):
        report["static"] = compare(model, engine, make_prompts(args.batch), args.batch,
                                   args.new_tokens, [], device, args.repeats)
    if args.mode in ("both", "refill"):
        stop_ids = list(range(2, 2 + vocab // 40))
        report["refill"] = compare(model, engine, make_prompts(8 * args.batch), args.batch,
                                   args.new_tokens, stop_ids, device, args.repeats)
    if args.mode == "attention":
        sdpa_engine = HFEngine(copy.deepcopy(model), device=device, max_batch_size=args.batch,
                               compile=engine.compile)
        sdpa_engine.model.set_attn_implementation("sdpa")
        run_engine(sdpa_engine, warm, args.new_tokens, [], device)
        prompts = make_prompts(args.batch)
        runs = {"sdpa_repeat_kv": [], "grouped": []}
        for seed in range(args.repeats):  # alternating, best of each
            runs["sdpa_repeat_kv"].append(run_engine(sdpa_engine, prompts, args.new_tokens, [],
                                                     device, seed))
            runs["grouped"].append(run_engine(engine, prompts, args.new_tokens, [], device, seed))
        best = {k: min(v, key=lambda r: r[0]) for k, v in runs.items()}  # (s, tokens, steps)
        report["attention"] = {**{k: {"seconds": round(s, 3), "steps_per_s": round(steps / s, 2)}
                                  for k, (s, _, steps) in best.items()},
                               "prompt_len": args.prompt_len, "speedup": round(
                                   best["sdpa_repeat_kv"][0] / best["grouped"][0], 2)}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
