"""Labelers: ASE calculators that give picked frames their reference energies and forces, and the
labelled files each round writes (resumable: labels already computed are kept)."""

from __future__ import annotations

import importlib
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from molequi.errors import ConfigError, MolequiError
from molequi.learn.selection import (
    beyond_ceiling,
    distance_descriptor,
    select_clustered,
    select_frames,
)
from molequi.learn.settings import RANK_KEYS, LearnSettings, parse_labeler
from molequi.utils import atomic_write, write_json

_EXTXYZ_DECIMALS = 8  # extxyz stores positions with 8 decimals: label exactly what is stored


def make_labeler(spec: str, kwargs: dict[str, Any] | None = None):
    """An ASE calculator from a labeler spec (see :func:`parse_labeler`).

    Raises:
        MolequiError: tblite missing, module or class not found, bad keyword arguments, or the
            object is not an ASE calculator.
    """
    kwargs = dict(kwargs or {})
    parsed = parse_labeler(spec)
    if parsed is None:
        try:
            from tblite.ase import TBLite
        except ImportError:
            raise MolequiError(
                "the xtb labeler needs tblite: pip install tblite (or pip install 'molequi[xtb]'), "
                "or give another ASE calculator with --labeler module:Class"
            ) from None
        # cache_api=False: every SCF starts from the standard guess, so a label is a function
        # of the positions alone (not of the order in which frames were labelled).
        options = {"method": "GFN2-xTB", "verbosity": 0, "cache_api": False} | kwargs
        return TBLite(**options)
    module_name, class_name = parsed
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise MolequiError(f"--labeler {spec}: cannot import module '{module_name}' ({error})") from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise MolequiError(f"--labeler {spec}: module '{module_name}' has no attribute '{class_name}'")
    try:
        calculator = cls(**kwargs)
    except TypeError as error:
        raise MolequiError(f"--labeler {spec}: bad --labeler-kwargs {json.dumps(kwargs)} ({error})") from None
    if not callable(getattr(calculator, "get_potential_energy", None)) or not callable(getattr(calculator, "get_forces", None)):
        raise MolequiError(f"--labeler {spec}: {class_name} is not an ASE calculator (no get_potential_energy/get_forces)")
    return calculator


def label_structure(atoms: Atoms, calculator) -> Atoms:
    """A copy of ``atoms`` (positions rounded to what extxyz stores) with the calculator's energy
    (eV) and forces (eV/Å) attached as a :class:`SinglePointCalculator`.

    Raises:
        RuntimeError: the calculator returned non-finite labels.
    """
    frame = Atoms(numbers=atoms.numbers, positions=np.round(atoms.positions, _EXTXYZ_DECIMALS),
                  cell=atoms.cell, pbc=atoms.pbc)
    if np.any(atoms.get_initial_magnetic_moments()):  # tblite reads unpaired electrons from these
        frame.set_initial_magnetic_moments(atoms.get_initial_magnetic_moments())
    if hasattr(calculator, "reset"):
        calculator.reset()
    frame.calc = calculator
    energy = float(frame.get_potential_energy())
    forces = np.array(frame.get_forces(), dtype=np.float64)
    if not (math.isfinite(energy) and np.isfinite(forces).all()):
        raise RuntimeError("the labeler returned non-finite energy or forces")
    frame.calc = SinglePointCalculator(frame, energy=energy, forces=forces)
    frame.info.update({k: v for k, v in atoms.info.items() if isinstance(v, (int, float, str))})
    return frame


def label_start(starts: list[Atoms], settings: LearnSettings, get_labeler, say) -> list[Atoms]:
    from molequi.data.graph import structure_labels

    rng = np.random.default_rng([settings.seed, 0])
    labelled, to_label = [], []
    for atoms in starts:
        energy, forces = structure_labels(atoms)
        if energy is not None and forces is not None:
            labelled.append(atoms)
            continue
        to_label.append(atoms)
        for _ in range(settings.perturbed):
            copy = Atoms(numbers=atoms.numbers, positions=atoms.positions + rng.normal(0.0, settings.perturb_sigma, atoms.positions.shape))
            to_label.append(copy)
    if to_label:
        started = time.monotonic()
        calculator = get_labeler()
        labelled.extend(label_structure(atoms, calculator) for atoms in to_label)
        say(f"labelled {len(to_label)} start structures ({settings.labeler}, {time.monotonic() - started:.1f} s)")
    if len(labelled) < 2:
        raise ConfigError(
            f"the start set holds {len(labelled)} labelled structure(s); training needs at least 2 "
            "(give more start structures or --perturbed ≥ 1)"
        )
    return labelled


