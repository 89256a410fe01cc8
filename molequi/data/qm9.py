"""QM9 (130,831 small organic molecules, B3LYP/6-31G(2df,p)) as labelled ``ase.Atoms``.

The data come from the CSV files shipped inside the ``qm9pack`` wheel
(``pip install 'molequi[qm9]'``). Only its data files are read; its Python modules are never
imported (they pull in pandas and ``pkg_resources``).

Labels, all in molequi units (energies eV, lengths Å, charges e):

* the total energy (``atoms.get_potential_energy()``) is U0, the internal energy at 0 K, in eV,
  so an ordinary energy model trains on it (atomic reference energies E0 are fitted by the
  usual least-squares code). There are **no forces**: QM9 geometries are relaxed minima.
* ``atoms.info`` holds every graph-level property (see :data:`PROPERTY_UNITS`):

  ==============  =========  ==================================================
  key             unit       meaning
  ==============  =========  ==================================================
  ``U0``          eV         internal energy at 0 K (same as the energy label)
  ``U``           eV         internal energy at 298.15 K
  ``H``           eV         enthalpy at 298.15 K
  ``G``           eV         free energy at 298.15 K
  ``homo``        eV         HOMO energy
  ``lumo``        eV         LUMO energy
  ``gap``         eV         LUMO − HOMO
  ``zpve``        eV         zero-point vibrational energy
  ``dipole_norm`` e·Å        magnitude of the dipole moment (QM9 has no vector)
  ``alpha``       Bohr³      isotropic polarizability (QM9's unit, kept)
  ``r2``          Bohr²      electronic spatial extent (QM9's unit, kept)
  ``cv``          cal/mol/K  heat capacity at 298.15 K (QM9's unit, kept)
  ``smiles``      —          SMILES string of the molecule (from QM9)
  ``index``       —          QM9 molecule number (1..133885, 3054 numbers missing)
  ==============  =========  ==================================================

QM9 stores energies in Hartree; they are converted with ``ase.units.Hartree``; dipoles are
converted from Debye with :data:`DEBYE_IN_E_ANGSTROM`.

The first call parses the CSV files (about 10 s) and caches packed arrays as one ``.npz`` in
``$MOLEQUI_CACHE/qm9/`` (default ``~/.cache/molequi/qm9/``), keyed by the qm9pack version;
later loads read the cache.

Splits (a pure function of ``seed``): the molecules, ordered by QM9 index, are permuted with
``numpy.random.default_rng(seed)``; the first 110,000 are ``train``, the next 10,000
``validation`` and the remaining 10,831 ``test``. ``n`` takes the first ``n`` molecules of the
split in that permuted order, so smaller subsamples are subsets of larger ones (learning
curves) and every subsample stays inside its split.

Data spec strings (accepted by :func:`molequi.data.readers.read_structures`, hence by
``molequi train --data`` / ``--test-data``)::

    qm9[:SPLIT][?KEY=VALUE[&KEY=VALUE...]]

    qm9                       the train split (110,000 molecules)
    qm9:train                 the same
    qm9:validation            10,000 molecules (alias: qm9:val)
    qm9:test                  10,831 molecules
    qm9:all                   all 130,831 molecules
    qm9:train?n=1000          the first 1,000 of the (seed-0) train split
    qm9:test?n=5000&seed=1    a subsample of the test split of the seed-1 split

Keys: ``n`` (subsample size, ≥ 1) and ``seed`` (split seed, default 0). Use the same seed for
the training and the test data, or the test split overlaps the training split.
"""

from __future__ import annotations

import csv
import importlib.metadata
import importlib.util
import os
import re
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.data import atomic_numbers

from molequi.data.labels import labelled_atoms
from molequi.errors import DataFormatError
from molequi.utils import atomic_open

QM9_SIZE = 130_831
"""Molecules in QM9 (133,885 numbers, 3,054 of which failed to converge and are absent)."""

SPLIT_BOUNDS = {"train": (0, 110_000), "validation": (110_000, 120_000), "test": (120_000, QM9_SIZE), "all": (0, QM9_SIZE)}
"""Each split's slice of the seeded permutation of QM9: 110,000 / 10,000 / the rest (10,831)."""

