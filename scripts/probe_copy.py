"""Can a checkpoint learn to copy place names it never saw into a tool call? (CPU, no Ray)

    python scripts/probe_copy.py --checkpoint runs/bench_cascade_cpu/seed0/ckpt/base
    python scripts/probe_copy.py --checkpoint ... --pretrain-steps 1000   # LM first, in process

The cascade's students verify 0.00 on `place_hours` (README): asked about "Coral Dim Sum" they
search for a place they were taught. This isolates that skill: optionally `--pretrain-steps`
of next-token training on single place documents (models/lm_corpus.place_document: a made-up
name in prose and in JSON, batches of 32, constant lr 2e-3), then `--sft-steps` on 50 fixed
question -> tool-call examples (the SFT-0 regime: few examples, many steps), then greedy
decoding on 48 questions about other made-up places. Prints ONE JSON line: the share of them
whose tool call carries the exact name, after every 50 SFT steps. Names are made of the
world's name words, so every token was seen; only the combinations are new.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from stagent_ray.models.lm_corpus import made_up_place, place_document  # noqa: E402
from stagent_ray.world.generate import CITY_NAMES  # noqa: E402


def question(rng: random.Random) -> tuple[str, str, str]:
    name, _ = made_up_place(rng)
    city = rng.choice(CITY_NAMES)
    text = rng.choice([f"When is {name} in {city} open today?",
                       f"What are today's opening hours for {name} ({city})?"])
    call = json.dumps({"name": "map_search_places", "arguments": {"query": name, "region": city}})
    return text, call, name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--pretrain-steps", type=int, default=0)
    ap.add_argument("--sft-steps", type=int, default=150)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(args.checkpoint)
    model = AutoModelForCausalLM.from_pretrained(args.checkpoint, dtype=torch.float32)
    rng, t0 = random.Random(0), time.time()

    def step(opt, rows: list[tuple[list[int], list[int]]]) -> float:
        width = max(len(ids) for ids, _ in rows)
        x = torch.tensor([ids + [tok.pad_token_id] * (width - len(ids)) for ids, _ in rows])
        y = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in rows])
        loss = model(input_ids=x, labels=y).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        return float(loss)

    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for _ in range(args.pretrain_steps):
        docs = [tok(place_document(rng)).input_ids + [tok.eos_token_id] for _ in range(32)]
        step(opt, [(ids, ids) for ids in docs])

    def example(text: str, call: str) -> tuple[list[int], list[int]]:
        prompt, answer = tok(text + "\n").input_ids, tok(call).input_ids + [tok.eos_token_id]
        return prompt + answer, [-100] * len(prompt) + answer

    @torch.no_grad()
    def copy_rate(n: int = 48) -> float:
        probe, hits = random.Random(123), 0
        model.eval()
        for _ in range(n):
            text, _, name = question(probe)
            x = torch.tensor([tok(text + "\n").input_ids])
            out = model.generate(x, max_new_tokens=40, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
            hits += f'"query": "{name}"' in tok.decode(out[0, x.shape[1]:],
                                                       skip_special_tokens=True)
        model.train()
        return hits / n

    train = [example(*question(random.Random(1000 + i))[:2]) for i in range(50)]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    curve = []
    for s in range(1, args.sft_steps + 1):
        loss = step(opt, rng.choices(train, k=32))
        if s % 50 == 0:
            curve.append({"sft_step": s, "loss": round(loss, 4), "copy_rate": copy_rate()})
    print(json.dumps({"bench": "probe_copy", "checkpoint": args.checkpoint,
                      "pretrain_steps": args.pretrain_steps, "curve": curve,
                      "seconds": round(time.time() - t0, 1)}))


if __name__ == "__main__":
    main()
