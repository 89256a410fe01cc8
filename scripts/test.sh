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
# --dist loadgroup: tests marked xdist_group(name) (those sharing an expensive fixture, README's
# blocks that run in order in one directory) stay in one worker; the others are spread freely.
exec "${MOLEQUI_VENV:-$root/.venv}/bin/python" -m pytest -q -ra --durations=15 \
    -n "${MOLEQUI_TEST_WORKERS:-2}" --dist loadgroup "$@"
