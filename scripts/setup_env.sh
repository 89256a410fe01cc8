#!/usr/bin/env bash
# Create .venv (if missing) and install molequi with everything its tests and quickstart need.
# Sourced by scripts/quickstart.sh and scripts/test.sh; safe to run again (pip skips what is there).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${MOLEQUI_VENV:-$root/.venv}"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
    echo "[setup] creating $venv"
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
# torch first and pinned: a bare 'torch' requirement would pull a multi-GB CUDA build.
# 2.13.0 is the CPU wheel this machine keeps on disk; pyproject.toml accepts any torch>=2.4.
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
    echo "[setup] installing torch (CPU)"
    "${pip[@]}" "torch==${MOLEQUI_TORCH_VERSION:-2.13.0}"
fi
echo "[setup] installing molequi and its extras"
"${pip[@]}" -e "$root[xtb,search,qm9,purchasable,torchsim,test]"
# molsets (the MOSES SMILES pools) pins ancient versions of its dependencies: install it alone.
"${pip[@]}" --no-deps "molsets==0.3.1"
echo "[setup] ready: $venv"
