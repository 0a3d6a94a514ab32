#!/usr/bin/env bash
# The GPU check (see benchmarks/gpu_check.py for what it measures).
#   benchmarks/gpu_check.sh --prepare   here, before a lease: writes .gpucheck/ (ignored; carry it)
#   benchmarks/gpu_check.sh --prepare --cuda-arch 90   also compiles the CUDA kernels here, for
#                                       H100/H200 (nvcc, once, cached): the lease builds only the CPU side
#   benchmarks/gpu_check.sh             on the GPU machine: gpu_check.json and .md in $OUT
#   benchmarks/gpu_check.sh --dry-run   on a CPU (part of `make test`): all but CUDA and GPU numbers
set -euo pipefail
cd "$(dirname "$0")/.."
PREP="${LABKIT_GPU_PREP:-.gpucheck}"
case "${1:-run}" in
  --prepare)
    shift
    exec "${PYTHON:-.venv/bin/python}" benchmarks/gpu_check.py prepare "$PREP" "$@" ;;
  --dry-run)
    exec "${PYTHON:-.venv/bin/python}" benchmarks/gpu_check.py run "$PREP" --dry-run \
      --out "${OUT:-gpu-check-dry}" --budget-s "${BUDGET_S:-600}" ;;
  run)
    # The GPU machine has no network: the gguf wheel travels in $PREP/wheels.
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/labkit-site "$PREP"/wheels/*.whl
    export PYTHONPATH="/tmp/labkit-site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
    # The budget decides which steps start; the timeout ends a step that overruns it, so the
    # device call's own limit (give it BUDGET_S + 90) is never what stops the run.
    BUDGET_S="${BUDGET_S:-420}"
    exec timeout -k 10 "$(( ${BUDGET_S%.*} + 40 ))" \
      python3 benchmarks/gpu_check.py run "$PREP" --out "${OUT:-gpu-check-out}" --budget-s "$BUDGET_S" ;;
  *) echo "usage: $0 [--prepare [--cuda-arch N]|--dry-run]" >&2; exit 2 ;;
esac
