#!/usr/bin/env bash
# Create .venv-mace: MACE in its own virtual environment for scripts/bench_md.py.
# mace-torch 0.3.16 pins e3nn 0.4.4 while molequi needs e3nn 0.6, so the two cannot share one.
#
#   bash scripts/mace_env.sh            # torch from PyPI (CUDA build on Linux x86-64)
#   TORCH_INDEX=https://download.pytorch.org/whl/cpu bash scripts/mace_env.sh   # CPU-only torch (smaller)
#   TORCH_FROM=.venv bash scripts/mace_env.sh   # no download: reuse the torch of an existing venv
#                                               # (linked through a .pth file; e3nn stays separate)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
VENV=${VENV:-.venv-mace}
"$PYTHON" -m venv "$VENV"
echo '*' > "$VENV/.gitignore"   # keep the environment out of git (as Python ≥ 3.13's venv does)
"$VENV/bin/pip" install -q --upgrade pip
if [ -n "${TORCH_FROM:-}" ]; then
    SITE=$("$TORCH_FROM/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    mkdir -p "$VENV/torch-only"
    for entry in "$SITE"/torch "$SITE"/torch-*.dist-info "$SITE"/torchgen "$SITE"/functorch \
                 "$SITE"/sympy "$SITE"/sympy-*.dist-info "$SITE"/mpmath "$SITE"/mpmath-*.dist-info \
                 "$SITE"/networkx "$SITE"/networkx-*.dist-info "$SITE"/jinja2 "$SITE"/jinja2-*.dist-info \
                 "$SITE"/markupsafe "$SITE"/markupsafe-*.dist-info "$SITE"/filelock "$SITE"/filelock-*.dist-info \
                 "$SITE"/fsspec "$SITE"/fsspec-*.dist-info "$SITE"/typing_extensions.py "$SITE"/typing_extensions-*.dist-info; do
        [ -e "$entry" ] && ln -sfn "$entry" "$VENV/torch-only/"
    done
    "$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' | \
        xargs -I{} sh -c "echo '$(cd "$VENV" && pwd)/torch-only' > {}/torch_only.pth"
elif [ -n "${TORCH_INDEX:-}" ]; then
    "$VENV/bin/pip" install -q torch==2.13.0 --index-url "$TORCH_INDEX"
else
    "$VENV/bin/pip" install -q torch==2.13.0
fi
"$VENV/bin/pip" install -q mace-torch==0.3.16
"$VENV/bin/python" -c "import mace, e3nn, torch; print('mace ok: e3nn', e3nn.__version__, 'torch', torch.__version__)"
