#!/usr/bin/env bash
# The GPU checks for issue 6, in one go (for the device machine: torch + transformers, no Ray
# needed): the attention kernels for packed rows, bench_sft.py at batches 24 and 16 with
# cuDNN's and with the flash attention kernel, the tests marked `gpu`, then batch 8 beside
# the plain transformers baseline (~6 min). Wheels in .whl/ (nvidia-cudnn-frontend for the
# cuDNN kernel) are installed first; if the cuDNN kernel cannot run, the script stops there.
# Every step is cut to fit BUDGET_S seconds in all (default 540). JSON lines go to $OUT.
#   bash scripts/gpu_checks.sh
set -u
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
BUDGET_S=${BUDGET_S:-540}
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
# run CAP CMD...: CMD with at most CAP seconds, and never past the budget
run() { local cap=$1; shift; local left=$((BUDGET_S - SECONDS - 5))
        (( left < 20 )) && { echo "skipped (budget): $*"; return; }
        timeout $(( cap < left ? cap : left )) "$@"; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cudnn', torch.backends.cudnn.version())"
# the cuDNN kernel once, forward + backward, before anything is timed
run 60 python - <<'PY' || { echo "cuDNN attention failed: stopping"; exit 1; }
import torch
import cudnn
from stagent_ray.train import cudnn_attention
print("cudnn-frontend", cudnn.__version__, "backend", cudnn.backend_version_string(),
      "available", cudnn_attention.available())
cu = torch.tensor([0, 5, 12, 12], dtype=torch.int32, device="cuda")
q = torch.randn(12, 4, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
k = torch.randn(12, 2, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
v = torch.randn(12, 2, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
out = cudnn_attention.attention(q, k, v, cu, 16)
out.sum().backward()
print("smoke ok", out.shape, float(out.float().abs().sum()), float(q.grad.float().abs().sum()))
PY
# forward + backward of one layer's attention: varlen flash vs cuDNN (ms, TFLOP/s)
run 80 python scripts/bench_attention.py | tee -a "$OUT/attention_gpu.jsonl"
BENCH="python scripts/bench_sft.py --steps 10 --warmup 3 --compile"
for batch in 24 16; do  # batch 24 with the flash kernel needs ~77 GB: may not fit an H100
  for kernel in cudnn flash; do
    run 110 $BENCH --skip-baseline --batch $batch --attention-kernel $kernel | tee -a "$OUT/bench_sft.jsonl"
  done
done
run 120 python -m pytest -q -m gpu -p no:cacheprovider tests/test_sft.py tests/test_hf_engine.py 2>&1 | tail -8
run 150 $BENCH --attention-kernel cudnn | tee -a "$OUT/bench_sft.jsonl"
echo "gpu_checks: ${SECONDS}s"
