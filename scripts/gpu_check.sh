#!/usr/bin/env bash
# The one GPU check: on a machine with a CUDA device and the project installed (nothing is installed
# here), run tests/gpu and the serving benchmark on CUDA, writing every result to OUT_DIR:
#   gpu.txt             the device, driver and torch build
#   gpu-tests.txt/.xml  pytest tests/gpu (serving on cuda, half-precision warm-up, out-of-memory retry,
#                       memory after reloads, recovery from a failed first load)
#   dtype-native.json   bf16 vs float32 rewards of the default model on the GPU
#   bench-native.*      scripts/bench_serve.py against the native default model (model_store/)
#   bench-hf.*          the same against a random-init 27M-parameter Qwen2 imported with reward-import
# Budget: under 8 minutes on an H200 (the steps' timeouts add up to 7.75). Usage:
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
step gpu-tests 150 "$python" -m pytest tests/gpu -v -rs -p no:cacheprovider --junitxml="$out/gpu-tests.xml"
step dtype-native 45 "$python" scripts/bench_serve.py --compare-dtype 240 --dtype bfloat16 --seed 1
step bench-native 110 "$python" scripts/bench_serve.py --concurrency 1 64 256 --duration 6 \
  --json "$out/bench-native.json" --plot "$out/bench-native.png"
hf_dir="$(mktemp -d)"
step hf-make 30 "$python" scripts/make_random_hf_model.py "$hf_dir/qwen2-27m" --hidden 512 --layers 8 --vocab 8000
step hf-import 40 "$python" scripts/import_reward_model.py "$hf_dir/qwen2-27m" --model-store "$hf_dir/store" \
  --version qwen2-27m
step bench-hf 60 "$python" scripts/bench_serve.py --model-store "$hf_dir/store" --concurrency 1 64 --duration 6 \
  --json "$out/bench-hf.json" --plot "$out/bench-hf.png"

exit "$failed"
