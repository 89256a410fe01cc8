#!/usr/bin/env bash
# One command for the test suite on a fresh machine: set up .venv, then run pytest.
#   bash scripts/test.sh            # everything (GPU tests skip without a GPU)
#   bash scripts/test.sh -k physics # extra arguments go to pytest
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup_env.sh"
cd "$root"
exec "${MOLEQUI_VENV:-$root/.venv}/bin/python" -m pytest -q -ra --durations=15 "$@"
