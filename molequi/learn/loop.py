"""The active-learning loop: train a committee, explore with MD, label, repeat (resumable)."""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from molequi.learn.domain import calibration_columns, mark_domain, round_calibration
from molequi.learn.energies import refit_reference_energies
from molequi.learn.explore import explore, md_seeds, predict_committee, test_errors
from molequi.learn.labelers import (
    label_round,
    label_start,
    make_labeler,
    read_labelled,
    write_extxyz,
)
from molequi.learn.settings import FORMAT, IGNORED_TRAINING_KEYS, LearnSettings
from molequi.learn.state import (
    check_identity,
    read_start,
    structures_sha256,
    write_rounds,
)
from molequi.utils import files_digest, write_json


@dataclass
class LearnResult:
    """What the loop produced: one row per round and the last committee's model files."""

    out_dir: Path
    rows: list[dict[str, Any]]
    models: list[Path]


def run_learning(
    settings: LearnSettings,
    start: Sequence[str] | Sequence[Atoms],
    out_dir: str | Path,
    config=None,
    test_data: Sequence[str | Path] | None = None,
    log: Callable[[str], None] | None = None,
) -> LearnResult:
    """Run (or continue) the active-learning loop in ``out_dir``; see the module docstring.

    Args:
        settings: the loop's settings.
        start: start structures (files, G2 names, or Atoms); labelled ones are used as they are,
            unlabelled ones are labelled with ``perturbed`` noisy copies.
        out_dir: output directory; a rerun with the same inputs continues there.
        config: :class:`~molequi.training.TrainingConfig` of every member (its ``seed`` is the
            base seed: member m of round r uses ``seed + m + 100 r``); default
            :func:`default_member_config` (with ``settings.init``: the fine-tuning learning rate).
        test_data: labelled files to evaluate each round's committee on.
        log: where progress lines go (default: stdout).

    Raises:
        MolequiError subclasses for bad settings, inputs, a changed rerun, or a labeler failure.
    """
    from molequi.data.readers import read_structures, require_labels
    from molequi.training import resolve_device

    say = log if log is not None else (lambda message: print(message, flush=True))
    settings.validate()
    config = config if config is not None else default_member_config(settings)
    out_dir = Path(out_dir)
    starts = read_start(start) if start and not isinstance(start[0], Atoms) else [a.copy() for a in start]
    test_paths = [str(p) for p in (test_data or [])]
    test_structures: list[Atoms] = []
    for path in test_paths:
        structures = read_structures(path)
        require_labels(structures, path)
        test_structures.extend(structures)
    init = initial_model(settings)
    if init is not None:
        _check_init_heads(settings, init)
    identity = {
        "format": FORMAT,
        "settings": asdict(settings),
        "init_sha256": files_digest([str(init)]) if init is not None else None,
        "training": {k: v for k, v in config.to_dict().items() if k not in IGNORED_TRAINING_KEYS},
        "start_sha256": structures_sha256(starts),
        "test_sha256": files_digest(test_paths) if test_paths else None,
    }
    labeler = None

    def get_labeler():
        nonlocal labeler
        if labeler is None:
            labeler = make_labeler(settings.labeler, settings.labeler_kwargs)
        return labeler

    if settings.rounds > 0 or not all(is_labelled(a) for a in starts):
        get_labeler()  # a missing or broken labeler fails here, before anything is written
    check_identity(out_dir, identity, say)
    device = str(resolve_device(config.device))

    start_file = out_dir / "start.extxyz"
    if not start_file.exists():
        labelled = label_start(starts, settings, get_labeler, say)
        write_extxyz(labelled, start_file)
    md_starts = [Atoms(numbers=a.numbers, positions=a.positions) for a in starts]
    rows: list[dict[str, Any]] = []
    models: list[Path] = []
    for r in range(settings.rounds + 1):
        row, models = _run_round(r, settings, config, out_dir, md_starts, test_structures, device, get_labeler, say,
                                 init)
        rows.append(row)
        write_rounds(rows, out_dir)
    say(f"done: {settings.rounds + 1} rounds, {rows[-1]['n_labels']} labels; committee: {' '.join(f'--model {m}' for m in models)}")
    return LearnResult(out_dir, rows, models)