SPLITS = ("train", "validation", "test", "all")
SPLIT_ALIASES = {"val": "validation", "valid": "validation"}

DEBYE_IN_E_ANGSTROM = 0.20819434
"""1 Debye in e·Å."""

HARTREE_IN_EV = units.Hartree
"""1 Hartree in eV (ASE's CODATA value, ≈ 27.2114)."""

PROPERTY_UNITS = {
    "U0": "eV",
    "U": "eV",
    "H": "eV",
    "G": "eV",
    "homo": "eV",
    "lumo": "eV",
    "gap": "eV",
    "zpve": "eV",
    "dipole_norm": "e·Å",
    "alpha": "Bohr³",
    "r2": "Bohr²",
    "cv": "cal/mol/K",
}
"""Float properties in ``atoms.info`` and their units."""

# property -> (qm9pack CSV column, factor to molequi units)
_COLUMNS = {
    "U0": ("InternalEnergy_0K_au", HARTREE_IN_EV),
    "U": ("InternalEnergy_298K_au", HARTREE_IN_EV),
    "H": ("Enthalphy_298K_au", HARTREE_IN_EV),  # sic: the qm9pack column name
    "G": ("GibbsFreeEnergy_298K_au", HARTREE_IN_EV),
    "homo": ("HOMO_au", HARTREE_IN_EV),
    "lumo": ("LUMO_au", HARTREE_IN_EV),
    "gap": ("HOMO_LUMO_gap_au", HARTREE_IN_EV),
    "zpve": ("ZPVE_au", HARTREE_IN_EV),
    "dipole_norm": ("Dipole_debye", DEBYE_IN_E_ANGSTROM),
    "alpha": ("Polarizability_bohr3", 1.0),
    "r2": ("R2_bohr2", 1.0),
    "cv": ("Heatcapacity_Cv_cal_mol_K", 1.0),
}
_CSV_FILES = ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv")
_TEXT_COLUMNS = ("SMILES", "Elements", "XYZ_Ang")
_CACHE_FORMAT = 1  # bump when the cached arrays change meaning
_SPEC = re.compile(r"qm9(?::(?P<split>[A-Za-z_]+))?(?:\?(?P<query>.*))?")

INSTALL_HINT = "QM9 needs the qm9pack package: pip install 'molequi[qm9]'"


class QM9NotInstalledError(DataFormatError):
    """The ``qm9pack`` package (which ships the QM9 data files) is not installed."""


# --------------------------------------------------------------------------------------------
# locating, parsing and caching


def qm9pack_data_dir() -> Path:
    """The ``data`` folder of the installed qm9pack wheel, found without importing qm9pack."""
    try:
        spec = importlib.util.find_spec("qm9pack")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise QM9NotInstalledError(INSTALL_HINT)
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    missing = [name for name in _CSV_FILES if not (data / name).is_file()]
    if missing:
        raise DataFormatError(f"{data}: qm9pack is installed but lacks its data files {missing}; reinstall it")
    return data


def qm9pack_version() -> str:
    """Version of the installed qm9pack (part of the cache key)."""
    qm9pack_data_dir()
    try:
        return importlib.metadata.version("qm9pack")
    except importlib.metadata.PackageNotFoundError:  # importable but without metadata
        return "unknown"


def default_cache_dir() -> Path:
    """``$MOLEQUI_CACHE/qm9``, else ``$XDG_CACHE_HOME/molequi/qm9``, else ``~/.cache/molequi/qm9``."""
    if os.environ.get("MOLEQUI_CACHE"):
        return Path(os.environ["MOLEQUI_CACHE"]).expanduser() / "qm9"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "molequi" / "qm9"


def cache_file(cache_dir: str | Path | None = None) -> Path:
    """The cache file for the installed qm9pack version."""
    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    version = re.sub(r"[^A-Za-z0-9._+-]", "_", qm9pack_version())
    return directory / f"qm9-qm9pack{version}-v{_CACHE_FORMAT}.npz"


