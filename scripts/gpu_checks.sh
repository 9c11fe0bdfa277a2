#!/usr/bin/env bash
# The GPU checks for issue 6, in one go (for the device machine: torch + transformers, no Ray
# needed): the tests marked `gpu`, the attention kernels for packed rows, then bench_sft.py
# with torch's varlen flash kernel and with cuDNN's, at batch 8 and 16. JSON lines go to $OUT
# (or ./gpu_out). Worst case ~10 min; the most telling first.
#   bash scripts/gpu_checks.sh
set -u
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
# includes the cuDNN kernel's loss and gradients against SDPA with a block mask
timeout 120 python -m pytest -q -m gpu -p no:cacheprovider tests/test_sft.py tests/test_hf_engine.py 2>&1 | tail -6
# forward + backward of one layer's attention: varlen flash vs cuDNN ragged (ms, TFLOP/s)
timeout 80 python scripts/bench_attention.py | tee -a "$OUT/attention_gpu.jsonl"
BENCH="python scripts/bench_sft.py --steps 10 --warmup 3 --compile"
# ours as train/sft.py runs it on GPUs (varlen flash attention, compiled layers, chunked loss)
# with the plain transformers baseline; then cuDNN attention instead; then both at batch 16
timeout 150 $BENCH | tee -a "$OUT/bench_sft.jsonl"
timeout 100 $BENCH --skip-baseline --attention-kernel cudnn | tee -a "$OUT/bench_sft.jsonl"
timeout 100 $BENCH --skip-baseline --batch 16 --attention-kernel cudnn | tee -a "$OUT/bench_sft.jsonl"
timeout 100 $BENCH --skip-baseline --batch 16 | tee -a "$OUT/bench_sft.jsonl"
