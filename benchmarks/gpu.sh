#!/usr/bin/env bash
# Every GPU figure in one run, each step under its own time limit (8 minutes in all), each
# result written as it comes, so that a step that fails or runs long costs only itself.
#
#   bash benchmarks/gpu.sh prepare   # here, with TFDS and pip: .gpu/mnist.npz, .gpu/wheels
#   bash benchmarks/gpu.sh           # on the GPU machine (carry .gpu there)
#   GPU_SMOKE=1 bash benchmarks/gpu.sh   # tiny sizes, lstm_jax alone, on a CPU (as CI does)
#
# Steps: gpu_check.py (cuDNN against the scan: outputs, gradients, one trainer epoch); the
# lesson (LSTM(50), batch 128); LSTM(256) at batch 1024; 784-step pixel sequences (LSTM(128),
# 4,096 examples); each for lstm_jax with use_cudnn auto and off, Keras 3 on JAX (the table
# says whether it took cuDNN), Flax linen, the plain scan (autodiff, plain layout: against
# lstm_jax's scan it says which scan layout a GPU prefers, the one GRU and SimpleRNN use)
# and PyTorch on CUDA; then train.py end to end from the npz, and its run exported for cpu,
# cuda and tpu (train.py --export: the scan, on a GPU too). Results: RESULTS_DIR
# (default benchmarks/results), gpu_*.md, and gpu_steps.md saying how each step ended.
set -uo pipefail
cd "$(dirname "$0")/.."
GPU_DIR=${GPU_DIR:-.gpu}
RESULTS_DIR=${RESULTS_DIR:-benchmarks/results}
PYTHON=${PYTHON:-python3}

if [ "${1:-}" = prepare ]; then
  set -e
  mkdir -p "$GPU_DIR/wheels"
  "$PYTHON" -c "import sys; from lstm_jax import data
data.save_npz(data.load('mnist', download=False), sys.argv[1])" "$GPU_DIR/mnist.npz"
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 -d "$GPU_DIR/wheels" keras==3.15.1 namex optree
  du -sh "$GPU_DIR"
  exit 0
fi

mkdir -p "$RESULTS_DIR"
export KERAS_BACKEND=jax TF_CPP_MIN_LOG_LEVEL=3
# Keras travels as wheels: installed outside the environment, for this run only.
if ls "$GPU_DIR"/wheels/*.whl >/dev/null 2>&1 && ! "$PYTHON" -c "import keras" 2>/dev/null; then
  site=$(mktemp -d)
  "$PYTHON" -m pip install -q --no-index --no-deps --target "$site" "$GPU_DIR"/wheels/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
DATA="$GPU_DIR/mnist.npz"
[ -f "$DATA" ] || DATA=mnist  # through TFDS where it is installed (else random images)

if [ "${GPU_SMOKE:-0}" = 1 ]; then
  SIZES=(--train-examples 256 --epochs 2 --rounds 1)
  LESSON=(--units 8 --batch-size 64) BIG=(--units 16 --batch-size 128)
  PIXELS=(--units 8 --batch-size 64 --sequence pixels --train-examples 128)
  TRAIN=(--units 8 --epochs 1) LIMIT=300 SYSTEMS=lstm_jax,lstm_jax_scan
else
  SIZES=(--epochs 3 --rounds 1)
  LESSON=(--units 50 --batch-size 128) BIG=(--units 256 --batch-size 1024)
  PIXELS=(--units 128 --batch-size 128 --sequence pixels --train-examples 4096)
  TRAIN=() LIMIT=120 SYSTEMS=lstm_jax,lstm_jax_scan,keras_jax,flax_linen,plain_scan,torch
fi
failed=0
echo "| step | exit | seconds |" > "$RESULTS_DIR/gpu_steps.md"
echo "| --- | --- | --- |" >> "$RESULTS_DIR/gpu_steps.md"

step() {  # step NAME SECONDS COMMAND...: runs it under its limit, logs it, records how it ended
  local name=$1 limit=$2 start=$SECONDS
  shift 2
  echo "== $name (at most ${limit} s)"
  timeout -k 5 "$limit" "$@" 2>&1 | tee "$RESULTS_DIR/gpu_$name.log" | tail -n 25
  local code=${PIPESTATUS[0]}
  [ "$code" = 0 ] || failed=$((failed + 1))
  echo "| $name | $code$([ "$code" = 124 ] && echo ' (time limit)') | $((SECONDS - start)) |" \
    >> "$RESULTS_DIR/gpu_steps.md"
}

bench() {  # bench NAME SIZES...: one table, each system's process under a third of the limit
  local name=$1
  shift
  step "$name" "$LIMIT" "$PYTHON" benchmarks/run.py --dataset "$DATA" --systems "$SYSTEMS" \
    --worker-timeout $((LIMIT / 3)) --results-dir "$RESULTS_DIR" --name "gpu_$name" \
    "${SIZES[@]}" "$@"
}

step check 45 "$PYTHON" benchmarks/gpu_check.py --results-dir "$RESULTS_DIR"
bench lesson "${LESSON[@]}"
bench u256_b1024 "${BIG[@]}"
bench pixels784 "${PIXELS[@]}"
workdir=$(mktemp -d)
step train 60 "$PYTHON" train.py --dataset "$DATA" --no-progress --workdir "$workdir/run" \
  "${TRAIN[@]}"
step export 60 "$PYTHON" train.py --workdir "$workdir/run" --export "$workdir/run.jaxexport"
cat "$RESULTS_DIR/gpu_steps.md"
exit "$failed"