def label_round(round_dir: Path, candidates: list[Atoms], settings: LearnSettings, get_labeler, say) -> int:
    """Pick and label ``per_round`` frames, saving each label as it is made (a rerun continues)."""
    from ase.io import read

    final = round_dir / "labelled.extxyz"
    if final.exists():
        return len(read_labelled(final))
    partial = round_dir / "labelled.partial.extxyz"
    done = read(partial, ":") if partial.exists() else []
    stds = np.array([a.info[RANK_KEYS[settings.rank_by]] for a in candidates], dtype=np.float64)
    if settings.max_std is not None:  # beyond the trust ceiling: never labelled
        largest = np.array([a.info["std_max"] for a in candidates], dtype=np.float64)
        ruled_out = beyond_ceiling(largest, [a.info.get("system", k) for k, a in enumerate(candidates)],
                                   [a.info.get("md_step", 0) for a in candidates], settings.max_std, settings.trust_scope)
        if len(candidates) and ruled_out.all():
            say(f"every frame of this round's MD is beyond the trust ceiling ({settings.max_std:g} eV/Å): "
                "picking among all of them this round")
        else:
            stds[ruled_out] = np.nan
    round_number = int(round_dir.name.removeprefix("round_"))
    if settings.selection == "random":
        order = np.random.default_rng([settings.seed, round_number]).permutation(len(candidates)).tolist()
        order = [k for k in order if np.isfinite(stds[k])]
    elif settings.selection == "clustered":
        order = select_clustered(stds, [distance_descriptor(a) for a in candidates], settings.per_round,
                                 seed=settings.seed + 104729 * round_number)
    else:
        order = select_frames(
            stds,
            [distance_descriptor(a) for a in candidates],
            settings.per_round,
            settings.pool_factor,
        )
    tried = {int(a.info["candidate"]) for a in done} | {int(k) for k in _read_failed(round_dir)}
    failures = _read_failed(round_dir)
    for index in order:
        if len(done) >= settings.per_round:
            break
        if index in tried:
            continue
        frame = candidates[index].copy()
        frame.info["candidate"] = index
        try:
            done.append(label_structure(frame, get_labeler()))
        except MolequiError:
            raise
        except Exception as error:  # a calculator that fails on a strange geometry: skip the frame
            say(f"  candidate {index}: the labeler failed ({type(error).__name__}: {error}); skipped")
            failures.append(index)
            write_json(failures, round_dir / "labelling_failures.json")
            continue
        write_extxyz(done, partial)
    if not done and order:
        raise MolequiError(f"the labeler failed on every candidate of {round_dir}; see the messages above")
    if not order:
        say(f"  no MD frame under the trust ceiling --max-std {settings.max_std} eV/Å: nothing labelled this round")
    write_extxyz(done, final)
    partial.unlink(missing_ok=True)
    return len(done)


def _read_failed(round_dir: Path) -> list[int]:
    path = round_dir / "labelling_failures.json"
    return [int(k) for k in json.loads(path.read_text())] if path.exists() else []


def read_labelled(path: Path) -> list[Atoms]:
    """The frames of a round's ``labelled.extxyz``; a round that labelled nothing (every frame
    over the trust ceiling) leaves an empty file, which ASE refuses to read."""
    from ase.io import read

    return read(path, ":", format="extxyz") if path.stat().st_size else []


def write_extxyz(structures: Sequence[Atoms], path: Path) -> Path:
    from ase.io import write

    return atomic_write(path, lambda temporary: write(str(temporary), list(structures), format="extxyz"))
