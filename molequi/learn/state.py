"""What a run writes and how a rerun is recognised: content hashes of its inputs, the identity
check of learn.json, the rounds table and its plot."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
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
from molequi.utils import atomic_write


def structures_sha256(structures: Sequence[Atoms]) -> str:
    """Content hash of structures: numbers, positions, cell, pbc and any energy/force labels."""
    from molequi.data.graph import structure_labels

    digest = hashlib.sha256()
    for atoms in structures:
        energy, forces = structure_labels(atoms)
        for array in (atoms.numbers.astype(np.int64), np.asarray(atoms.positions, dtype=np.float64),
                      np.asarray(atoms.cell.array, dtype=np.float64), np.asarray(atoms.pbc, dtype=bool)):
            digest.update(np.ascontiguousarray(array).tobytes())
        digest.update(repr(energy).encode())
        if forces is not None:
            digest.update(np.ascontiguousarray(forces, dtype=np.float64).tobytes())
    return digest.hexdigest()


def files_sha256(paths: Sequence[str | Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


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


def _check_identity(out_dir: Path, identity: dict[str, Any], say: Callable[[str], None]) -> None:
    path = out_dir / "learn.json"
    if path.exists():
        try:
            saved = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ConfigError(f"{path}: unreadable ({error}); choose another --out") from None
        if saved.get("format") != FORMAT:
            raise ConfigError(f"{path} is not a molequi learn run; choose another --out")
        changed = []
        for key in ("settings", "training"):
            ours, theirs, defaults = _flat(identity[key]), _flat(saved[key]), _flat(_defaults(key))
            for name in sorted(set(ours) | set(theirs)):
                if key == "settings" and name in RESUMABLE_SETTINGS:
                    continue
                # a setting newer than the run (absent from its file) matches at its default value
                before = theirs.get(name, defaults.get(name))
                if before != ours.get(name, defaults.get(name)):
                    changed.append(f"{name} ({before!r} → {ours.get(name)!r})")
        if saved["start_sha256"] != identity["start_sha256"]:
            changed.append("the start structures (their content differs)")
        if saved["test_sha256"] != identity["test_sha256"]:
            changed.append("the test data (their content differs)")
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
            _write_json(identity, path)
        say(f"continuing the learning run in {out_dir}")
        return
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError(f"{out_dir} exists and is not a molequi learn run; choose another --out")
    _write_json(identity, path)


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


def _write_json(data: Any, path: Path) -> Path:
    text = json.dumps(data, indent=2) + "\n"
    return atomic_write(path, lambda temporary: temporary.write_text(text))


def _write_rounds(rows: list[dict[str, Any]], out_dir: Path) -> None:
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
    """Test force error and the MD's largest force spread against the number of labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [row["n_labels"] for row in rows]
    with_test = any("test_forces_mae_meV_per_A" in row for row in rows)
    figure, axes = plt.subplots(1, 2 if with_test else 1, figsize=(9 if with_test else 4.5, 3.4), squeeze=False)
    panels = list(axes[0])
    if with_test:
        ax = panels.pop(0)
        ax.plot(labels, [row.get("test_forces_mae_meV_per_A", math.nan) for row in rows], "o-")
        ax.set_xlabel("labelled structures")
        ax.set_ylabel("test force MAE (meV/Å)")
        ax.set_yscale("log")
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
        figure.savefig(temporary, dpi=110, format="png")

    try:
        return atomic_write(path, save)
    finally:
        plt.close(figure)
