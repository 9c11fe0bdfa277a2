#!/usr/bin/env bash
# The GPU checks, in one go (for the device machine: torch + transformers, no Ray needed):
# the tests marked `gpu`, bench_sft.py's variants, the attention kernels, the decode attention.
# JSON lines go to $OUT (or ./gpu_out). Worst case ~10 min; the most telling first.
#   bash scripts/gpu_checks.sh
set -u
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
timeout 100 python -m pytest -q -m gpu -p no:cacheprovider tests/test_sft.py tests/test_hf_engine.py 2>&1 | tail -4
BENCH="python scripts/bench_sft.py --steps 10 --warmup 3 --compile"
# ours as train/sft.py runs it on GPUs (varlen attention, compiled layers, chunked loss) with
# the plain transformers baseline; then the full-logits loss on the same card, and batch 24
timeout 150 $BENCH | tee -a "$OUT/bench_sft.jsonl"
timeout 100 $BENCH --skip-baseline --loss logits | tee -a "$OUT/bench_sft.jsonl"
timeout 100 $BENCH --skip-baseline --batch 24 | tee -a "$OUT/bench_sft.jsonl"
# attention kernels for packed rows (varlen flash vs cuDNN ragged): the next MFU lever
timeout 100 python scripts/bench_attention.py | tee -a "$OUT/attention_gpu.jsonl"
# decode at the GPU cascade's rollout shape (53M, eager): grouped query heads vs SDPA's
# repeated k/v
timeout 90 python scripts/bench_generate.py --model cascade-gpu --device cuda --batch 256 \
  --new-tokens 160 --prompt-len 2048 --mode attention --compile off --repeats 2 \
  | tee -a "$OUT/generate_gpu.jsonl"
