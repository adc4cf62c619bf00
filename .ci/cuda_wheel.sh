#!/usr/bin/env bash
# CI step (no GPU needed): fastgat's source distribution builds one CUDA wheel that installs,
# imports and passes the CPU kernels' tests under several torch releases without rebuilding
# (the libraries are built on torch's stable ABI), with a tag, metadata and license that agree.
#   1. clone this repository's committed HEAD into a scratch folder (a clean tree);
#   2. build venv: torch==2.14.1 (a CUDA 13.0 build), build, ninja, setuptools,
#      nvidia-cuda-cuobjdump; nvcc from CUDA_HOME (default /usr/local/cuda);
#   3. `python -m build --sdist` from the clone, then the wheel from that sdist alone (unpacked
#      elsewhere), with FORCE_CUDA=1 for sm_80 and sm_90: a source the sdist leaves out fails;
#   4. the wheel's tag names the Python of Requires-Python and abi3 with .abi3.so libraries
#      (fastgat/_C, the CPU kernels, and fastgat/_cuda, the CUDA kernels), and LICENSE is in
#      the sdist, the wheel and the metadata;
#   5. cuobjdump --list-elf: the CUDA library holds sm_80 and sm_90 code;
#   6. neither library names a mangled at::, c10:: or torch:: symbol (nm -D --undefined-only):
#      they call torch through its stable C ABI only;
#   7. under the build's own torch 2.14.1 (in the build venv) and each torch of TORCH_VERSIONS
#      (fresh venvs, installed during the build: 2.13.0 for the CPU, and 2.11.0, the oldest
#      supported, a CUDA 13 build), the same wheel installs with its dependencies and imports
#      outside the source tree: the 'cpu' backend is available, and under a CUDA torch the
#      CUDA kernels of fastgat::fused_forward / fused_backward are registered (they load
#      without a GPU);
#   8. in each, the fused cpu backend's op and layer tests pass against the installed wheel.
# Build isolation is off: an isolated build would download a second multi-GB torch.
# Ends with "cuda_wheel: PASS" or "cuda_wheel: FAIL (<step>)" and a matching exit status.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/fastgat-cuda-wheel.XXXXXX")
step="setup"
build_torch=2.14.1
torch_versions=${TORCH_VERSIONS:-2.13.0 2.11.0}
trap 'status=$?; [ $status -eq 0 ] || echo "cuda_wheel: FAIL ($step)"
      jobs -p | xargs -r kill 2> /dev/null; wait; rm -rf "$work"' EXIT
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
python=${PYTHON:-python3}
start=$SECONDS
log() { echo "cuda_wheel: [$((SECONDS - start)) s] $*"; }

step="clone"
git clone --quiet "$repo" "$work/src"
log "cloned $(git -C "$work/src" rev-parse --short HEAD)"

# The test venvs' torch releases install in the background while the wheel builds.
declare -A venv_pid
for version in $torch_versions; do
  "$python" -m venv "$work/torch-$version"
  "$work/torch-$version/bin/pip" install -q "torch==$version" > "$work/torch-$version.log" 2>&1 &
  venv_pid[$version]=$!
done

step="build venv"
"$python" -m venv "$work/build"
("$work/build/bin/pip" install -q --upgrade pip \
  && "$work/build/bin/pip" install -q "torch==$build_torch" build ninja setuptools \
    nvidia-cuda-cuobjdump) > "$work/build-venv.log" 2>&1 \
  || { tail -n 30 "$work/build-venv.log"; false; }
log "build venv ready: torch $("$work/build/bin/python" -c 'import torch; print(torch.__version__)')"

