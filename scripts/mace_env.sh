#!/usr/bin/env bash
# Create .venv-mace: MACE in its own virtual environment for scripts/bench_md.py.
# mace-torch 0.3.16 pins e3nn 0.4.4 while molequi needs e3nn 0.6, so the two cannot share one.
#
#   bash scripts/mace_env.sh            # torch from PyPI (CUDA build on Linux x86-64)
#   TORCH_INDEX=https://download.pytorch.org/whl/cpu bash scripts/mace_env.sh   # CPU-only torch (smaller)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
VENV=${VENV:-.venv-mace}
"$PYTHON" -m venv "$VENV"
echo '*' > "$VENV/.gitignore"   # keep the environment out of git (as Python ≥ 3.13's venv does)
"$VENV/bin/pip" install -q --upgrade pip
if [ -n "${TORCH_INDEX:-}" ]; then
    "$VENV/bin/pip" install -q torch==2.13.0 --index-url "$TORCH_INDEX"
else
    "$VENV/bin/pip" install -q torch==2.13.0
fi
"$VENV/bin/pip" install -q mace-torch==0.3.16
"$VENV/bin/python" -c "import mace, e3nn, torch; print('mace ok: e3nn', e3nn.__version__, 'torch', torch.__version__)"
