"""Readers that turn data sources into labelled ``ase.Atoms`` (energy eV, forces eV/Å).

One module per format, each exposing a :class:`~molequi.data.readers.base.Reader`; they are
registered here, in the order they are asked (first claim wins):

==========  ==========================================================  ====================
name        source                                                      module
==========  ==========================================================  ====================
``qm9``     the spec ``qm9[:SPLIT][?n=N&seed=S]`` (not an existing      :mod:`.qm9`
            file of that name)
``rmd17``   ``*.npz`` in the revised-MD17 layout (kcal/mol -> eV)       :mod:`.rmd17`
``ase-db``  ``*.db`` ASE databases                                      :mod:`.ase_db`
``ase``     anything ``ase.io.read`` understands (extxyz first)         :mod:`.ase_io`
==========  ==========================================================  ====================

A new format is one module with a ``READER`` and one :func:`register_reader` call.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from ase import Atoms

from molequi.data.labels import LabelKeys, apply_label_keys, labelled_atoms, require_labels
from molequi.data.readers import ase_db, ase_io, qm9, rmd17
from molequi.data.readers.ase_db import read_ase_db
from molequi.data.readers.base import Reader
from molequi.data.readers.rmd17 import KCAL_PER_MOL_IN_EV, RMD17_KEYS, read_rmd17
from molequi.errors import DataFormatError

READERS: list[Reader] = [qm9.READER, rmd17.READER, ase_db.READER, ase_io.READER]
"""The registered readers, asked in this order; the last (``ase``) claims everything."""

__all__ = [
    "KCAL_PER_MOL_IN_EV",
    "LabelKeys",
    "READERS",
    "RMD17_KEYS",
    "Reader",
    "labelled_atoms",
    "read_ase_db",
    "read_rmd17",
    "read_structures",
    "reader_for",
    "register_reader",
    "require_labels",
]


def register_reader(reader: Reader) -> None:
    """Add ``reader`` (replacing one of the same name), asked before the ``ase`` fallback."""
    READERS[:] = [r for r in READERS if r.name != reader.name]
    READERS.insert(len(READERS) - 1 if READERS and READERS[-1].name == "ase" else len(READERS), reader)


def reader_for(source: str | Path) -> Reader:
    """The first registered reader that claims ``source``."""
    for reader in READERS:
        if reader.claims(str(source)):
            return reader
    raise DataFormatError(f"{source}: no reader for this source (formats: {', '.join(r.name for r in READERS)})")


def check_data_file(path: str | Path) -> None:
    """Raise :class:`DataFormatError` for a data file no reader can use: missing, empty, or an
    ``.npz`` / ``.db`` whose bytes are not a zip archive / a database (a folder, such as an ASE
    BundleTrajectory, is left to its reader)."""
    path = Path(path)
    if not path.exists():
        raise DataFormatError(f"{path}: no such file")
    if not path.is_file():
        return
    if path.stat().st_size == 0:
        raise DataFormatError(f"{path}: the file is empty")
    with open(path, "rb") as handle:
        head = handle.read(16)
    if path.suffix == ".npz" and not zipfile.is_zipfile(path):
        kind = " (it is a single .npy array: save with numpy.savez)" if head.startswith(b"\x93NUMPY") else ""
        raise DataFormatError(f"{path}: not an .npz archive{kind}")
    if path.suffix == ".db" and not head.startswith(b"SQLite format 3\x00") and not head.lstrip().startswith(b"{"):
        raise DataFormatError(f"{path}: not an ASE database (neither SQLite nor JSON)")


def read_structures(path: str | Path, index: str = ":", keys: LabelKeys | None = None) -> list[Atoms]:
    """Read labelled structures from any registered format (see the module docstring).

    ``index`` selects frames (ASE slice syntax) where the format has frames; ``keys`` names the
    labels' keys when they are not ASE's ``energy``/``forces``/``stress`` (e.g. MACE's
    ``REF_energy``), see :func:`molequi.data.labels.apply_label_keys`.

    Raises:
        DataFormatError: the file is missing, unreadable or holds no structures.
    """
    import sqlite3

    from ase.io.formats import UnknownFileTypeError

    reader = reader_for(path)
    if reader.needs_file:
        check_data_file(path)
    try:
        structures = reader.read(str(path), index)
    except DataFormatError:
        raise
    except (OSError, ValueError, KeyError, IndexError, StopIteration, zipfile.BadZipFile, UnknownFileTypeError,
            sqlite3.DatabaseError, AttributeError, TypeError) as error:  # the last two: ASE's parsers on cut files
        raise DataFormatError(f"{path}: cannot read structures ({type(error).__name__}: {error})") from None
    if not structures:
        raise DataFormatError(f"{path}: the file holds no structures")
    return apply_label_keys(structures, keys)
