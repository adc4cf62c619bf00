#!/usr/bin/env bash
# GPU benchmark in under 10 minutes on a machine with a CUDA GPU, python3 with torch, triton
# and PyG installed (tested setup: torch 2.11 cu130, triton 3.6, PyG 2.8.1), nvcc and no network
# needed: build fastgat in place with its CUDA kernels, run `pytest -m gpu`, then the full
# benchmark in float32 and bfloat16 at full size, Reddit 8x64 included (PyG GATConv's E x H x C
# messages there need ~235 GB in float32: its OOM is recorded, not a crash).
#
#   bash scripts/gpu_bench.sh            # from the repository root; files go to $OUT
#
# Writes 7 files into $OUT (default ./bench-out), flat:
#   gpu.log                                      nvidia-smi, build, pytest -m gpu, bench progress
#   bench-cuda-float32.{md,json,png}             table, results + metadata, speedup plot
#   bench-cuda-bfloat16.{md,json,png}
# Each phase has a time limit so the whole stays inside ~570 s; the benchmark's --time-budget
# skips (and says so) the layers it has no time left for, the largest ones being last.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench-out}
PY=${PYTHON:-python3}
LIMIT_S=${LIMIT_S:-570}
mkdir -p "$OUT"
LOG=$OUT/gpu.log
: >"$LOG"
export PYTHONUNBUFFERED=1
step() { echo "== [$SECONDS s] $*" | tee -a "$LOG"; }
left() { echo $((LIMIT_S - SECONDS)); }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >>"$LOG" 2>&1
$PY -c "import torch, triton, torch_geometric as pyg
print('torch', torch.__version__, 'triton', triton.__version__, 'PyG', pyg.__version__)" >>"$LOG" 2>&1
git log -1 --format='fastgat commit %h %s' >>"$LOG" 2>&1 || true

step "build (pip install --no-build-isolation --no-deps -e .)"
CUDA_HOME=${CUDA_HOME:-$(dirname "$(dirname "$(command -v nvcc)")")}
export CUDA_HOME FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
if ! MAX_JOBS=${MAX_JOBS:-16} timeout 240 $PY -m pip install --no-build-isolation --no-deps \
    --no-cache-dir -e . >>"$LOG" 2>&1; then
  step "build FAILED (see $LOG)"
  tail -40 "$LOG"
  exit 1
fi
$PY -c "import fastgat; print('backends on cuda:', fastgat.available_backends('cuda'))" 2>&1 | tee -a "$LOG"

step "pytest -m gpu"
timeout $(( $(left) / 4 )) $PY -m pytest -m gpu -q -p no:cacheprovider tests >>"$LOG" 2>&1
status=$?
step "pytest -m gpu exit status $status"
tail -15 "$LOG" | grep -E "passed|failed|error|skipped" || true

bench() {  # dtype, seconds, workloads
  step "bench $1 (budget $2 s)"
  $PY -m fastgat.bench --device cuda --dtype "$1" --workloads "$3" --time-budget "$2" \
    --out "$OUT" 2>>"$LOG" | tee -a "$LOG"
}
bench float32 $(( ($(left) - 20) * 3 / 5 )) \
  cora,pubmed,arxiv,reddit:8x32,reddit:8x64,products:8x32,products:4x64
bench bfloat16 $(( $(left) - 15 )) cora,pubmed:8x32,arxiv:8x32,reddit:8x64,products:4x64
step "done; files in $OUT:"
ls -la "$OUT" | tee -a "$LOG"