@dataclass(frozen=True)
class QM9Arrays:
    """All of QM9 as packed arrays, rows ordered by QM9 index.

    Molecule ``k`` has atoms ``offsets[k]:offsets[k + 1]`` of ``numbers`` and ``positions`` (Å);
    ``properties[name][k]`` is in the unit of :data:`PROPERTY_UNITS`.
    """

    index: np.ndarray  # [n_molecules] int64, QM9 number
    smiles: np.ndarray  # [n_molecules] str
    offsets: np.ndarray  # [n_molecules + 1] int64
    numbers: np.ndarray  # [n_atoms_total] int8
    positions: np.ndarray  # [n_atoms_total, 3] float64, Å
    properties: dict[str, np.ndarray]  # name -> [n_molecules] float64

    def __len__(self) -> int:
        return len(self.index)

    def atoms(self, k: int) -> Atoms:
        """Molecule ``k`` (row, not QM9 index) as labelled ``ase.Atoms``."""
        start, stop = self.offsets[k], self.offsets[k + 1]
        atoms = labelled_atoms(
            self.numbers[start:stop].astype(np.int64), self.positions[start:stop], self.properties["U0"][k], None
        )
        atoms.info.update({name: float(values[k]) for name, values in self.properties.items()})
        atoms.info["smiles"] = str(self.smiles[k])
        atoms.info["index"] = int(self.index[k])
        return atoms


def _strip_brackets(text: str) -> str:
    return text.replace("[", "").replace("]", "")


def _read_columns(path: Path, wanted: list[str]) -> dict[str, list]:
    """The ``wanted`` columns of a CSV file (text columns as lists of str, numbers as str or arrays).

    Uses pandas' C parser when pandas is importable (qm9pack depends on it; ~3x faster than
    the ``csv`` module), else the standard library.
    """
    try:
        import pandas as pd
    except ImportError:
        pd = None
    if pd is not None:
        header = pd.read_csv(path, nrows=0).columns.tolist()
    else:
        with open(path, newline="", encoding="utf-8") as handle:
            header = next(csv.reader(handle), [])
    missing = [column for column in wanted if column not in header]
    if missing:
        raise DataFormatError(f"{path}: missing columns {missing} (qm9pack changed its format?)")
    if pd is not None:
        text = {column: str for column in _TEXT_COLUMNS if column in wanted}
        frame = pd.read_csv(path, usecols=wanted, dtype=text, keep_default_na=False, engine="c")
        return {column: frame[column].tolist() if column in text else frame[column].to_numpy() for column in wanted}
    columns: dict[str, list[str]] = {column: [] for column in wanted}
    at = [(column, header.index(column)) for column in wanted]
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        next(reader)
        for row in reader:
            if row:
                for column, i in at:
                    columns[column].append(row[i])
    return columns


def _parse_floats(text: str) -> np.ndarray:
    """Comma-separated floats (``1.5E-6`` allowed) -> a float64 array."""
    try:
        import pandas as pd
    except ImportError:
        return np.fromstring(text, dtype=np.float64, sep=",")
    import io

    frame = pd.read_csv(io.StringIO(text.replace(",", "\n")), header=None, dtype=np.float64, engine="c")
    return frame[0].to_numpy()


