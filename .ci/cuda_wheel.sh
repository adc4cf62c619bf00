#!/usr/bin/env bash
# CI step (no GPU needed): fastgat's source distribution builds a CUDA wheel that installs and
# imports, with a tag, metadata and license that agree.
#   1. clone this repository's committed HEAD into a scratch folder (a clean tree);
#   2. build venv: torch==2.14.1 (a CUDA 13.0 build), build, ninja, setuptools,
#      nvidia-cuda-cuobjdump; nvcc from CUDA_HOME (default /usr/local/cuda);
#   3. `python -m build --sdist` from the clone, then the wheel from that sdist alone (unpacked
#      elsewhere), with FORCE_CUDA=1 for sm_80 and sm_90: a source the sdist leaves out fails;
#   4. the wheel's tag names the Python of Requires-Python and abi3 with an .abi3.so library,
#      and LICENSE is in the sdist, the wheel and the metadata;
#   5. cuobjdump --list-elf: the library holds sm_80 and sm_90 code;
#   6. a fresh venv installs torch==2.14.1 (during the build) and then the wheel with its
#      dependencies, then imports fastgat outside the source tree: the 'cpu' backend is
#      available and the CUDA kernels of fastgat::fused_forward / fused_backward are registered
#      (they load without a GPU);
#   7. the fused cpu backend's op and layer tests pass against the installed wheel.
# Build isolation is off: an isolated build would download a second multi-GB torch.
# The toolkit here lacks cusparse.h / cublas_v2.h, which torch's CUDA headers include: CPATH
# points at the nvidia/cu13/include folder of the pip-installed CUDA libraries
# (docs/design.md §9).
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
  build ninja setuptools nvidia-cuda-cuobjdump) > "$work/build-venv.log" 2>&1 \
  || { tail -n 30 "$work/build-venv.log"; false; }
cuda_include=$("$work/build/bin/python" -c \
  "import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], 'cu13', 'include'))")
test -f "$cuda_include/cusparse.h" -a -f "$cuda_include/cublas_v2.h"
log "build venv ready: torch $("$work/build/bin/python" -c 'import torch; print(torch.__version__)')"

# Both steps run setup.py, which picks the extension (CUDA or CPU only) from this environment.
build() {  # build OUTDIR SRCDIR ARGS...: python -m build without isolation, logged
  local out=$1 src=$2
  shift 2
  (CPATH="$cuda_include${CPATH:+:$CPATH}" FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-2} \
    TORCH_CUDA_ARCH_LIST="8.0;9.0" "$work/build/bin/python" -m build --no-isolation \
    --outdir "$out" "$@" "$src" >> "$work/build.log" 2>&1) || { tail -n 60 "$work/build.log"; false; }
}

step="sdist build"
build "$work/sdist" "$work/src" --sdist
sdist=$(ls "$work"/sdist/fastgat-*.tar.gz)
log "built $(basename "$sdist")"

step="wheel build from the sdist"
mkdir "$work/from-sdist"
tar -xzf "$sdist" -C "$work/from-sdist"
build "$work/dist" "$(ls -d "$work"/from-sdist/fastgat-*)" --wheel
wheel=$(ls "$work"/dist/fastgat-*.whl)
grep -i "warning" "$work/build.log" | grep -v "^ *\(WARNING: \|warnings.warn\)" | sort -u \
  | sed 's/^/cuda_wheel: build warning: /' || true
log "built $(basename "$wheel") from the sdist"

step="wheel tag, metadata and license"
"$work/build/bin/python" - "$sdist" "$wheel" <<'EOF'
import re
import sys
import tarfile
import zipfile
from email.parser import HeaderParser

sdist, wheel = sys.argv[1:]
with tarfile.open(sdist) as tar:
    top_level = {name.split("/", 1)[1] for name in tar.getnames() if name.count("/") == 1}
assert "LICENSE" in top_level, f"the sdist has no LICENSE: {sorted(top_level)}"
with zipfile.ZipFile(wheel) as whl:
    files = whl.namelist()
    info = next(name.rsplit("/", 1)[0] for name in files if name.endswith(".dist-info/WHEEL"))
    tags = HeaderParser().parsestr(whl.read(f"{info}/WHEEL").decode()).get_all("Tag")
    meta = HeaderParser().parsestr(whl.read(f"{info}/METADATA").decode())
assert len(tags) == 1, tags
interpreter, abi, _ = tags[0].split("-")
requires = meta["Requires-Python"]
oldest = re.fullmatch(r">=\s*3\.(\d+)", requires or "")
assert oldest, f"Requires-Python {requires!r} is not of the form >=3.N"
assert interpreter == f"cp3{oldest[1]}", f"tag {tags[0]} but Requires-Python {requires}"
library = [name for name in files if re.fullmatch(r"fastgat/_C\..*so", name)]
assert len(library) == 1, library
# abi3 claims that one library serves every CPython from the tag's on: built for the stable ABI.
assert abi == "abi3" and library[0].endswith(".abi3.so"), (tags[0], library)
assert meta["License-Expression"] == "MIT", meta["License-Expression"]
assert meta.get_all("License-File") == ["LICENSE"], meta.get_all("License-File")
assert f"{info}/licenses/LICENSE" in files, f"the wheel has no {info}/licenses/LICENSE"
print(f"cuda_wheel: tag {tags[0]}, Requires-Python {requires}, {library[0]}; "
      f"License-Expression MIT, LICENSE in the sdist and the wheel")
EOF

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
available = fastgat.available_backends("cpu")
print("cuda_wheel: backends on cpu:", available)
assert available["cpu"] == "available", available
for op in ("fastgat::fused_forward", "fastgat::fused_backward"):
    for key in ("CPU", "CUDA"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op, key), (op, key)
print("cuda_wheel: CPU and CUDA kernels registered; torch", torch.__version__,
      "| CUDA device present:", torch.cuda.is_available())
EOF
)

step="tests against the installed wheel"
# The op and layer tests of the fused cpu backend, run outside the source tree so that they
# import the installed wheel (torch's CUDA build runs them on the CPU).
"$work/fresh/bin/pip" install -q pytest >> "$work/fresh.log" 2>&1 \
  || { tail -n 30 "$work/fresh.log"; false; }
mkdir "$work/wheel-tests"
cp -r "$work/src/tests" "$work/wheel-tests/"
(cd "$work/wheel-tests" && "$work/fresh/bin/python" -m pytest -q -p no:cacheprovider \
  -m "not slow and not emulated and not gpu" -k cpu tests/test_op.py tests/test_layer_family.py \
  | tail -n 15 | sed 's/^/cuda_wheel: /'; exit "${PIPESTATUS[0]}")
log "the wheel passed the cpu backend's op and layer tests"

step="done"
log "total"
echo "cuda_wheel: PASS"
