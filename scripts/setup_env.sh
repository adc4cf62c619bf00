#!/usr/bin/env bash
# Creates ./.venv: torch first (TORCH_VERSION, default 2.13.0, the CPU wheel on the CI machines),
# then fastgat built in place against it (--no-build-isolation: an isolated build would fetch
# a multi-GB CUDA torch just to compile), with the test and benchmark extras.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
.venv/bin/pip install -q --upgrade pip setuptools wheel ninja
.venv/bin/pip install -q "torch==${TORCH_VERSION:-2.13.0}"
MAX_JOBS=${MAX_JOBS:-2} .venv/bin/pip install -q --no-build-isolation -e ".[test,bench]"
.venv/bin/python -c "import fastgat; print('fastgat backends on cpu:', fastgat.available_backends('cpu'))"
