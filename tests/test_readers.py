"""The readers registry: dispatch order, extension by registration, and no import cycle."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from ase.build import molecule

from molequi.data import readers
from molequi.data.labels import labelled_atoms
from molequi.data.readers import Reader, read_structures, reader_for, register_reader
from molequi.errors import DataFormatError


def test_dispatch_order(tmp_path):
    assert reader_for("qm9:test?n=3").name == "qm9"
    assert reader_for(tmp_path / "x.npz").name == "rmd17"
    assert reader_for(tmp_path / "x.db").name == "ase-db"
    assert reader_for(tmp_path / "x.extxyz").name == "ase"
    assert reader_for("qm9.xyz").name == "ase"  # a file name, not a spec
    named = tmp_path / "qm9"  # an existing file named like a spec is a file
    named.write_text("")
    assert reader_for(named).name == "ase"


def test_registered_reader_is_asked_before_the_fallback(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "READERS", list(readers.READERS))
    water = molecule("H2O")

    def read_toy(source, index=":"):
        return [labelled_atoms(water.numbers, water.positions, -1.5, np.zeros((3, 3)))]

    register_reader(Reader("toy", "toy format", lambda source: source.endswith(".toy"), read_toy))
    assert [r.name for r in readers.READERS][-2:] == ["toy", "ase"]
    path = tmp_path / "a.toy"
    path.write_text("anything")
    (atoms,) = read_structures(path)
    assert atoms.get_potential_energy() == -1.5
    with pytest.raises(DataFormatError, match="no such file"):
        read_structures(tmp_path / "missing.toy")


@pytest.mark.slow
def test_data_modules_import_in_any_order():
    # the QM9 data set and its reader each imported first in a fresh interpreter: an import
    # cycle between them shows up as an ImportError in one of the two
    for module in ("molequi.data.qm9", "molequi.data.readers.qm9"):
        result = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
