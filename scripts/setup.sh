#!/usr/bin/env bash
# Create .venv and install esr-lab into it. Idempotent: a second run only checks.
# Where there is no NVIDIA GPU, torch is pinned to a CPU build first so that pip does not pull a
# multi-GB CUDA build; set TORCH_SPEC to choose another torch (e.g. TORCH_SPEC="torch" on a GPU box).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1; then default_torch="torch"; else default_torch="torch==2.13.0"; fi
    python -m pip install --quiet "${TORCH_SPEC:-$default_torch}"
fi
python -m pip install --quiet -e ".[dev]"
