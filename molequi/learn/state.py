"""What a run writes and how a rerun is recognised: content hashes of its inputs, the identity
check of learn.json, the rounds table and its plot."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from molequi.errors import ConfigError
from molequi.learn.settings import (
    FORMAT,
    RESUMABLE_SETTINGS,
    ROUND_COLUMNS,
    LearnSettings,
)
from molequi.utils import atomic_write, identity_changes, structures_digest, write_json


def structures_sha256(structures: Sequence[Atoms]) -> str:
    """Content hash of structures: numbers, positions, cell, pbc and any energy/force labels."""
    from molequi.data.labels import structure_labels

    def labels(atoms: Atoms) -> list[np.ndarray]:
        energy, forces = structure_labels(atoms)
        return [np.array([np.nan if energy is None else energy])] + ([] if forces is None else [forces])

    return structures_digest(structures, labels)


def read_start(specs: Sequence[str]) -> list[Atoms]:
    """Start structures from files (any ASE format) or ASE G2 molecule names (``CH3CH2OH``)."""
    from molequi.data.readers import read_structures

    structures: list[Atoms] = []
    for spec in specs:
        if not Path(spec).exists():
            from ase.build import molecule
            from ase.collections import g2

            if spec in g2.names:
                structures.append(molecule(spec))
                continue
        structures.extend(read_structures(spec))
    if not structures:
        raise ConfigError("--start gave no structures")
    for atoms in structures:
        if atoms.pbc.any():
            raise ConfigError("--start: periodic structures are not supported by the learning loop yet (molecules only)")
    return structures


def check_identity(out_dir: Path, identity: dict[str, Any], say: Callable[[str], None]) -> None:
    path = out_dir / "learn.json"
    if path.exists():
        try:
            saved = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ConfigError(f"{path}: unreadable ({error}); choose another --out") from None
        if saved.get("format") != FORMAT:
            raise ConfigError(f"{path} is not a molequi learn run; choose another --out")
        changed = identity_changes(_compared(saved), _compared(identity), _identity_name)
        if changed:
            raise ConfigError(
                f"{out_dir} holds a learning run with other inputs: {'; '.join(changed)}. Rerun with the same "
                "settings to continue it (only --rounds may change), or choose another --out"
            )
        if saved["settings"]["rounds"] != identity["settings"]["rounds"]:
            if identity["settings"]["rounds"] < saved["settings"]["rounds"] and (out_dir / f"round_{identity['settings']['rounds'] + 1:03d}").exists():
                raise ConfigError(
                    f"{out_dir} already ran past round {identity['settings']['rounds']}; --rounds cannot shrink below that"
                )
            write_json(identity, path)
        say(f"continuing the learning run in {out_dir}")
        return
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError(f"{out_dir} exists and is not a molequi learn run; choose another --out")
    write_json(identity, path)


def _compared(identity: dict[str, Any]) -> dict[str, Any]:
    """The parts of a run's identity a rerun must match: settings (but ``RESUMABLE_SETTINGS``)
    and training options flattened, each at its default where the run's file predates it, and
    the content hashes of the start structures and the test data."""
    compared = {}
    for key in ("settings", "training"):
        values = {**_flat(_defaults(key)), **_flat(identity[key])}
        compared[key] = {name: value for name, value in values.items()
                         if not (key == "settings" and name in RESUMABLE_SETTINGS)}
    return {**compared, "start": identity["start_sha256"], "test": identity["test_sha256"],
            "init": identity.get("init_sha256")}


def _identity_name(path: str) -> str:
    """A recorded learning run's identity path in the words of ``molequi learn``'s options."""
    if path == "start":
        return "the start structures (content)"
    if path == "test":
        return "the test data (content)"
    if path == "init":
        return "the --init model (content)"
    return path.partition(".")[2]


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as ``{"model.channels": 16, ...}``."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and key == "model":
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _defaults(key: str) -> dict[str, Any]:
    from molequi.training import TrainingConfig

    if key == "training":
        return TrainingConfig().to_dict()
    return {f.name: f.default for f in dataclasses.fields(LearnSettings) if f.default is not dataclasses.MISSING}


def write_rounds(rows: list[dict[str, Any]], out_dir: Path) -> None:
    columns = [c for c in ROUND_COLUMNS if any(c in row for row in rows)]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    text = buffer.getvalue()
    atomic_write(out_dir / "rounds.csv", lambda temporary: temporary.write_text(text))
    plot_rounds(rows, out_dir / "rounds.png")


def plot_rounds(rows: list[dict[str, Any]], path: Path) -> Path:
    """Test force and energy errors and the MD's largest force spread against the number of labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [row["n_labels"] for row in rows]
    with_test = any("test_forces_mae_meV_per_A" in row for row in rows)
    figure, axes = plt.subplots(1, 2 if with_test else 1, figsize=(9 if with_test else 4.5, 3.4), squeeze=False)
    panels = list(axes[0])
    if with_test:
        ax = panels.pop(0)
        ax.plot(labels, [row.get("test_forces_mae_meV_per_A", math.nan) for row in rows], "o-", label="forces (meV/Å)")
        ax.plot(labels, [row.get("test_energy_mae_meV", math.nan) for row in rows], "s--", label="energy (meV)")
        ax.set_xlabel("labelled structures")
        ax.set_ylabel("test MAE")
        ax.set_yscale("log")
        ax.legend()
        ax.grid(alpha=0.3)
    ax = panels[0]
    ax.plot(labels, [row["max_std"] for row in rows], "o-", label="max")
    ax.plot(labels, [row["mean_std"] for row in rows], "s--", label="mean")
    ax.set_xlabel("labelled structures")
    ax.set_ylabel("MD force spread (eV/Å)")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    figure.tight_layout()

    def save(temporary: Path) -> None:
        figure.savefig(temporary, dpi=110, format="png", bbox_inches="tight")

    try:
        return atomic_write(path, save)
    finally:
        plt.close(figure)
