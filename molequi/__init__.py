"""molequi: E(3)-equivariant interatomic potentials, fast molecular dynamics, molecule screening.

Quick use::

    import ase.io, molequi
    model = molequi.load_model("run/model.molequi", device="cpu")
    result = molequi.predict(model, ase.io.read("molecule.xyz"))
    result["energy"]   # eV
    result["forces"]   # [n_atoms, 3], eV/Å
"""

from __future__ import annotations

import importlib
from typing import Any

from molequi.version import __version__

# Imported on first use: torch and e3nn take seconds to import, and screening workers (Dask
# processes) that only run RDKit should not pay for them.
_LAZY = {
    "MolequiError": "molequi.errors",
    "ModelConfig": "molequi.models",
    "build_model": "molequi.models",
    "load_model": "molequi.models",
    "predict": "molequi.models",
    "save_model": "molequi.models",
    "MolequiCalculator": "molequi.calculators",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'molequi' has no attribute {name!r}")
