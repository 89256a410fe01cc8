"""Small helpers shared across the package."""

from __future__ import annotations

import difflib
import os
import re
import secrets
import stat
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def closest_name(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest valid name, or an empty string."""
    match = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean '{match[0]}'?)" if match else ""


#: Marker in the names of temporary files written by :func:`atomic_path` (hidden files
#: ``.NAME.TOKEN.tmp[.SUFFIX]`` beside their target).
_TEMPORARY_NAME = re.compile(r"^\..+\.[0-9a-z]{8}\.tmp(\.[^./]+)?$")


def _new_file_mode(path: Path) -> int | None:
    """Mode to give a rewritten ``path``: the existing file's, or None for a new one (umask applies)."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return None


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (best effort: some filesystems refuse)."""
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and move it onto ``path``.

    The one way molequi writes a file that must never be seen half-written (models, restarts,
    checkpoints, caches, reports):

    - the temporary file ``.NAME.TOKEN.tmp.SUFFIX`` lives in the same folder (so ``os.replace``
      is atomic) and keeps the suffix (for writers that pick a format from it);
    - it is created like a plain ``open(path, "w")`` would: mode ``0o666 & ~umask`` for a new
      file, the existing file's mode when replacing one (collaborators keep read access);
    - its bytes are fsynced before the rename and the folder after it;
    - on any exception (Ctrl-C included) it is removed; a process killed outright can leave it
      behind: :func:`remove_stale_temporaries` clears such leftovers from a folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = _new_file_mode(path)
    while True:
        token = secrets.token_hex(4)
        temporary = path.parent / f".{path.name}.{token}.tmp{path.suffix}"
        try:
            handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 if mode is None else mode)
            break
        except FileExistsError:
            continue
    try:
        os.close(handle)
        if mode is not None:
            os.chmod(temporary, mode)  # the umask narrowed it at creation
        yield temporary
        # the writer may have replaced the file (new inode): sync whatever is there now
        handle = os.open(temporary, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)
        os.replace(temporary, path)
        _fsync_directory(path.parent)
    finally:
        temporary.unlink(missing_ok=True)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(temporary_path)`` and move the result to ``path`` only when it succeeded.

    See :func:`atomic_path` for the guarantees (atomic, fsynced, umask-respecting, no leftovers).
    """
    with atomic_path(path) as temporary:
        write(temporary)
    return Path(path)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_path`)."""
    return atomic_write(path, lambda temporary: temporary.write_text(text, encoding=encoding))


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    return atomic_write(path, lambda temporary: temporary.write_bytes(data))


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """``open()`` for writing whose result appears at ``path`` only once the block succeeded."""
    if not mode.startswith(("w", "x")):
        raise ValueError(f"atomic_open writes a whole new file; mode {mode!r} is not a write mode")
    with atomic_path(path) as temporary, open(temporary, mode.replace("x", "w"), **kwargs) as handle:
        yield handle


def is_temporary_name(name: str) -> bool:
    """True for the name of a temporary file made by :func:`atomic_path`."""
    return bool(_TEMPORARY_NAME.match(name))


def remove_stale_temporaries(folder: str | Path, recursive: bool = False) -> list[Path]:
    """Delete temporary files left in ``folder`` by a process killed mid-write; return them.

    Call it only on a folder the caller owns (a locked run directory): another process's write
    in progress would otherwise lose its temporary file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    candidates = folder.rglob(".*.tmp*") if recursive else folder.glob(".*.tmp*")
    removed = []
    for candidate in candidates:
        if is_temporary_name(candidate.name) and candidate.is_file():
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


def cpu_model() -> str:
    """The CPU's marketing name from ``/proc/cpuinfo`` (Linux), else the architecture."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str = "cpu") -> dict[str, object]:
    """What a benchmark ran on: CPU, cores, load, torch, GPU (when ``device`` is CUDA), molequi commit.

    Benchmarks write this beside their figures so that every number names its machine.
    """
    import importlib.metadata
    import platform
    import subprocess

    import torch

    info: dict[str, object] = {
        "cpu": cpu_model(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "python": platform.python_version(), "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", ""),
        # the benchmark machine may be shared: wall-clock rates depend on its load
        "loadavg_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") and torch.cuda.is_available() else None,
    }
    try:
        info["molequi"] = importlib.metadata.version("molequi")
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        info["git_commit"] = subprocess.run(
            ["git", "-C", str(Path(__file__).resolve().parents[1]), "rev-parse", "HEAD"],
            capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return info
