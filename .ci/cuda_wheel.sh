#!/usr/bin/env bash
# CI step (no GPU needed): fastgat's CUDA kernels compile into a wheel that installs and imports.
#   1. clone this repository's committed HEAD into a scratch folder (a clean tree);
#   2. build venv: torch==2.14.1 (a CUDA 13.0 build, from this machine's disk), ninja, wheel,
#      setuptools, nvidia-cuda-cuobjdump; nvcc from CUDA_HOME (default /usr/local/cuda);
#   3. `pip wheel` with FORCE_CUDA=1 for sm_80 and sm_90 (TORCH_CUDA_ARCH_LIST="8.0;9.0");
#   4. a fresh venv installs torch==2.14.1 (during the build) and then the wheel with its
#      dependencies, then imports
#      fastgat outside the source tree: the 'cpu' backend is available and the CUDA kernels of
#      fastgat::fused_forward / fused_backward are registered (they load without a GPU);
#   5. cuobjdump --list-elf: the library holds sm_80 and sm_90 code.
# The toolkit here lacks cusparse.h / cublas_v2.h, which torch's CUDA headers include: CPATH
# points at the nvidia/cu13/include folder of the pip-installed CUDA libraries (DESIGN §6).
# Ends with "cuda_wheel: PASS" or "cuda_wheel: FAIL (<step>)" and a matching exit status.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/fastgat-cuda-wheel.XXXXXX")
step="setup"
fresh_pid=""
trap 'status=$?; [ $status -eq 0 ] || echo "cuda_wheel: FAIL ($step)"
      [ -z "$fresh_pid" ] || kill "$fresh_pid" 2> /dev/null; wait; rm -rf "$work"' EXIT
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
python=${PYTHON:-python3}
start=$SECONDS
log() { echo "cuda_wheel: [$((SECONDS - start)) s] $*"; }

step="clone"
git clone --quiet "$repo" "$work/src"
log "cloned $(git -C "$work/src" rev-parse --short HEAD)"

# The fresh venv's torch installs in the background while the wheel builds (I/O, not CPU).
"$python" -m venv "$work/fresh"
"$work/fresh/bin/pip" install -q torch==2.14.1 > "$work/fresh.log" 2>&1 &
fresh_pid=$!

step="build venv"
"$python" -m venv "$work/build"
("$work/build/bin/pip" install -q --upgrade pip && "$work/build/bin/pip" install -q torch==2.14.1 \
  ninja wheel setuptools nvidia-cuda-cuobjdump) > "$work/build-venv.log" 2>&1 \
  || { tail -n 30 "$work/build-venv.log"; false; }
cuda_include=$("$work/build/bin/python" -c \
  "import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], 'cu13', 'include'))")
test -f "$cuda_include/cusparse.h" -a -f "$cuda_include/cublas_v2.h"
log "build venv ready: torch $("$work/build/bin/python" -c 'import torch; print(torch.__version__)')"

step="wheel build"
(cd "$work/src" && CPATH="$cuda_include${CPATH:+:$CPATH}" FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-2} \
  TORCH_CUDA_ARCH_LIST="8.0;9.0" "$work/build/bin/pip" wheel -v --no-build-isolation --no-deps \
  -w "$work/dist" . > "$work/build.log" 2>&1) || { tail -n 60 "$work/build.log"; false; }
wheel=$(ls "$work"/dist/fastgat-*.whl)
grep -i "warning" "$work/build.log" | grep -v "^ *\(WARNING: \|warnings.warn\)" | sort -u \
  | sed 's/^/cuda_wheel: build warning: /' || true
log "built $(basename "$wheel")"

step="library architectures"
mkdir "$work/unpacked"
"$work/build/bin/python" -m zipfile -e "$wheel" "$work/unpacked"
library=$(ls "$work"/unpacked/fastgat/_C*.so)
cuobjdump=$(ls "$work"/build/lib/python*/site-packages/nvidia/cu13/bin/cuobjdump)
elves=$("$cuobjdump" --list-elf "$library")
echo "$elves" | sed 's/^/cuda_wheel: /'
grep -q "sm_80" <<< "$elves"
grep -q "sm_90" <<< "$elves"

step="fresh venv install"
wait "$fresh_pid" || { tail -n 30 "$work/fresh.log"; false; }
fresh_pid=""
"$work/fresh/bin/pip" install -q "$wheel" > "$work/fresh.log" 2>&1 \
  || { tail -n 30 "$work/fresh.log"; false; }
log "wheel installed into a fresh venv"

step="import check"
(cd "$work" && "$work/fresh/bin/python" - <<'EOF'
import torch
import fastgat
from fastgat import _extension

assert _extension.LOAD_ERROR is None, _extension.LOAD_ERROR
assert "site-packages" in fastgat.__file__, fastgat.__file__
available = fastgat.backends("cpu")
print("cuda_wheel: backends on cpu:", available)
assert available["cpu"] == "available", available
for op in ("fastgat::fused_forward", "fastgat::fused_backward"):
    for key in ("CPU", "CUDA"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op, key), (op, key)
print("cuda_wheel: CPU and CUDA kernels registered; torch", torch.__version__,
      "| CUDA device present:", torch.cuda.is_available())
EOF
)
step="done"
log "total"
echo "cuda_wheel: PASS"