# Both steps run setup.py, which picks the extension (CUDA or CPU only) from this environment.
build() {  # build OUTDIR SRCDIR ARGS...: python -m build without isolation, logged
  local out=$1 src=$2
  shift 2
  (FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-2} \
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
libraries = sorted(name for name in files if re.fullmatch(r"fastgat/_\w+\..*so", name))
assert [name.split(".")[0] for name in libraries] == ["fastgat/_C", "fastgat/_cuda"], libraries
# abi3 claims that one library serves every CPython from the tag's on: built for the stable ABI.
assert abi == "abi3" and all(name.endswith(".abi3.so") for name in libraries), (tags[0], libraries)
assert meta["License-Expression"] == "MIT", meta["License-Expression"]
assert meta.get_all("License-File") == ["LICENSE"], meta.get_all("License-File")
assert f"{info}/licenses/LICENSE" in files, f"the wheel has no {info}/licenses/LICENSE"
print(f"cuda_wheel: tag {tags[0]}, Requires-Python {requires}, {', '.join(libraries)}; "
      f"License-Expression MIT, LICENSE in the sdist and the wheel")
EOF

step="library architectures"
mkdir "$work/unpacked"
"$work/build/bin/python" -m zipfile -e "$wheel" "$work/unpacked"
cuobjdump=$(ls "$work"/build/lib/python*/site-packages/nvidia/cu13/bin/cuobjdump)
elves=$("$cuobjdump" --list-elf "$work"/unpacked/fastgat/_cuda*.so)
echo "$elves" | sed 's/^/cuda_wheel: /'
grep -q "sm_80" <<< "$elves"
grep -q "sm_90" <<< "$elves"

step="stable ABI symbols"
for library in "$work"/unpacked/fastgat/_*.so; do
  unstable=$(nm -DC --undefined-only "$library" | grep -E '(^|[^[:alnum:]_])(at|c10|torch)::' \
    || true)
  [ -z "$unstable" ] || { echo "$unstable" | sed 's/^/cuda_wheel: unstable symbol: /'; false; }
  log "$(basename "$library"): $(nm -D --undefined-only "$library" | grep -c ' \(aoti_\)\?torch_') \
torch symbols, all of the stable C ABI"
done

mkdir "$work/wheel-tests"
cp -r "$work/src/tests" "$work/wheel-tests/"
venv_pid[$build_torch]=""
for version in $build_torch $torch_versions; do
  venv="$work/torch-$version"
  [ "$version" != "$build_torch" ] || venv="$work/build"
  step="torch $version: install"
  [ -z "${venv_pid[$version]}" ] || wait "${venv_pid[$version]}" \
    || { tail -n 30 "$venv.log"; false; }
  "$venv/bin/pip" install -q "$wheel" pytest >> "$venv.log" 2>&1 \
    || { tail -n 30 "$venv.log"; false; }

  step="torch $version: import check"
  (cd "$work" && "$venv/bin/python" - <<'EOF'
import torch
import fastgat
from fastgat import _extension

assert _extension.LOAD_ERROR is None, _extension.LOAD_ERROR
assert "site-packages" in fastgat.__file__, fastgat.__file__
available = fastgat.available_backends("cpu")
assert available["cpu"] == "available", available
cuda = "CPU build of torch: " + _extension.CUDA_LOAD_ERROR
if torch.version.cuda is not None:
    assert not _extension.CUDA_LOAD_ERROR, _extension.CUDA_LOAD_ERROR
    for op in ("fastgat::fused_forward", "fastgat::fused_backward"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA"), op
    cuda = "CUDA kernels registered"
print(f"cuda_wheel: torch {torch.__version__}: cpu backend available; {cuda}; "
      f"CUDA device present: {torch.cuda.is_available()}")
EOF
  )

  step="torch $version: tests against the installed wheel"
  # The op and layer tests of the fused cpu backend, run outside the source tree so that they
  # import the installed wheel (a CUDA build of torch runs them on the CPU).
  (cd "$work/wheel-tests" && "$venv/bin/python" -m pytest -q -p no:cacheprovider \
    -m "not slow and not emulated and not gpu" -k cpu tests/test_op.py tests/test_layer_family.py \
    | tail -n 1 | sed "s/^/cuda_wheel: torch $version: /"; exit "${PIPESTATUS[0]}")
done

step="done"
log "total"
echo "cuda_wheel: PASS"
