"""Output folder: run manifest and atomically written chunk files.

Layout of ``OUT/``::

    manifest.json            settings hash, input identity, full settings
    chunks/chunk_00000.csv   one CSV per finished chunk (rows + molblocks)
    scored.csv top.sdf report.html   written by the merge

A chunk file appears only once complete (written through
:func:`molequi.utils.atomic_open`), so after an interruption every chunk file present is whole
and a rerun skips it.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

from molequi.errors import OutputPathError, ResumeMismatchError
from molequi.utils import (
    atomic_open,
    atomic_write_text,
    identity_changes,
    locked_directory,
    remove_stale_temporaries,
)

MANIFEST = "manifest.json"
CHUNK_DIR = "chunks"
OUTPUT_FILES = ("scored.csv", "top.sdf", "report.html")

# molblocks are long CSV fields
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


def format_value(value: object) -> str:
    """Deterministic text form of a cell (``""`` for missing, 8 significant digits for floats)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) or type(value).__name__.startswith("float"):
        value = float(value)  # numpy floats too
        return "" if math.isnan(value) else format(value, ".8g")
    return str(value)


def write_csv_atomic(path: Path, columns: Sequence[str], rows: Iterable[Mapping[str, object]]) -> None:
    """Write rows to ``path`` atomically (:func:`molequi.utils.atomic_open`)."""
    with atomic_open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([format_value(row.get(c)) for c in columns])


def read_csv_rows(path: Path) -> Iterator[dict[str, str]]:
    """Rows of a CSV written by :func:`write_csv_atomic`, as dicts of strings."""
    with open(path, newline="", encoding="utf-8") as handle:
        yield from csv.DictReader(handle)


def chunk_path(out: Path, k: int) -> Path:
    """Path of chunk ``k`` (0-based) in an output folder."""
    return out / CHUNK_DIR / f"chunk_{k:05d}.csv"


def finished_chunks(out: Path) -> set[int]:
    """Indices of the chunk files already complete in ``out``."""
    folder = out / CHUNK_DIR
    if not folder.is_dir():
        return set()
    return {int(p.stem.split("_")[1]) for p in folder.glob("chunk_*.csv")}


def _clear(out: Path) -> None:
    """Remove what a previous run wrote (and only that)."""
    shutil.rmtree(out / CHUNK_DIR, ignore_errors=True)
    for name in (MANIFEST, *OUTPUT_FILES):
        (out / name).unlink(missing_ok=True)


def check_out_dir(out: Path) -> None:
    """Refuse an output folder that is a file, or lies under one (:class:`OutputPathError`)."""
    for path in (out, *out.parents):
        if path.exists():
            if not path.is_dir():
                what = "is a file" if path == out else f"lies under {path}, which is a file"
                raise OutputPathError(f"output folder {out} {what}; give a folder")
            return


def _change_name(path: str) -> str:
    """A recorded chunk setting's path in a user's words (``"content of input file 1 (sha256)"``)."""
    if path.startswith("input.sha256"):
        index = path[len("input.sha256"):].strip("[]")
        return (f"content of input file {int(index) + 1}" if index else "input files") + " (sha256)"
    if path.startswith("scorers") and path.endswith("fingerprint"):
        return f"content of the model(s) of scorer {path[len('scorers['):].split(']')[0]} (sha256)"
    return path.removeprefix("stage.")


def prepare_out_dir(out: Path, chunk_hash: str, manifest: dict, overwrite: bool) -> bool:
    """Create or reuse ``out``; returns True when finished chunks are being resumed.

    Raises :class:`ResumeMismatchError`, naming what changed, if ``out`` holds a run made with
    other chunk settings or another input or other models (identified by content), unless
    ``overwrite`` is set (then that run is deleted).
    """
    check_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / MANIFEST
    resuming = False
    if overwrite:
        _clear(out)
    elif path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(old, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as error:
            raise ResumeMismatchError(f"{path} is unreadable ({error}); rerun with --overwrite to start afresh") from None
        if old.get("chunk_hash") != chunk_hash:
            changes = identity_changes(old.get("chunk_settings", {}), manifest["chunk_settings"], _change_name)
            raise ResumeMismatchError(
                f"{out} holds a screening run made with different settings or inputs "
                f"({'; '.join(changes[:6]) or 'an older manifest'}{'; ...' if len(changes) > 6 else ''}); "
                "use another output folder, or --overwrite (overwrite=True) to replace it")
        resuming = bool(finished_chunks(out))
    elif (out / CHUNK_DIR).exists():
        raise ResumeMismatchError(f"{out}/{CHUNK_DIR} exists without a manifest; use --overwrite")
    (out / CHUNK_DIR).mkdir(exist_ok=True)
    for stale in (out / CHUNK_DIR).glob("*.tmp"):
        stale.unlink()  # half-written chunk of an interrupted run (older releases' temporary name)
    remove_stale_temporaries(out / CHUNK_DIR)  # ... and of atomic_path's
    remove_stale_temporaries(out)
    atomic_write_text(path, json.dumps(manifest, indent=2, sort_keys=True, default=str))
    return resuming


@contextmanager
def locked_out_dir(out: Path) -> Iterator[None]:
    """Hold the run-directory lock (:func:`molequi.utils.locked_directory`, as ``train`` and ``md``
    do) on ``out`` for a whole run: a second run into the same folder is refused at once instead
    of deleting or mixing the first one's chunk files. The lock dies with its process."""
    check_out_dir(out)
    with locked_directory(out, "screen"):
        yield