def parse_qm9pack(data_dir: str | Path | None = None) -> QM9Arrays:
    """Parse qm9pack's CSV files (a one-off, some seconds) into :class:`QM9Arrays`."""
    data_dir = Path(data_dir) if data_dir is not None else qm9pack_data_dir()
    value_columns = [column for column, _ in _COLUMNS.values()]
    wanted = ["Index", "SMILES", "N_atoms", "Elements", "XYZ_Ang"] + value_columns
    columns: dict[str, list] = {column: [] for column in wanted}
    for name in _CSV_FILES:
        for column, values in _read_columns(data_dir / name, wanted).items():
            columns[column].append(values)
    columns = {
        column: [x for part in parts for x in part] if column in _TEXT_COLUMNS else np.concatenate(parts)
        for column, parts in columns.items()
    }
    try:
        index_array = np.array(columns["Index"], dtype=np.int64)
        counts = np.array(columns["N_atoms"], dtype=np.int64)
        table = np.stack([np.array(columns[column], dtype=np.float64) for column in value_columns], axis=1)
        positions = _parse_floats(_strip_brackets(",".join(columns["XYZ_Ang"])))
        symbols = _strip_brackets(",".join(columns["Elements"]))
        symbols = symbols.replace("'", "").replace('"', "").replace(" ", "").split(",")
        numbers = np.array([atomic_numbers[s] for s in symbols], dtype=np.int8)
    except (ValueError, KeyError) as error:
        raise DataFormatError(f"{data_dir}: cannot parse the QM9 CSV files ({type(error).__name__}: {error})") from error
    smiles = columns["SMILES"]
    total = int(counts.sum())
    if positions.size != 3 * total or numbers.size != total:
        raise DataFormatError(
            f"{data_dir}: {positions.size // 3} coordinates and {numbers.size} elements for {total} atoms"
        )
    offsets = np.concatenate([[0], np.cumsum(counts)])
    positions = positions.reshape(-1, 3)
    order = np.argsort(index_array, kind="stable")
    if not np.all(order == np.arange(len(order))):  # reorder rows (and their atoms) by QM9 index
        atom_rows = np.concatenate([np.arange(offsets[k], offsets[k + 1]) for k in order])
        numbers, positions = numbers[atom_rows], positions[atom_rows]
        index_array, counts, table = index_array[order], counts[order], table[order]
        smiles = [smiles[k] for k in order]
        offsets = np.concatenate([[0], np.cumsum(counts)])
    properties = {name: table[:, j] * factor for j, (name, (_, factor)) in enumerate(_COLUMNS.items())}
    return QM9Arrays(index_array, np.array(smiles, dtype=str), offsets, numbers, positions, properties)


def _write_cache(arrays: QM9Arrays, path: Path) -> None:
    """Write ``arrays`` to ``path`` atomically (temporary file + rename); warn if impossible."""
    try:
        with atomic_open(path, "wb") as handle:
            np.savez(
                handle,
                index=arrays.index,
                smiles=arrays.smiles,
                offsets=arrays.offsets,
                numbers=arrays.numbers,
                positions=arrays.positions,
                **{f"property_{name}": values for name, values in arrays.properties.items()},
            )
    except OSError as error:
        warnings.warn(f"could not write the QM9 cache {path} ({error}); QM9 will be parsed again next time", stacklevel=3)


