"""molequi: E(3)-equivariant interatomic potentials, fast molecular dynamics, molecule screening.

Quick use::

    import ase.io, molequi
    model = molequi.load_model("run/model.molequi", device="cpu")
    result = molequi.predict(model, ase.io.read("molecule.xyz"))
    result["energy"]   # eV
    result["forces"]   # [n_atoms, 3], eV/Å
"""

__version__ = "0.1.0"

from molequi.errors import MolequiError
from molequi.models import ModelConfig, build_model, load_model, predict, save_model

__all__ = ["ModelConfig", "MolequiError", "__version__", "build_model", "load_model", "predict", "save_model"]
