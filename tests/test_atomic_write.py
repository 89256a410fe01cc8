"""The one atomic write (molequi.utils.atomic_path): file modes follow the umask, nothing is
left behind on failure, a failed write keeps the old file, stale temporaries can be cleared."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from molequi.utils import (
    atomic_open,
    atomic_write,
    atomic_write_text,
    is_temporary_name,
    remove_stale_temporaries,
)


@pytest.fixture
def umask():
    """Set a umask for one test and restore the previous one afterwards."""
    previous = os.umask(0o022)
    os.umask(previous)

    def set_umask(value: int) -> None:
        os.umask(value)

    yield set_umask
    os.umask(previous)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_new_file_mode_follows_umask(tmp_path, umask, mask):
    umask(mask)
    for name, write in [
        ("a.txt", lambda p: atomic_write_text(p, "x")),
        ("b.pt", lambda p: atomic_write(p, lambda t: torch.save({"a": torch.zeros(2)}, t))),
    ]:
        write(tmp_path / name)
        assert _mode(tmp_path / name) == 0o666 & ~mask
    with atomic_open(tmp_path / "c.csv", "w") as handle:
        handle.write("a,b\n")
    assert _mode(tmp_path / "c.csv") == 0o666 & ~mask
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # what a normal open() gives
    assert _mode(plain) == _mode(tmp_path / "a.txt")


def test_rewrite_keeps_existing_mode(tmp_path, umask):
    umask(0o022)
    path = tmp_path / "model.safetensors"
    atomic_write_text(path, "old")
    os.chmod(path, 0o640)
    atomic_write_text(path, "new")
    assert path.read_text() == "new"
    assert _mode(path) == 0o640


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_failed_write_leaves_nothing_and_keeps_old_file(tmp_path, error):
    path = tmp_path / "out.txt"
    atomic_write_text(path, "complete")

    def half_write(temporary):
        temporary.write_text("half")
        raise error("interrupted")

    with pytest.raises(error):
        atomic_write(path, half_write)
    with pytest.raises(error):
        with atomic_open(path, "w") as handle:
            handle.write("half")
            raise error("interrupted")
    assert path.read_text() == "complete"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_failed_first_write_creates_nothing(tmp_path):
    with pytest.raises(ValueError):
        atomic_write(tmp_path / "sub" / "new.bin", lambda t: (_ for _ in ()).throw(ValueError("no")))
    assert list((tmp_path / "sub").iterdir()) == []


def test_remove_stale_temporaries(tmp_path):
    stale = [tmp_path / ".restart.safetensors.0a1b2c3d.tmp.safetensors", tmp_path / ".log.csv.deadbeef.tmp.csv",
             tmp_path / ".notes.0a1b2c3d.tmp"]
    kept = [tmp_path / "restart.safetensors", tmp_path / "data.tmp", tmp_path / ".hidden", tmp_path / ".x.tmp.y.z"]
    for path in stale + kept:
        path.write_text("x")
    assert all(is_temporary_name(p.name) for p in stale)
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(removed) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in kept)


def test_temporary_name_matches_what_atomic_path_makes(tmp_path):
    seen = []
    atomic_write(tmp_path / "m.safetensors", lambda t: (seen.append(t.name), t.write_bytes(b"1")))
    assert is_temporary_name(seen[0]) and seen[0].endswith(".safetensors")
