"""Streaming readers of candidate molecules.

Every reader is a generator of :class:`Candidate` so that files of any size
are never held in memory.  Supported inputs (each optionally ``.gz``):

* ``.smi``/``.smiles``/``.txt`` (and anything unknown): ``SMILES [name]`` per line
* ``.csv``/``.tsv``: a SMILES column (``smiles``/``SMILES``/``canonical_smiles``
  detected, or given) and an optional id column
* ``.sdf``/``.sd``: records are turned into isomeric SMILES; the title line is the id
* built-in pools: ``moses:train``, ``moses:test``, ``moses:test_scaffolds``
  (CSV files inside the ``molsets`` wheel) and ``qm9`` (CSV files of ``qm9pack``)

File-level problems (missing file, missing SMILES column, no record at all)
raise ``ValueError``/``FileNotFoundError`` when the source is opened; a bad
molecule is *not* an error here -- it is passed on and recorded downstream.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import io
import itertools
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

SMILES_COLUMNS: tuple[str, ...] = ("smiles", "SMILES", "canonical_smiles", "Smiles")
ID_COLUMNS: tuple[str, ...] = ("id", "ID", "name", "Name", "zinc_id", "mol_id")
BUILTIN_POOLS: tuple[str, ...] = ("moses:train", "moses:test", "moses:test_scaffolds", "qm9")
from molequi.errors import DataFormatError, InputFileError, MissingDependencyError
from molequi.utils import file_digest


class Candidate(NamedTuple):
    """One input record: 0-based position in the input, id and SMILES as read, and why the
    record could not be read (``""`` when it could; the row then fails at the read stage)."""

    index: int
    id: str
    smiles: str
    error: str = ""


def _package_dir(package: str) -> Path:
    """Directory of an installed package, found without importing it.

    ``moses`` is located this way because importing it pulls dependencies
    (its stale pins) that we deliberately do not install.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            f"built-in pool needs the {package!r} package; install it "
            f"({'pip install --no-deps molsets' if package == 'moses' else 'pip install qm9pack'})")
    return Path(next(iter(spec.submodule_search_locations)))


def builtin_pool_files(name: str) -> list[Path]:
    """Files of a built-in pool (``moses:train`` ...); ``ValueError`` if unknown."""
    if name.startswith("moses:"):
        split = name.split(":", 1)[1]
        if split not in ("train", "test", "test_scaffolds"):
            raise DataFormatError(f"unknown MOSES split {split!r}; use one of {BUILTIN_POOLS}")
        return [_package_dir("moses") / "dataset" / "data" / f"{split}.csv.gz"]
    if name == "qm9":
        data = _package_dir("qm9pack") / "data"
        return sorted(data.glob("qm9_part*.csv"))
    raise DataFormatError(f"unknown built-in pool {name!r}; use one of {BUILTIN_POOLS}")


def _open_text(path: Path) -> io.TextIOBase:
    """Open a (possibly gzipped) text file for streaming reads."""
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace", newline="")
    return open(path, encoding="utf-8", errors="replace", newline="")


def detect_format(path: Path) -> str:
    """``"csv"``, ``"tsv"``, ``"sdf"`` or ``"smi"`` from the file name (``.gz`` ignored)."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    ext = suffixes[-1] if suffixes else ""
    return {".csv": "csv", ".tsv": "tsv", ".sdf": "sdf", ".sd": "sdf", ".mol": "sdf"}.get(ext, "smi")


def _pick_column(header: Sequence[str], wanted: str | None, candidates: Sequence[str],
                 what: str, path: Path, required: bool) -> int | None:
    """Index of the wanted (or auto-detected) column, with a clear error if missing."""
    if wanted is not None:
        if wanted not in header:
            raise DataFormatError(f"{path}: no {what} column {wanted!r}; columns are {list(header)}")
        return header.index(wanted)
    for name in candidates:
        if name in header:
            return header.index(name)
    if required:
        raise DataFormatError(
            f"{path}: no {what} column found (looked for {list(candidates)}); columns are "
            f"{list(header)} -- pass smiles_column=... / --smiles-column")
    return None


def _parse_line(line: str, delimiter: str) -> list[str]:
    """Fields of one CSV/TSV line; ``csv.Error`` when it cannot stand alone (an unbalanced
    quote, a NUL byte)."""
    return next(csv.reader([line], delimiter=delimiter, strict=True), [])


def _read_table(path: Path, delimiter: str, smiles_column: str | None,
                id_column: str | None) -> Iterator[tuple[str | None, str, str]]:
    """(name, smiles, error) from a CSV/TSV file, streaming, one record per line.

    Each line is parsed on its own (SMILES never span lines), so an unbalanced quote spoils
    only its own line -- reported with its line number as the record's error -- instead of
    swallowing every following record into one field as a whole-file CSV parse would.
    """
    with _open_text(path) as handle:
        header = None
        for header_line, text in enumerate(handle, start=1):
            if text.strip():
                try:
                    header = [h.strip() for h in _parse_line(text, delimiter)]
                except csv.Error as error:
                    raise DataFormatError(f"{path}: unreadable header line {header_line} ({error})") from None
                break
        if header is None:
            raise DataFormatError(f"{path}: empty file")
        s_col = _pick_column(header, smiles_column, SMILES_COLUMNS, "SMILES", path, True)
        i_col = _pick_column(header, id_column, ID_COLUMNS, "id", path, False)
        for number, text in enumerate(handle, start=header_line + 1):
            if not text.strip():
                continue
            try:
                row = _parse_line(text, delimiter)
            except csv.Error as error:
                why = "unbalanced quote" if "end of data" in str(error) else str(error).replace(";", ",")
                yield f"line{number}", "", f"unreadable_line:{number}:{why}"
                continue
            smiles = row[s_col].strip() if s_col < len(row) else ""
            name = row[i_col].strip() if i_col is not None and i_col < len(row) else None
            yield name or None, smiles, ""


def _read_smi(path: Path) -> Iterator[tuple[str | None, str, str]]:
    """(name, smiles) from a ``SMILES [name]`` file; ``#`` comments and a header line skipped."""
    with _open_text(path) as handle:
        for n, line in enumerate(handle):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split(None, 1)
            if n == 0 and parts[0].lower() in ("smiles", "canonical_smiles"):
                continue  # header line
            yield (parts[1].strip() if len(parts) > 1 else None), parts[0], ""