def _run_round(r, settings, config, out_dir, md_starts, test_structures, device, get_labeler, say, init=None):
    from ase.io import read

    from molequi.training import train

    round_dir = out_dir / f"round_{r:03d}"
    done = round_dir / "round.json"
    members = [round_dir / f"member_{m}" / "model.molequi" for m in range(settings.committee)]
    if done.exists():
        record = json.loads(done.read_text())
        if r < settings.rounds and not (round_dir / "labelled.extxyz").exists():
            # the last round of a shorter run: --rounds grew, so this round now labels too
            candidates = read(round_dir / "candidates.extxyz", ":")
            record["row"]["n_new"] = label_round(round_dir, candidates, settings, get_labeler, say)
            say(f"round {r}/{settings.rounds}: labelled {record['row']['n_new']} frames ({settings.labeler})")
            write_json(record, done)
        return record["row"], members
    round_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    clock = _Clock(timings)

    train_file = round_dir / "train.extxyz"
    if not train_file.exists():
        data = read(out_dir / "start.extxyz", ":")
        for q in range(r):
            data += read_labelled(out_dir / f"round_{q:03d}" / "labelled.extxyz")
        write_extxyz(data, train_file)
    n_labels = len(read(train_file, ":"))
    with clock("train"):
        for m, model_path in enumerate(members):
            if model_path.exists():
                continue
            member_dir = model_path.parent
            previous = out_dir / f"round_{r - 1:03d}" / f"member_{m}" / "model.molequi"
            # from --init, every round is a fine-tuning run (training's init: the model's architecture and
            # elements, its reference energies refitted), of the given model first, then of the last round's
            start = None if init is None else (init if r == 0 else previous)
            member_config = _member_config(config, settings, r, m, n_labels, start, anchor_to=init)
            resume = (member_dir / "checkpoints" / "last.pt").exists()
            train(member_config, str(train_file), member_dir, resume=resume, log=lambda message: None,
                  init_weights=previous if r > 0 and start is None and not resume else None,
                  overwrite=not resume)  # a member killed before its first epoch starts again
        # idempotent: a rerun after an interruption refits again and changes nothing more
        labelled = read(train_file, ":")
        offsets = [refit_reference_energies(path, labelled, device) for path in members]
    say(f"round {r}/{settings.rounds}: trained {settings.committee} members on {n_labels} labels "
        f"({timings['train']:.1f} s; energy offset refitted by {1000 * max(map(abs, offsets)):.0f} meV at most)")
    row: dict[str, Any] = {"round": r, "n_labels": n_labels}
    calibration = None
    if test_structures:
        with clock("test"):
            row.update(test_errors(predict_committee(members, test_structures, device), test_structures))
            calibration, notes = round_calibration(members, test_structures, round_dir / "calibration.json", device)
            row.update(calibration_columns(calibration))
        say(f"round {r}/{settings.rounds}: test force MAE {row['test_forces_mae_meV_per_A']:.1f} meV/Å, "
            f"energy MAE {row['test_energy_mae_meV']:.1f} meV (mean error {row['test_energy_bias_meV']:+.1f} meV; "
            f"{len(test_structures)} structures)")
        for note in notes:
            say(f"round {r}/{settings.rounds}: calibration on the test data: {note}")

    candidates_file = round_dir / "candidates.extxyz"
    stopped_file = round_dir / "md_stopped.json"
    with clock("md"):
        if candidates_file.exists() and stopped_file.exists():
            candidates = read(candidates_file, ":")
            stopped = json.loads(stopped_file.read_text())
        else:
            seeds, replicas = md_seeds(r, settings, out_dir, md_starts)
            candidates, stopped = explore(members, seeds, settings, seed=settings.seed + 7919 * (r + 1), device=device,
                                          replicas=replicas)
            if calibration is not None:
                mark_domain(candidates, calibration)
            write_extxyz(candidates, candidates_file)
            write_json(stopped, stopped_file)
    stds = np.array([a.info["std_max"] for a in candidates])
    if any("in_domain" in a.info for a in candidates):
        row["md_out_of_domain"] = int(sum(1 - int(a.info.get("in_domain", 1)) for a in candidates))
    row.update({
        "md_frames": len(candidates), "md_stopped": len(stopped),
        "max_std": float(stds.max()) if len(stds) else math.nan,
        "mean_std": float(stds.mean()) if len(stds) else math.nan,
    })
    say(f"round {r}/{settings.rounds}: MD at {','.join(f'{t:g}' for t in settings.temperatures)} K: "
        f"{len(candidates)} frames, force spread max {row['max_std']:.3f} eV/Å, mean {row['mean_std']:.3f} eV/Å"
        + (f", {len(stopped)} system(s) stopped early" if stopped else "") + f" ({timings['md']:.1f} s)")

    n_new = 0
    if r < settings.rounds:
        with clock("label"):
            n_new = label_round(round_dir, candidates, settings, get_labeler, say)
        say(f"round {r}/{settings.rounds}: labelled {n_new} frames ({settings.labeler}, {timings['label']:.1f} s)")
    row["n_new"] = n_new
    write_json({"row": row, "wall_s": timings, "stopped": stopped}, done)
    return row, members


