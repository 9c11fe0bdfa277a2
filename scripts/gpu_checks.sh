#!/usr/bin/env bash
# The GPU checks, in one go (for the device machine: torch + transformers, no Ray needed):
# the tests marked `gpu`, then bench_sft.py's variants. JSON lines go to $OUT (or ./gpu_out).
#   bash scripts/gpu_checks.sh
set -u
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
timeout 150 python -m pytest -q -m gpu -p no:cacheprovider tests/test_sft.py tests/test_hf_engine.py 2>&1 | tail -15
# attention kernels for packed rows (varlen flash vs cuDNN ragged), then the SFT step
timeout 120 python scripts/bench_attention.py | tee -a "$OUT/attention_gpu.jsonl"
BENCH="python scripts/bench_sft.py --steps 10 --warmup 3"
# ours as train/sft.py runs it on GPUs (varlen attention, compiled layers, chunked loss),
# with the baseline; then the full-logits loss, and the larger batches the chunked loss fits
timeout 240 $BENCH --compile | tee -a "$OUT/bench_sft.jsonl"
timeout 180 $BENCH --skip-baseline --compile --loss logits | tee -a "$OUT/bench_sft.jsonl"
timeout 180 $BENCH --skip-baseline --compile --batch 16 | tee -a "$OUT/bench_sft.jsonl"
timeout 180 $BENCH --skip-baseline --compile --batch 24 | tee -a "$OUT/bench_sft.jsonl"
# decode speed of the GPU cascade's 53M model at its rollout shape: eager vs CUDA graphs
GEN="python scripts/bench_generate.py --model cascade-gpu --device cuda --batch 256 --new-tokens 160 --prompt-len 2048 --mode static --repeats 1"
timeout 120 $GEN --compile off | tee -a "$OUT/generate_gpu.jsonl"
timeout 180 $GEN --compile on | tee -a "$OUT/generate_gpu.jsonl"