def _read_sdf(path: Path) -> Iterator[tuple[str | None, str, str]]:
    """(title, isomeric SMILES) from an SD file; unreadable records give SMILES ``""``."""
    from rdkit import Chem, rdBase

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle, rdBase.BlockLogs():
        for mol in Chem.ForwardSDMolSupplier(handle, sanitize=True, removeHs=True):
            if mol is None:
                yield None, "", ""  # recorded downstream as invalid
                continue
            title = mol.GetProp("_Name").strip() if mol.HasProp("_Name") else ""
            yield title or None, Chem.MolToSmiles(mol), ""


@dataclass
class CandidateSource:
    """A re-iterable stream of :class:`Candidate` from a file or a built-in pool.

    Opening it checks the file eagerly (exists, has a SMILES column, has at
    least one record) so that users get the error before any work starts.
    """

    source: str
    smiles_column: str | None = None
    id_column: str | None = None

    def __post_init__(self) -> None:
        self.source = str(self.source)
        if self.source in BUILTIN_POOLS or self.source.startswith("moses:"):
            self.files = builtin_pool_files(self.source)
            if self.source == "qm9" and self.id_column is None:
                self.id_column = "Index"
        else:
            path = Path(self.source).expanduser()
            if not path.is_file():
                raise InputFileError(f"candidate file not found: {path}")
            self.files = [path.resolve()]
        missing = [f for f in self.files if not f.is_file()]
        if missing or not self.files:
            raise DataFormatError(f"{self.source}: data files missing {missing or '(none found)'}")
        if next(iter(self), None) is None:
            raise DataFormatError(f"{self.source}: no candidate molecules found (empty input)")

    def describe(self) -> dict:
        """Where the input is, for the run manifest (paths and sizes in bytes; not its identity)."""
        return {"source": self.source,
                "files": [str(f) for f in self.files],
                "bytes": [os.path.getsize(f) for f in self.files],
                "smiles_column": self.smiles_column, "id_column": self.id_column}

    def identity(self) -> dict:
        """Identity of the input by content: the SHA-256 of every file and the columns read.

        A resume compares it, so an input edited in place (even to the same size) is noticed;
        the same bytes under another path or name are the same input.
        """
        return {"sha256": [file_digest(f) for f in self.files],
                "smiles_column": self.smiles_column, "id_column": self.id_column}

    def _records(self, path: Path) -> Iterator[tuple[str | None, str, str]]:
        fmt = detect_format(path)
        if fmt in ("csv", "tsv"):
            return _read_table(path, "," if fmt == "csv" else "\t", self.smiles_column, self.id_column)
        if fmt == "sdf":
            return _read_sdf(path)
        return _read_smi(path)

    def count(self) -> int:
        """Number of records, without parsing any molecule (for a progress total): lines of a
        SMILES file, rows of a table, ``$$$$`` lines of an SD file."""
        n = 0
        for path in self.files:
            if detect_format(path) == "sdf":
                opener = gzip.open if path.suffix == ".gz" else open
                with opener(path, "rb") as handle:
                    n += sum(1 for line in _readable(iter(handle), self.source) if line.startswith(b"$$$$"))
            else:
                n += sum(1 for _ in _readable(self._records(path), self.source))
        return n

    def __iter__(self) -> Iterator[Candidate]:
        records = _readable(itertools.chain.from_iterable(self._records(f) for f in self.files), self.source)
        prefix = "qm9:" if self.source == "qm9" else ""
        for index, (name, smiles, error) in enumerate(records):
            yield Candidate(index, f"{prefix}{name}" if name else f"mol{index}", smiles, error)


def _readable(records: Iterator, source: str) -> Iterator:
    """``records``, with a file that cannot be decompressed or read (not gzip after all, cut off,
    unreadable) reported as a :class:`DataFormatError` naming the input."""
    try:
        yield from records
    except (OSError, EOFError, zlib.error) as error:
        if isinstance(error, OSError) and not isinstance(error, gzip.BadGzipFile) and error.errno is not None:
            raise  # a user's path problem (permission ...): reported as such by the CLI
        raise DataFormatError(f"{source}: unreadable input ({type(error).__name__}: {error})") from None


def chunked(candidates: Iterator[Candidate], size: int) -> Iterator[list[Candidate]]:
    """Consecutive lists of ``size`` candidates (the last one may be shorter)."""
    iterator = iter(candidates)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk
