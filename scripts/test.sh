#!/usr/bin/env bash
# One command for the test suite on a fresh machine: set up .venv, then run pytest.
#   bash scripts/test.sh            # everything, 2 pytest-xdist workers (GPU tests skip without a GPU)
#   bash scripts/test.sh -k physics # extra arguments go to pytest
#   bash scripts/test.sh -n 0       # one process (the last -n wins)
# The fast tier (the inner loop, a few minutes on 2 cores) skips the tests marked slow; it runs
# in any venv with molequi and pytest installed (pytest-xdist / pytest-timeout are optional there):
#   python -m pytest -m "not slow"
# Every test has a timeout (pyproject.toml, [tool.pytest.ini_options] timeout).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup_env.sh"
cd "$root"
# --dist loadfile: each test module runs whole in one worker, so module- and session-scoped fixtures
# (trained models, the QM9 parse) are built once per module, and README's blocks (tests/test_readme.py)
# run in order in their one directory.
exec "${MOLEQUI_VENV:-$root/.venv}/bin/python" -m pytest -q -ra --durations=15 \
    -n "${MOLEQUI_TEST_WORKERS:-2}" --dist loadfile "$@"