def _read_cache(path: Path, keys: tuple[str, ...] | None = None) -> QM9Arrays | dict[str, np.ndarray] | None:
    """The cached arrays (or only ``keys``), or None if the cache is absent or unreadable."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            if keys is not None:
                return {key: archive[key] for key in keys}
            properties = {name: archive[f"property_{name}"] for name in _COLUMNS}
            arrays = QM9Arrays(
                archive["index"], archive["smiles"], archive["offsets"], archive["numbers"], archive["positions"], properties
            )
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        warnings.warn(f"ignoring the unreadable QM9 cache {path} ({type(error).__name__}: {error})", stacklevel=3)
        return None
    if len(arrays) != QM9_SIZE or arrays.offsets[-1] != len(arrays.numbers):
        warnings.warn(f"ignoring the inconsistent QM9 cache {path}", stacklevel=3)
        return None
    return arrays


def load_qm9_arrays(cache_dir: str | Path | None = None, *, use_cache: bool = True) -> QM9Arrays:
    """All of QM9 as packed arrays: from the cache if there is one, else parsed and cached.

    Args:
        cache_dir: folder of the cache file (default :func:`default_cache_dir`).
        use_cache: False parses the CSV files and neither reads nor writes the cache.
    """
    if not use_cache:
        return parse_qm9pack()
    path = cache_file(cache_dir)
    arrays = _read_cache(path)
    if arrays is None:
        arrays = parse_qm9pack()
        if len(arrays) != QM9_SIZE:
            raise DataFormatError(f"qm9pack holds {len(arrays)} molecules, expected {QM9_SIZE}")
        _write_cache(arrays, path)
    return arrays


# --------------------------------------------------------------------------------------------
# splits and the public loaders


def _normalise_split(split: str) -> str:
    split = SPLIT_ALIASES.get(split, split)
    if split not in SPLITS:
        raise DataFormatError(f"unknown QM9 split '{split}'; choose one of {', '.join(SPLITS)}")
    return split


def qm9_split_rows(split: str = "train", seed: int = 0, n: int | None = None) -> np.ndarray:
    """Rows (into :class:`QM9Arrays`, ordered by QM9 index) of a split, in its permuted order.

    A pure function of ``(split, seed, n)``: the first ``n`` rows of a split are a subset of the
    first ``m ≥ n``, and the three splits are disjoint and cover QM9. ``all`` is the
    permutation itself.
    """
    split = _normalise_split(split)
    order = np.random.default_rng(int(seed)).permutation(QM9_SIZE)
    start, stop = SPLIT_BOUNDS[split]
    rows = order[start:stop]
    if n is not None:
        n = int(n)
        if not 1 <= n <= len(rows):
            raise DataFormatError(f"QM9 subsample n={n} is impossible: the {split} split has {len(rows)} molecules")
        rows = rows[:n]
    return rows


def load_qm9(
    split: str = "train", n: int | None = None, seed: int = 0, cache_dir: str | Path | None = None
) -> list[Atoms]:
    """QM9 molecules as labelled ``ase.Atoms`` (energy = U0 in eV, properties in ``atoms.info``).

    Args:
        split: ``"train"`` (110,000), ``"validation"`` (10,000), ``"test"`` (10,831) or ``"all"``.
        n: keep the first ``n`` molecules of the split (seeded order; nested subsets).
        seed: seed of the split (a pure function of it); use one seed for train and test.
        cache_dir: folder of the parsed-data cache (default ``$MOLEQUI_CACHE/qm9`` or
            ``~/.cache/molequi/qm9``).

    Raises:
        QM9NotInstalledError: qm9pack is not installed.
        DataFormatError: unknown split, impossible ``n``, or unreadable data files.
    """
    rows = qm9_split_rows(split, seed, n)
    arrays = load_qm9_arrays(cache_dir)
    return [arrays.atoms(int(k)) for k in rows]


def qm9_smiles(cache_dir: str | Path | None = None) -> Iterator[tuple[int, str]]:
    """``(QM9 index, SMILES)`` of every molecule, in QM9 order (the screening module's pool).

    Reads only two small arrays from the cache when it exists; otherwise parses and caches QM9.
    """
    path = cache_file(cache_dir)
    cached = _read_cache(path, ("index", "smiles"))
    if cached is None:
        arrays = load_qm9_arrays(cache_dir)
        cached = {"index": arrays.index, "smiles": arrays.smiles}
    for index, smiles in zip(cached["index"].tolist(), cached["smiles"].tolist()):
        yield index, smiles


# --------------------------------------------------------------------------------------------
# data spec strings


def is_qm9_spec(spec: str) -> bool:
    """True for ``qm9``, ``qm9:SPLIT``, ``qm9?...`` and ``qm9:SPLIT?...`` (not for ``qm9.xyz``)."""
    return _SPEC.fullmatch(str(spec)) is not None


def parse_qm9_spec(spec: str) -> dict:
    """``"qm9:test?n=5000&seed=1"`` -> ``{"split": "test", "n": 5000, "seed": 1}``.

    Bare ``qm9`` is the train split. Raises :class:`DataFormatError` for anything else.
    """
    match = _SPEC.fullmatch(str(spec))
    if match is None:
        raise DataFormatError(f"'{spec}' is not a QM9 data spec; use qm9[:train|validation|test|all][?n=N&seed=S]")
    options: dict = {"split": _normalise_split(match["split"] or "train"), "n": None, "seed": 0}
    for item in filter(None, (match["query"] or "").split("&")):
        key, sep, value = item.partition("=")
        if key not in ("n", "seed") or not sep:
            raise DataFormatError(f"'{spec}': unknown QM9 option '{item}'; the options are n=N and seed=S")
        try:
            options[key] = int(value)
        except ValueError:
            raise DataFormatError(f"'{spec}': {key} must be an integer, got '{value}'") from None
    return options


def read_qm9(spec: str = "qm9", cache_dir: str | Path | None = None) -> list[Atoms]:
    """The structures named by a QM9 data spec (see the module docstring)."""
    return load_qm9(**parse_qm9_spec(spec), cache_dir=cache_dir)
