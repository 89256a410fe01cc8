"""The run-directory lock (``.molequi.lock``) is gone after a run ends however it ends, refuses a
second run while held, and a lock file left by a killed run is taken over with a note."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from molequi.errors import ConfigError
from molequi.utils import LOCK_NAME, locked_directory

REPO = Path(__file__).resolve().parents[1]

# Holds the lock on argv[1] as the molequi command would (SIGTERM -> SystemExit) until killed.
HOLDER = """
import sys, time
from molequi.cli.main import _exit_on_sigterm
from molequi.utils import locked_directory
_exit_on_sigterm()
with locked_directory(sys.argv[1], "test"):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_clean_exit_removes_the_lock(tmp_path):
    with locked_directory(tmp_path / "run", "train") as folder:
        assert (folder / LOCK_NAME).exists()
    assert not (tmp_path / "run" / LOCK_NAME).exists()


@pytest.mark.parametrize("error", [RuntimeError("bug"), KeyboardInterrupt(), SystemExit(3)])
def test_exception_exit_removes_the_lock(tmp_path, error):
    with pytest.raises(type(error)):
        with locked_directory(tmp_path / "run", "train"):
            raise error
    assert not (tmp_path / "run" / LOCK_NAME).exists()


def test_a_held_lock_refuses_a_second_run_and_keeps_the_first(tmp_path):
    with locked_directory(tmp_path / "run", "train"):
        with pytest.raises(ConfigError, match="in use by another run"):
            with locked_directory(tmp_path / "run", "md"):
                pass
        assert (tmp_path / "run" / LOCK_NAME).exists()  # the refused run did not remove the first's lock
    assert not (tmp_path / "run" / LOCK_NAME).exists()


def _holder(folder: Path) -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True,
                             cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert child.stdout.readline().strip() == "locked"
    return child


def test_sigterm_removes_the_lock(tmp_path):
    child = _holder(tmp_path / "run")
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=30) == 128 + signal.SIGTERM
    assert not (tmp_path / "run" / LOCK_NAME).exists()


def test_a_stale_lock_of_a_killed_run_is_taken_over_with_a_note(tmp_path, capsys):
    child = _holder(tmp_path / "run")
    child.kill()  # SIGKILL: no cleanup runs, the file stays, the kernel drops the lock
    child.wait(timeout=30)
    assert (tmp_path / "run" / LOCK_NAME).exists()
    with locked_directory(tmp_path / "run", "train"):
        note = capsys.readouterr().err
        assert f"pid {child.pid}" in note and "no longer running" in note and "stale lock" in note
    assert not (tmp_path / "run" / LOCK_NAME).exists()
