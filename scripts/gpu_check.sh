#!/usr/bin/env bash
# GPU correctness check in under 10 minutes, for a machine with a CUDA GPU, python3 with torch,
# triton, PyG, pytest and pytest-timeout, nvcc, ninja and (optional) compute-sanitizer; no
# network needed (tested setup: torch 2.11 cu130, triton 3.6, PyG 2.8.1, nvcc 13.0). From the
# repository root:
#   OUT=/some/folder bash scripts/gpu_check.sh
# 1. builds fastgat in place for this GPU (TORCH_CUDA_ARCH_LIST, default 9.0), or with
#    FASTGAT_PREBUILT=1 uses the libraries already in fastgat/ (built elsewhere, against any
#    torch from 2.11 on: they are built on torch's stable ABI, docs/design.md §9);
# 2. `pytest -m gpu` on the GPU;
# 3. the CUDA backend's GPU tests under compute-sanitizer memcheck (every tensor its own
#    cudaMalloc, so an out-of-bounds access is not hidden inside a cached block);
# 4. the whole test suite.
# Logs and JUnit XML go to $OUT (default ./gpu-check-out); the last line sums up each step
# (NAME=exit status(seconds)), and the exit status is 1 if any step failed.
# Each step has a time limit (build 180 s, tests 30 + 120 + 120 + 130 s): under 10 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-check-out}
mkdir -p "$out"
python=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
summary=()
failed=0
run() {  # run NAME SECONDS CMD...: log to $out/NAME.log, remember the exit status
  local name=$1 limit=$2
  shift 2
  local begin=$SECONDS
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  local status=$?
  summary+=("$name=$status($((SECONDS - begin))s)")
  echo "gpu_check: $name exit $status in $((SECONDS - begin)) s; tail of $out/$name.log:"
  tail -n 15 "$out/$name.log"
  [ $status -eq 0 ] || failed=1
  return $status
}

{ nvidia-smi; "$python" -c "import torch, triton; print('torch', torch.__version__, 'cuda',
  torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name())"; } \
  > "$out/machine.log" 2>&1
cat "$out/machine.log"

if [ "${FASTGAT_PREBUILT:-0}" = 1 ]; then
  summary+=("build=prebuilt($(ls fastgat/_*.so | xargs -n 1 basename | tr '\n' ' '))")
elif ! run build 180 env FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" \
    MAX_JOBS="${MAX_JOBS:-16}" "$python" -m pip install --no-build-isolation --no-deps -v -e .; then
  echo "gpu_check: ${summary[*]}"
  exit 1
fi
run backends 30 "$python" -c "import fastgat; b = fastgat.available_backends('cuda'); print(b);
assert b['cuda'] == 'available', b"
run pytest-gpu 120 "$python" -m pytest -m gpu -q -rs --junitxml="$out/pytest-gpu.xml"
if command -v compute-sanitizer > /dev/null || [ -x "$CUDA_HOME/bin/compute-sanitizer" ]; then
  sanitizer=$(command -v compute-sanitizer || echo "$CUDA_HOME/bin/compute-sanitizer")
  run memcheck 120 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$sanitizer" --tool memcheck \
    --error-exitcode 97 --target-processes all \
    "$python" -m pytest -q -p no:cacheprovider -k "test_cuda or cuda-cuda" tests/test_cuda.py \
    tests/test_op.py
else
  summary+=("memcheck=skipped(no compute-sanitizer)")
fi
# The emulated-CUDA suite (CPU, minutes) is CI's job; here the kernels run on the real device.
run pytest-all 130 "$python" -m pytest -q -rs --timeout=60 -p no:cacheprovider \
  --deselect tests/test_emulator.py::test_emulated_cuda_suite_under_sanitizers \
  --junitxml="$out/pytest-all.xml"
echo "gpu_check: ${summary[*]}"
exit $failed
