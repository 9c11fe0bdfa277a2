#!/usr/bin/env bash
# The GPU checks for issue 6, in one go (for the device machine: torch + transformers, no Ray
# needed): the attention kernels for packed rows, bench_sft.py at batch 16 and at batch 8
# beside the plain transformers baseline, then the tests marked `gpu`. Every step is cut to
# fit BUDGET_S seconds in all (default 540). JSON lines go to $OUT (or ./gpu_out).
#   bash scripts/gpu_checks.sh
set -u
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
BUDGET_S=${BUDGET_S:-540}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
# run CAP CMD...: CMD with at most CAP seconds, and never past the budget
run() { local cap=$1; shift; local left=$((BUDGET_S - SECONDS - 5))
        (( left < 20 )) && { echo "skipped (budget): $*"; return; }
        timeout $(( cap < left ? cap : left )) "$@"; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cudnn', torch.backends.cudnn.version())"
# forward + backward of one layer's attention: varlen flash vs cuDNN ragged (ms, TFLOP/s)
run 80 python scripts/bench_attention.py | tee -a "$OUT/attention_gpu.jsonl"
BENCH="python scripts/bench_sft.py --steps 10 --warmup 3 --compile"
run 100 $BENCH --skip-baseline --batch 16 | tee -a "$OUT/bench_sft.jsonl"
run 150 $BENCH | tee -a "$OUT/bench_sft.jsonl"
run 120 python -m pytest -q -m gpu -p no:cacheprovider tests/test_sft.py tests/test_hf_engine.py 2>&1 | tail -6
echo "gpu_checks: ${SECONDS}s"