def is_labelled(atoms: Atoms) -> bool:
    """Whether ``atoms`` carries both an energy and forces label."""
    from molequi.data.graph import structure_labels

    return all(label is not None for label in structure_labels(atoms))


def default_member_config(settings: LearnSettings):
    """The members' training settings when none are given: :class:`TrainingConfig`'s defaults,
    at the fine-tuning learning rate with ``settings.init`` (as ``molequi learn --init``)."""
    from molequi.training import TrainingConfig
    from molequi.training.finetune import FINE_TUNE_LEARNING_RATE

    return TrainingConfig() if settings.init is None else TrainingConfig(learning_rate=FINE_TUNE_LEARNING_RATE)


def initial_model(settings: LearnSettings) -> Path | None:
    """The model file ``settings.init`` names (a path, or a shipped model's name, announced), or None.

    Raises:
        ConfigError: neither a shipped model's name nor an existing file.
    """
    from molequi.training.finetune import resolve_model

    return None if settings.init is None else resolve_model(settings.init)


def _check_init_heads(settings: LearnSettings, init: Path) -> None:
    """Refuse (:class:`ConfigError`) ``--ensemble-heads`` other than the ``--init`` model's (new
    heads would have no weights to start from: the members take the model's architecture), and a
    single member of a single-head model (no spread to pick by); ``--committee 1`` with a model
    of several heads is its own shallow ensemble."""
    from molequi.errors import ConfigError
    from molequi.models.io import read_config

    heads = int(read_config(init).ensemble_heads or 1)
    if settings.ensemble_heads >= 2 and settings.ensemble_heads != heads:
        raise ConfigError(f"--ensemble-heads {settings.ensemble_heads} differs from the {heads} head(s) of --init "
                          f"{settings.init}: leave --ensemble-heads out to keep the model's")
    if settings.committee * heads < 2:
        raise ConfigError(f"the uncertainty needs at least two members: --init {settings.init} has one head, "
                          "so --committee 2 or more")


class _Clock:
    """Wall seconds per stage, accumulated into a dict."""

    def __init__(self, timings: dict[str, float]) -> None:
        self.timings = timings

    @contextlib.contextmanager
    def __call__(self, name: str):
        started = time.monotonic()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.monotonic() - started


def _member_config(config, settings: LearnSettings, r: int, m: int, n_labels: int, init: Path | None = None,
                   anchor_to: Path | None = None):
    """Member ``m``'s training config in round ``r``: fine-tuning ``init`` when given, pulled
    towards ``anchor_to`` (the run's ``--init`` model) by ``settings.anchor``."""
    from molequi.training import TrainingConfig

    values = config.to_dict()
    if init is not None:
        values["init"] = str(init)
        if anchor_to is not None and settings.anchor > 0:
            values["anchor"], values["anchor_model"] = settings.anchor, str(anchor_to)
    values["seed"] = config.seed + m + 100 * r
    values["progress"] = False
    # the loop labels frames where its committee disagrees: far from the other labels by design,
    # and labelled by its own labeler, so the unit mix-up check of training data does not apply
    values["allow_outliers"] = True
    if settings.ensemble_heads >= 2:
        values["model"] = {**values["model"], "ensemble_heads": settings.ensemble_heads}
    validation = values["validation"]
    if isinstance(validation, int) and 2 * validation > n_labels:  # keep most labels for training
        values["validation"] = max(1, n_labels // 10)
    return TrainingConfig.from_dict(values)
