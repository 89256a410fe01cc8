"""What the parsers need from the library, as literals: choices lists and the defaults shown in ``--help``.

``molequi --help`` and ``molequi COMMAND --help`` must answer at once, so the parsers cannot
import the modules that own these registries (they import torch, e3nn, ase or RDKit, seconds
each). ``tests/test_cli_fast.py`` checks that every literal here equals the library's registry,
so the two cannot drift apart.
"""

from __future__ import annotations

DTYPES: tuple[str, ...] = ("float32", "float64")
"""Model precisions: the keys of :data:`molequi.models.io.DTYPES`."""

MD_ENSEMBLES: tuple[str, ...] = ("nve", "nvt")
""":data:`molequi.md.ensembles.ENSEMBLES` (its names)."""

MD_ENGINES: tuple[str, ...] = ("batched", "ase")
""":data:`molequi.md.runner.ENGINES`."""

TRAJ_FORMATS: tuple[str, ...] = ("extxyz", "traj")
""":data:`molequi.md.output.TRAJ_FORMATS`."""

EXPORT_FORMATS: tuple[str, ...] = ("torchscript",)
"""Formats :func:`molequi.models.export.export_model` writes."""

HEAD_KINDS: dict[str, str] = {
    "intensive": "mean over atoms (e.g. a HOMO–LUMO gap, eV)",
    "extensive": "sum over atoms (e.g. U0, eV)",
    "dipole": "dipole vector Σ q_i r_i with neutral learned charges, e·Å (a |μ| label is compared with its norm)",
}
"""Property-head kinds and their one-line descriptions: :data:`molequi.models.heads.HEADS`."""

DEFAULT_MAX_EPOCHS = 500
""":data:`molequi.training.config.DEFAULT_MAX_EPOCHS`."""

TRAINING_DEFAULTS: dict[str, object] = {
    "max_epochs": None,
    "max_minutes": None,
    "device": "auto",
    "dtype": "float32",
    "seed": 0,
    "batch_size": 16,
    "learning_rate": 3e-2,
    "validation": 50,
    "energy_weight": 1.0,
    "forces_weight": 100.0,
    "num_workers": 0,
    "energy_key": "energy",
    "forces_key": "forces",
    "stress_key": "stress",
    "e0s": "fit",
    "init": None,
    "anchor": 0.0,
    "replay": 0.0,
    "replay_data": None,
    "model.channels": 32,
    "model.l_max": 1,
    "model.edge_l_max": 2,
    "model.num_layers": 2,
    "model.correlation": 2,
    "model.cutoff": 5.0,
    "model.baseline": None,
    "model.ensemble_heads": 1,
}
"""Defaults of the :class:`~molequi.training.config.TrainingConfig` keys (``model.`` ones:
:class:`~molequi.models.config.ModelConfig`) that ``molequi train`` has a flag for."""
