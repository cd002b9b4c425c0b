#!/usr/bin/env bash
# The one GPU check: on a machine with a CUDA device and the project installed (nothing is installed
# here), run tests/gpu and the serving benchmark on CUDA, writing every result to OUT_DIR:
#   gpu.txt             the device, driver and torch build
#   gpu-tests.txt/.xml  pytest tests/gpu (serving on cuda, half-precision warm-up, out-of-memory retry,
#                       memory after reloads, recovery from a failed first load)
#   dtype-native.json   bf16 vs float32 rewards of the default model on the GPU
#   bench-native.*      scripts/bench_serve.py against the native default model (model_store/)
# Budget: under 8 minutes on an H200 (the steps' timeouts add up to 7.9). Usage:
#   bash scripts/gpu_check.sh OUT_DIR           (PYTHON=... to pick the interpreter, default .venv's)
#   GPU_CHECK_DRY_RUN=1 bash scripts/gpu_check.sh OUT_DIR   prints the steps, runs none (any machine)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:?usage: bash scripts/gpu_check.sh OUT_DIR}"
python="${PYTHON:-.venv/bin/python}"
[ -x "$python" ] || python="$(command -v python3)"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$out"
failed=0

step() {  # step NAME TIMEOUT_S COMMAND...: run, log to OUT_DIR/NAME.txt, remember a failure, go on
  local name="$1" limit="$2"
  shift 2
  if [ "${GPU_CHECK_DRY_RUN:-0}" = 1 ]; then
    echo "[$name, ${limit}s] $*"
    return
  fi
  echo "== $name (at most ${limit}s)"
  timeout "$limit" "$@" 2>&1 | tee "$out/$name.txt"
  local status="${PIPESTATUS[0]}"
  [ "$status" = 0 ] || { echo "== $name failed ($status)"; failed=1; }
}

if [ "${GPU_CHECK_DRY_RUN:-0}" != 1 ] && ! "$python" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  echo "no CUDA device visible to $python: nothing to check" | tee "$out/gpu.txt"
  exit 2
fi

step gpu 30 "$python" -c "import torch; p = torch.cuda.get_device_properties(0); print(torch.__version__, torch.version.cuda, p.name, p.total_memory >> 20, 'MiB', 'bf16' if torch.cuda.is_bf16_supported() else 'no bf16')"
step gpu-tests 200 "$python" -m pytest tests/gpu -v -rs -p no:cacheprovider --junitxml="$out/gpu-tests.xml"
step dtype-native 45 "$python" scripts/bench_serve.py --compare-dtype 240 --dtype bfloat16 --seed 1
step bench-native 200 "$python" scripts/bench_serve.py --concurrency 1 64 256 --duration 8 \
  --json "$out/bench-native.json" --plot "$out/bench-native.png"
# --- Hugging Face backend: its benchmark goes here, as a step of its own (bench-hf, <= 90 s), the same
# --- bench_serve.py flags against a store holding the Hugging Face version; results to $out/bench-hf.*

exit "$failed"
