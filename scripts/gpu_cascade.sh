#!/usr/bin/env bash
# The cascade benchmark on the GPU device machine: one seed of $CONFIG (default
# configs/cascade_gpu.yaml; CONFIG=configs/cascade_gpu_six.yaml is the CPU table's task).
# That machine has torch and transformers but no Ray: carry it (`bash
# ../shared/tools/device_ray_bundle.sh` builds .device/; the device call carries ".device").
# Writes to $OUT: <config name>.json (the table), the log, and the run's small artifacts
# (metrics, eval tables, manifest, split report; no checkpoints), also when it times out.
# Arguments go to bench_cascade.py. Within one session's device time, two calls:
#   OUT=gpu_out BUDGET_S=590 bash scripts/gpu_cascade.sh --ablations none   # the recipe's rows
#   OUT=gpu_out SKIP_TESTS=1 BUDGET_S=280 bash scripts/gpu_cascade.sh --ablations sft1_all,rl_all
# (the second, on the still-warm machine, resumes the run and adds those ablations). The six-
# family config's whole table (every ablation) took ~11 min on an H100: a full call, then
#   CONFIG=configs/cascade_gpu_six.yaml OUT=gpu_out BUDGET_S=590 bash scripts/gpu_cascade.sh
#   CONFIG=configs/cascade_gpu_six.yaml OUT=gpu_out SKIP_TESTS=1 BUDGET_S=250 bash scripts/gpu_cascade.sh
set -u
script_start=$(date +%s)
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
bash .device/install.sh || exit 1
export PYTHONPATH=/tmp/site:$PWD RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
extra=()
# the config decodes eagerly; fall back to CUDA graphs if that path fails its test
# (SKIP_TESTS=1: a resumed run on the same machine)
if [ -z "${SKIP_TESTS:-}" ]; then
  if ! timeout 90 python -m pytest -q -p no:cacheprovider tests/test_hf_engine.py \
      -k cuda > "$OUT/gpu_tests.txt" 2>&1; then
    tail -30 "$OUT/gpu_tests.txt"; extra=(policy.compile=true)
  fi
  tail -1 "$OUT/gpu_tests.txt"
fi
config=${CONFIG:-configs/cascade_gpu.yaml}
name=$(basename "$config" .yaml)
run=$(python -c "import yaml, sys; print(yaml.safe_load(open(sys.argv[1]))['run_dir'])" "$config")/seed0
# BUDGET_S counts from this script's start (install and tests included); 15 s stay for the tar
start=$(date +%s)
left=$(( ${BUDGET_S:-580} - (start - script_start) - 15 ))
echo "bench budget ${left} s"
timeout "$left" python scripts/bench_cascade.py --config "$config" \
  --seeds 0 --out "$OUT/$name.json" "${extra[@]}" "$@" > "$OUT/bench_stdout.txt" 2> "$OUT/bench.log"
echo "bench rc=$? after $(( $(date +%s) - start )) s"
tail -25 "$OUT/bench.log"
tar czf "$OUT/run_small.tgz" --exclude='*/parts/*' $run/manifest.json $run/logs $run/bench \
  $run/data/split_report.json $run/eval $(ls $run/train/*.jsonl 2>/dev/null) 2>/dev/null
ls -la "$OUT"
