"""ASE calculators for molequi potentials."""

from molequi.calculators.ase import MolequiCalculator

__all__ = ["MolequiCalculator"]
