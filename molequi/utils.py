"""Small helpers shared across the package."""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import stat
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
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
        if mode is None:
            mode = stat.S_IMODE(os.fstat(handle).st_mode)  # 0o666 & ~umask, as open() makes it
        os.close(handle)
        os.chmod(temporary, mode)  # the umask narrowed an existing file's mode at creation
        yield temporary
        # a writer that replaces the file (safetensors, torch.save of some versions write their own
        # 0600 temporary) must not narrow its mode: collaborators keep read access
        os.chmod(temporary, mode)
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


def write_json(data: Any, path: str | Path) -> Path:
    """Write ``data`` as indented JSON (with a final newline) to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(data, indent=2) + "\n")


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


LOCK_NAME = ".molequi.lock"
"""The lock file a run holds in its output directory."""


@contextmanager
def locked_directory(path: str | Path, command: str) -> Iterator[Path]:
    """Hold an exclusive ``fcntl.flock`` on ``path/.molequi.lock`` for the block.

    A second run on the same directory gets a one-line :class:`~molequi.errors.ConfigError`
    at once (it never waits, and never writes there). The lock file is removed when the block
    ends, however it ends (return, exception, Ctrl-C, ``SystemExit``; the ``molequi`` command
    turns SIGTERM into ``SystemExit``). A run killed outright (SIGKILL, power loss) leaves the
    file but not the lock, which is the kernel's and dies with the process: the next run takes
    the file over and prints a note naming the dead run.
    """
    from molequi.errors import ConfigError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{path} is a file, not a directory; choose another output directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"cannot use {path} as the output directory: {error.strerror or error}") from None
    handle, previous = _acquire_lock(path / LOCK_NAME, path)
    try:
        if previous:
            print(f"note: {path}: {stale_lock_note(previous)}", file=sys.stderr)
        os.ftruncate(handle, 0)
        os.pwrite(handle, f"molequi {command}, pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        yield path
    finally:
        # unlink while still holding the lock, so no other run can lock this file in between
        with contextlib.suppress(OSError):
            os.unlink(path / LOCK_NAME)
        os.close(handle)  # releases the lock


def _acquire_lock(lock: Path, folder: Path) -> tuple[int, str]:
    """Open and ``flock`` ``lock`` (non-blocking); return the descriptor and the holder line a
    dead run left in it ('' when the file is new or empty).

    A run that ends unlinks its lock file: a process that opened the file just before is left
    holding a lock on a file no longer in the folder, so the lock counts only once the path
    still names the locked file (else open the new one and try again).
    """
    import fcntl

    from molequi.errors import ConfigError

    for _ in range(100):
        try:
            handle = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as error:
            raise ConfigError(f"cannot use {folder} as the output directory: {error.strerror or error}") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(handle, 200, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(handle)
            raise ConfigError(f"{folder} is in use by another run ({holder}); wait for it to finish "
                              "or choose another output directory") from None
        try:
            same = os.path.samestat(os.fstat(handle), os.stat(lock))
        except FileNotFoundError:
            same = False
        if same:
            return handle, os.pread(handle, 200, 0).decode("utf-8", "replace").strip()
        os.close(handle)
    raise ConfigError(f"{folder}: could not take the run lock {lock} (other runs keep replacing it)")


def stale_lock_note(holder: str) -> str:
    """What to say on taking over a lock file that ``holder`` (its text: ``molequi train, pid N
    on HOST``) left behind; we hold the flock, so that run no longer holds it."""
    match = re.search(r"pid (\d+)(?: on (\S+))?", holder)
    if match and match[2] in (None, socket.gethostname()) and not is_alive(int(match[1])):
        return f"took over a stale lock ({holder}: that process is no longer running)"
    return f"took over a stale lock ({holder}: that run no longer holds it)"


def is_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim_run_directory(
    path: str | Path, command: str, outputs: Sequence[str], resume: bool = False, overwrite: bool = False,
    resume_marker: str | None = None, caches: Sequence[str] = (),
) -> contextlib.AbstractContextManager[Path]:
    """Lock ``path`` (see :func:`locked_directory`) and check it suits a new run or a resume.

    - ``resume``: ``resume_marker`` (a file of ``outputs``) must be there.
    - a new run: the directory must be empty (bar the lock file) — an earlier run's files are
      never silently replaced — unless ``overwrite``, which deletes the files and folders
      matching the glob patterns ``outputs`` (and only those: never a user's other files).
    - ``caches``: names of entries that are content-keyed caches (reusable by any run, e.g.
      ``baseline_cache``): they never count as an earlier run's files.

    Temporary files left by a killed run's interrupted writes are removed in either case.
    Returns a context manager; the checks run when it is entered, under the lock.
    """
    from molequi.errors import ConfigError

    path = Path(path)

    @contextmanager
    def claim() -> Iterator[Path]:
        with locked_directory(path, command):
            removed = remove_stale_temporaries(path, recursive=True)
            if resume:
                if resume_marker and not (path / resume_marker).exists():
                    raise ConfigError(f"nothing to resume in {path}: {path / resume_marker} does not exist "
                                      "(start the run without --resume)")
            else:
                present = sorted(p.name for p in path.iterdir()
                                 if p.name != LOCK_NAME and p.name not in caches and p not in removed)
                if present and not overwrite:
                    shown = ", ".join(present[:4]) + (", ..." if len(present) > 4 else "")
                    raise ConfigError(f"{path} already holds files ({shown}); pass --resume to continue that run, "
                                      "--overwrite to replace its outputs, or choose another output directory")
                for pattern in outputs if overwrite else ():
                    for old in path.glob(pattern):
                        if old.is_dir() and not old.is_symlink():
                            shutil.rmtree(old)
                        else:
                            old.unlink(missing_ok=True)
            yield path

    return claim()


def file_digest(path: str | Path) -> str:
    """sha256 (hex) of a file's bytes: identifies an input or a model by content, not by name."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def text_digest(text: str) -> str:
    """sha256 (hex) of a string (a resolved dataset spec, a JSON of settings)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def json_digest(data: object) -> str:
    """sha256 (hex) of a JSON-serialisable object, independent of key order (settings, manifests)."""
    return text_digest(json.dumps(data, sort_keys=True, separators=(",", ":"), default=str))


def files_digest(paths: Iterable[str | Path]) -> str:
    """sha256 (hex) of several files' contents, in order (a set of inputs, by content)."""
    return text_digest(":".join(file_digest(path) for path in paths))


def arrays_digest(groups: Iterable[Iterable[Any]]) -> str:
    """sha256 (hex) of groups of arrays (their bytes, each group closed by a separator)."""
    import numpy as np

    digest = hashlib.sha256()
    for group in groups:
        for array in group:
            digest.update(np.ascontiguousarray(array).tobytes())
        digest.update(b"|")
    return digest.hexdigest()


def structures_digest(structures: Iterable[Any], labels: Callable[[Any], Iterable[Any]] | None = None) -> str:
    """sha256 (hex) of structures by content: atomic numbers, positions (Å), cell (Å) and
    periodicity of each ``ase.Atoms``-like object, in order, whatever file or frame selection they
    came from; ``labels(atoms)`` adds float64 arrays (energy eV, forces eV/Å) to each structure."""
    import numpy as np

    def arrays(atoms: Any) -> list:
        own = [np.asarray(atoms.numbers, dtype=np.int64), np.asarray(atoms.positions, dtype=np.float64),
               np.asarray(atoms.cell.array, dtype=np.float64), np.asarray(atoms.pbc, dtype=bool)]
        return own + [np.asarray(x, dtype=np.float64) for x in (labels(atoms) if labels else ())]

    return arrays_digest(arrays(atoms) for atoms in structures)


def identity_changes(old: object, new: object, name: Callable[[str], str] | None = None, path: str = "") -> list[str]:
    """What differs between two recorded identities of a run (nested JSON values: settings,
    content hashes), in words, one ``"WHAT OLD -> NEW"`` per differing value (a long hash
    shortened to its first 12 characters); ``name(path)`` words a value's path
    (``"stage.sa_max"``, ``"input.sha256[0]"``) for the caller's users. Every resume check words
    its refusal with these."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [change for key in sorted(set(old) | set(new), key=str)
                for change in identity_changes(old.get(key), new.get(key), name, f"{path}.{key}" if path else str(key))]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [change for k, (a, b) in enumerate(zip(old, new))
                for change in identity_changes(a, b, name, f"{path}[{k}]")]
    if old == new:
        return []

    def short(value: object) -> str:
        text = json.dumps(value, default=str)
        return text[:13] + '..."' if isinstance(value, str) and len(value) == 64 else text[:60]

    return [f"{name(path) if name else path} {short(old)} -> {short(new)}"]


DIGEST_KEY = "content_sha256"
"""Metadata key of the checksum in molequi's safetensors files (models, MD restarts)."""


def tensors_digest(tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> str:
    """sha256 (hex) over named tensors (name, dtype, shape, bytes) and string metadata.

    Stored in a file's header when it is written and recomputed when it is read, it detects
    flipped or truncated bytes in weights and header values alike (the ``DIGEST_KEY`` entry
    itself is left out of the metadata hashed).
    """
    import torch

    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{str(tensor.dtype)}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    for key in sorted(metadata or {}):
        if key != DIGEST_KEY:
            digest.update(f"{key}={metadata[key]}\n".encode())
    return digest.hexdigest()


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
