#!/usr/bin/env python
"""Uncertainty benchmark (CPU): are committee error bars right, and does active learning pay?

(a) Calibration. For each molecule, a committee of 4 potentials and one shallow ensemble of 4
    heads (``--ensemble-heads 4``) are trained on GFN2-xTB labels of rMD17 geometries (DFT MD at
    500 K, relabelled with xTB) and tested on frames of GFN2-xTB Langevin MD at 300, 600 and
    1000 K (four trajectories from different rMD17 geometries; the Spearman within one trajectory
    is reported beside). Per temperature, before and after calibration, the metrics of ``molequi evaluate``:
    ``forces_std_spearman`` (per structure: mean |force error| vs mean predicted std),
    ``forces_rmse_over_std`` (RMSE of the force components ÷ RMS predicted std) and
    ``miscalibration_area``. The calibration is ``molequi calibrate``'s (scale or power law, chosen
    by held-out NLL), fitted on 100 held-out rMD17 geometries (the training distribution; the MD
    test frames are never used for it). ``--committee-members 4 8`` adds a row per committee size;
    every committee row also estimates (split-half) the Spearman of unlimited members.
    ``--committee-diversity seed bootstrap cutoff`` adds committees whose members also differ in a
    bootstrap resample of the training set or in their cutoff, and one that pools them all.
(b) Active learning vs random selection: ``molequi learn`` from one unlabelled geometry (labelled
    with 4 perturbed copies), committee MD at 300, 600 and 1000 K, and the same loop with frames
    drawn at random from its own MD (``--learn-md-from labelled``: each round's MD starts from
    the previous round's picks); force MAE on the 1000 K frames against the number of labels,
    per seed (``--learn-seeds``) and averaged, and how far above the 1000 K test frames (median
    reference energy) the frames each loop labels lie. A loop spec with ``oracle=1`` ranks each
    round's frames by the committee's true force error (xTB) instead of its spread: the bound
    for what any error bars could make the uncertain pick do.

    python scripts/bench_uncertainty.py --quick                 # ~10 min on 2 busy cores
    python scripts/bench_uncertainty.py --out runs/bench_uncertainty --readme

Writes ``uncertainty.json``, ``uncertainty.md`` and ``uncertainty.png`` into ``--out``; the xTB
data sets are cached there (``data/``) and reused by a rerun. ``--readme`` pastes the Markdown
into docs/benchmarks.md (block ``uncertainty``) and the plot into ``scripts/figures/uncertainty.png``. Targets: after calibration ``rmse_over_std`` within
0.8–1.25 at 300 K and ≤ 1.5 at 1000 K, Spearman ≥ 0.7, miscalibration area ≤ 0.1; the loop
reaches random selection's final 1000 K error with at most half of its labels.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import resource
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from molequi.learn import MD_STARTS, RANKINGS, TRUST_SCOPES, LearnSettings

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "datasets"))  # the xTB recipe's helpers (datasets/xtb_md.py)
DEFAULT_DATA = REPO.parent / "shared" / "data" / "rmd17"
FIGURE = REPO / "scripts" / "figures" / "uncertainty.png"  # shown in docs/benchmarks.md (written by --readme)
TEMPERATURES = (300.0, 600.0, 1000.0)
REUSED: list[tuple[str, float]] = []  # (model or loop, its wall seconds) reused from an earlier run in --out
LOOPS_USED: set[Path] = set()  # learning loops this invocation has run or reused

PROFILES = {
    # quick: a smoke run (~10 min); full: what fits in ~40 min of 2 shared cores. Committee members
    # stop at `epochs` or after `member_minutes` (whichever comes first: on a loaded machine, the latter)
    "quick": dict(n_train=100, n_calibration=50, n_test=20, test_trajectories=2, members=4, epochs=25,
                  member_minutes=1.0, rounds=2, per_round=6, md_steps=200, learn_members=2, learn_epochs=40),
    "full": dict(n_train=250, n_calibration=100, n_test=120, test_trajectories=4, members=4, epochs=100,
                 member_minutes=4.0, rounds=3, per_round=8, md_steps=400, learn_members=3, learn_epochs=100),
}
DEFAULT_POOL_FACTOR = LearnSettings.pool_factor  # molequi learn's default: loops at it share one folder
LOOP_NAMES = {"uncertain": "uncertain + diverse", "clustered": "most uncertain of each cluster"}
# How the members of a committee differ: their seed (initial weights, validation split, batch
# order) only; also a bootstrap resample of the training set each; also a cutoff each (Å).
DIVERSITIES = {"seed": "seeds", "bootstrap": "bootstrap resamples", "cutoff": "cutoffs 4–6 Å"}
CUTOFFS = (4.0, 4.5, 5.5, 6.0)
# Members in the quickstart's layout (32 channels, harmonics tied to l_max 1).
MODEL = {"model.channels": 32, "model.l_max": 1, "model.num_layers": 2, "model.radial_hidden": [32, 32],
         "model.readout_hidden": 16, "model.edge_l_max": None}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime + children.ru_utime + children.ru_stime


# --- data -------------------------------------------------------------------------------------


def rmd17_geometries(data_dir: Path, molecule: str, split: str = "train"):
    from ase import Atoms

    path = data_dir / f"rmd17_{molecule}_{split}_01.npz"
    if not path.is_file():
        raise SystemExit(f"error: {path} not found (rMD17 is expected in {data_dir}; see --data-dir)")
    data = np.load(path)
    numbers = data["nuclear_charges"]
    return [Atoms(numbers=numbers, positions=coords) for coords in data["coords"]]


def xtb_label(structures, desc: str):
    import xtb_md

    from molequi.learn import label_structure, make_labeler

    calculator = make_labeler("xtb")
    with xtb_md.single_openmp_thread():
        return [label_structure(atoms, calculator) for atoms in structures]


def xtb_md_frames(start, temperature: float, n_frames: int, seed: int, stride: int = 20, equilibration: int = 400,
                  trajectory: int = 0):
    """GFN2-xTB Langevin MD (0.5 fs, friction 0.01 1/fs) from ``start``; frames every ``stride``
    steps after ``equilibration`` steps, each relabelled with a fresh single point (``info``:
    ``temperature_K``, ``md_step``, ``trajectory``)."""
    import xtb_md
    from ase import units
    from ase.md.langevin import Langevin

    rng = np.random.default_rng([seed, int(temperature)])
    atoms = xtb_md.initial_state(start, temperature, rng)
    atoms.calc = xtb_md.make_xtb_calculator(reuse_wavefunction=True)
    labeller = xtb_md.make_xtb_calculator(reuse_wavefunction=False)
    dyn = Langevin(atoms, timestep=0.5 * units.fs, temperature_K=temperature, friction=0.01 / units.fs,
                   fixcm=False, rng=rng)
    frames = []
    with xtb_md.single_openmp_thread():
        dyn.run(equilibration)
        for _ in range(n_frames):
            dyn.run(stride)
            frames.append(xtb_md.label_frame(atoms, labeller, {"temperature_K": temperature, "md_step": dyn.nsteps,
                                                                "trajectory": trajectory}))
    return frames


def molecule_data(molecule: str, profile: dict, args, log) -> dict[str, Path]:
    """xTB-labelled train / calibration sets (rMD17 geometries) and MD test frames per temperature,
    cached under ``out/data``.

    The test frames of a temperature come from ``test_trajectories`` trajectories started from
    rMD17 geometries spread through the file (one trajectory stays in one conformer; a user's
    test set spans several), ``n_test`` frames in all."""
    import xtb_md

    folder = args.out / "data" / molecule
    folder.mkdir(parents=True, exist_ok=True)
    files = {"train": folder / f"train_{profile['n_train']}.extxyz",
             "calibration": folder / f"calibration_{profile['n_calibration']}.extxyz"}
    n_traj = profile["test_trajectories"]
    files |= {f"md_{t:g}K": folder / f"md_{t:g}K_{profile['n_test']}x{n_traj}.extxyz" for t in TEMPERATURES}
    geometries = rmd17_geometries(args.data_dir, molecule)
    order = np.random.default_rng(0).permutation(len(geometries))
    chosen = {"train": order[: profile["n_train"]],
              "calibration": order[len(order) - profile["n_calibration"]:]}
    for key in ("train", "calibration"):
        if not files[key].exists():
            started = time.monotonic()
            xtb_md.write_extxyz_atomic(xtb_label([geometries[k] for k in chosen[key]], key), files[key])
            log(f"{molecule}: labelled {len(chosen[key])} {key} geometries with GFN2-xTB ({time.monotonic() - started:.0f} s)")
    per_trajectory = profile["n_test"] // n_traj
    for t in TEMPERATURES:
        key = f"md_{t:g}K"
        if not files[key].exists():
            started = time.monotonic()
            frames = []
            for k in range(n_traj):
                start = geometries[k * len(geometries) // n_traj]
                frames += xtb_md_frames(start, t, per_trajectory, seed=1 + k, trajectory=k)
            xtb_md.write_extxyz_atomic(frames, files[key])
            log(f"{molecule}: {len(frames)} GFN2-xTB MD frames at {t:g} K from {n_traj} trajectories "
                f"({time.monotonic() - started:.0f} s)")
    return files


# --- (a) calibration --------------------------------------------------------------------------


def forces_metrics(errors, calibration=None) -> dict[str, float]:
    """``molequi evaluate``'s force uncertainty metrics (see :mod:`molequi.training.uncertainty`:
    Spearman per structure of mean |error| and mean std, RMSE ÷ RMS std and the miscalibration
    area per force component) and the force errors of the members' mean."""
    from molequi.models.uncertainty.evaluation import error_metrics, uncertainty_report

    report = uncertainty_report({"forces": errors}, calibration)
    return {
        "spearman": report["forces_std_spearman"],
        "rmse_over_std": report["forces_rmse_over_std"],
        "miscalibration_area": report["forces_miscalibration_area"],
        "nll": report.get("forces_nll"),
        **error_metrics({"forces": errors}),
    }


def train_members(molecule: str, kind: str, files, profile, args, log, count: int | None = None,
                  diversity: str = "seed") -> list[Path]:
    """A committee of ``count`` models (default ``members``; member m is the same model in
    committees of every size) that differ as ``diversity`` says (see ``DIVERSITIES``), or (kind
    ``ensemble``) one shallow ensemble of ``members`` heads."""
    from molequi.training import load_config, train

    count = (count or profile["members"]) if kind == "committee" else 1
    heads = {"model.ensemble_heads": profile["members"]} if kind == "ensemble" else {}
    folder = args.out / (kind if diversity == "seed" else f"{kind}_{diversity}") / molecule
    models = []
    for m in range(count):
        out = folder / f"member_{m}"
        model = out / "model.molequi"
        if model.exists():
            from molequi.models import read_header

            REUSED.append(("model", 60.0 * float(read_header(model)["extra"]["minutes"])))
        else:
            if out.exists():
                shutil.rmtree(out)  # a member this script left unfinished
            member = {"model.cutoff": CUTOFFS[m % len(CUTOFFS)]} if diversity == "cutoff" else {}
            config = load_config(None, {**MODEL, **heads, **member, "max_epochs": profile["epochs"], "seed": m,
                                        "validation": 0.1, "max_minutes": profile["member_minutes"], "device": "cpu",
                                        "progress": False})
            data = bootstrap_resample(files["train"], folder / f"train_bootstrap_{m}.extxyz", seed=100 + m) \
                if diversity == "bootstrap" else files["train"]
            started = time.monotonic()
            result = train(config, str(data), out, log=lambda message: None)
            log(f"{molecule}: {kind} member {m} trained ({result.epochs} epochs, {time.monotonic() - started:.0f} s, "
                f"validation F MAE {result.validation_metrics.get('forces_mae_meV_per_A', math.nan):.1f} meV/Å)")
        models.append(model)
    return models


def bootstrap_resample(source: Path, path: Path, seed: int) -> Path:
    """``path``: as many structures as ``source`` holds, drawn from it with replacement (written once)."""
    from ase.io import read, write

    if not path.exists():
        frames = read(source, ":")
        picks = np.random.default_rng(seed).choice(len(frames), len(frames), replace=True)
        partial = path.with_suffix(".partial.extxyz")
        path.parent.mkdir(parents=True, exist_ok=True)
        write(partial, [frames[k] for k in picks], format="extxyz")
        partial.replace(path)
    return path


def within_trajectory_spearman(errors, frames) -> float:
    """The per-structure Spearman of each test trajectory's frames alone, averaged over the
    trajectories (the narrower test: the frames of one conformer). ``errors``: the forces'
    :class:`~molequi.training.uncertainty.OutputErrors` on ``frames`` (groups index them)."""
    trajectory = np.array([int(frame.info.get("trajectory", 0)) for frame in frames])[errors.groups]
    return float(np.mean([forces_metrics(_subset(errors, trajectory == k))["spearman"] for k in np.unique(trajectory)]))


def members_limit_spearman(models, frames, errors) -> float | None:
    """The Spearman a committee like ``models`` but of unlimited members would reach: a split-half
    estimate (None for fewer than 4 models, or a shallow ensemble).

    With few members the per-structure mean std is itself a noisy estimate: the two halves of the
    committee rank the structures alike only to their Spearman ``r_half``. The Spearman–Brown
    formula gives the reliability of the whole committee's std, ``r = 2 r_half / (1 + r_half)``,
    and a correlation diluted by that noise is the noiseless one times √r; so the limit is the
    measured Spearman ÷ √r (capped at 1). ``errors``: the whole committee's forces errors on
    ``frames``."""
    from scipy.stats import spearmanr

    from molequi.models.uncertainty.evaluation import committee_errors

    if len(models) < 4 or models[0].model.config.ensemble_heads > 1:
        return None
    half = len(models) // 2

    def mean_std(members) -> np.ndarray:
        e = committee_errors(members, frames)["forces"]
        return np.bincount(e.groups, e.std) / np.bincount(e.groups)

    # interleaved halves: each holds every kind of member of a pooled committee alike
    r_half = float(spearmanr(mean_std(models[0:2 * half:2]), mean_std(models[1:2 * half:2]))[0])
    return spearman_brown_limit(forces_metrics(errors)["spearman"], r_half)


def spearman_brown_limit(measured: float, r_half: float) -> float | None:
    """The noiseless correlation behind ``measured``, given the correlation ``r_half`` of the
    two half-committees' stds (None when the halves do not agree at all)."""
    if not r_half > 0:
        return None
    return float(min(1.0, measured / math.sqrt(2 * r_half / (1 + r_half))))


def _subset(errors, mask: np.ndarray):
    return dataclasses.replace(errors, errors=errors.errors[mask], std=errors.std[mask], groups=errors.groups[mask],
                               reference=errors.reference[mask])


def calibration_table(models, files, kind: str, differ: str = DIVERSITIES["seed"]) -> dict:
    """Metrics per temperature before and after ``molequi calibrate``'s fit (scale or power law,
    chosen by held-out NLL) on the calibration geometries."""
    from ase.io import read

    from molequi.models import load_model
    from molequi.models.uncertainty.evaluation import committee_errors, fit_committee_calibration

    loaded = [load_model(path) for path in models]
    calibration_errors = committee_errors(loaded, read(files["calibration"], ":"))["forces"]
    calibration = fit_committee_calibration({"forces": calibration_errors})
    fit = calibration.fits["forces"]
    rows = {}
    for t in TEMPERATURES:
        frames = read(files[f"md_{t:g}K"], ":")
        errors = committee_errors(loaded, frames)["forces"]
        rows[f"{t:g}K"] = {"before": forces_metrics(errors), "after": forces_metrics(errors, calibration),
                           "spearman_within_trajectory": within_trajectory_spearman(errors, frames),
                           "spearman_if_exact": ideal_spearman(errors, calibration),
                           "spearman_members_limit": members_limit_spearman(loaded, frames, errors)}
    from molequi.models import read_header

    heads = loaded[0].model.config.ensemble_heads
    epochs = sorted({int(read_header(path)["extra"]["epochs"]) for path in models})  # a time cap may cut them short
    trained = f"{'–'.join(str(e) for e in (epochs[0], epochs[-1]) if e is not None)} epochs" if len(epochs) > 1 else f"{epochs[0]} epochs"
    name = (f"committee of {len(models)} ({differ})" if kind == "committee" else f"shallow ensemble of {heads} heads") + f", {trained}"
    return {"kind": name, "calibration": {"form": fit.form, "a": fit.a, "b": fit.b}, "temperatures": rows}


# --- (b) active learning vs random ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Loop:
    """The ``molequi learn`` settings a benchmark loop varies (the rest come from the profile);
    defaults are molequi learn's, but for the trust ceiling: none (frame scope), the loop the
    tables here were first measured with. Settings a loop ignores are held at their defaults, so
    loops that differ only in them are one loop (one folder, one learn.json)."""

    selection: str = LearnSettings.selection
    max_std: float | None = None  # eV/Å; None: no trust ceiling
    trust_scope: str = "frame"  # only with a ceiling
    pool_factor: int = DEFAULT_POOL_FACTOR  # only for the uncertain pick
    md_from: str = LearnSettings.md_from
    rank_by: str = LearnSettings.rank_by  # not for random selection
    oracle: bool = False  # rank by the true force error instead of the spread (not for random selection)
    seed: int = LearnSettings.seed

    def __post_init__(self) -> None:
        ignored = {"trust_scope": not self.max_std, "pool_factor": self.selection != "uncertain",
                   "rank_by": self.selection == "random", "oracle": self.selection == "random"}
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name, is_ignored in ignored.items():
            if is_ignored:
                object.__setattr__(self, name, defaults[name])
        if not self.max_std:
            object.__setattr__(self, "max_std", None)

    def _changed(self) -> dict[str, object]:
        """The molequi learn settings (seed aside) that differ from its defaults."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("selection", "seed", "oracle") and getattr(self, f.name) != f.default}

    def folder(self, temperatures: list[float] | None) -> str:
        """The loop's folder name (reused only by a same-settings run)."""
        changed = self._changed()
        return self.selection + "".join([
            f"_max_std{self.max_std:g}" if "max_std" in changed else "",
            "_T" + "-".join(f"{t:g}" for t in temperatures) if temperatures else "",
            f"_pool{self.pool_factor}" if "pool_factor" in changed else "",
            f"_{self.trust_scope}" if "trust_scope" in changed else "",
            f"_from-{self.md_from}" if "md_from" in changed else "",
            f"_rank-{self.rank_by}" if "rank_by" in changed else "",
            "_oracle" if self.oracle else "",
            f"_seed{self.seed}" if self.seed else "",
        ])

    def flags(self) -> str:
        """The molequi learn flags of the settings that differ from molequi learn's defaults (for the tables)."""
        learn = {f.name: f.default for f in dataclasses.fields(LearnSettings)}
        names = ("max_std", "trust_scope", "pool_factor", "md_from", "rank_by")
        changed = {name: getattr(self, name) for name in names if getattr(self, name) != learn[name]
                   and not (name == "trust_scope" and self.max_std is None)
                   and not (name in ("pool_factor", "rank_by") and self.selection == "random")
                   and not (name == "pool_factor" and self.selection != "uncertain")}
        text = "".join(f", --{name.replace('_', '-')} {value:g}" + (" eV/Å" if name == "max_std" else "")
                       if isinstance(value, float) else f", --{name.replace('_', '-')} {'none' if value is None else value}"
                       for name, value in changed.items())
        text += f", --selection {self.selection}" if self.selection != LearnSettings.selection else ""
        return text + (", ranked by the true force error (oracle)" if self.oracle else "")


def learning_comparison(molecule: str, files, profile, args, log, loop: Loop, seeds: tuple[int, ...] = (0,)) -> dict:
    """The loop of ``loop.selection`` and the random one, once per seed (the perturbed start
    copies, the members' initialisation and the MD all follow it); curves per seed and their mean."""
    random = dataclasses.replace(loop, selection="random")
    per_seed = {seed: {name: run_loop(molecule, files, profile, args, log, dataclasses.replace(variant, seed=seed))
                       for name, variant in (("loop", loop), ("random", random))}
                for seed in seeds}
    curves = {name: mean_curve([per_seed[seed][name] for seed in seeds]) for name in ("loop", "random")}
    random_final = curves["random"][-1]
    reached = [p["n_labels"] for p in curves["loop"] if p["forces_mae_meV_per_A"] <= random_final["forces_mae_meV_per_A"]]
    return {
        "selection": loop.selection,
        "oracle": loop.oracle,
        "seeds": list(seeds),
        "curves": curves,
        "per_seed": {str(seed): curves_of_seed for seed, curves_of_seed in per_seed.items()},
        "random_final_mae": random_final["forces_mae_meV_per_A"],
        "random_labels": random_final["n_labels"],
        "loop_labels_to_reach_random": min(reached) if reached else None,
    }


def mean_curve(curves: list[list[dict]]) -> list[dict]:
    """Round by round: the mean number of labels and force MAE over seeds, with the MAE's range."""
    rounds = min(len(curve) for curve in curves)
    mean = []
    for r in range(rounds):
        maes = [curve[r]["forces_mae_meV_per_A"] for curve in curves]
        excess = [curve[r].get("labelled_energy_excess_eV") for curve in curves]
        mean.append({"n_labels": float(np.mean([curve[r]["n_labels"] for curve in curves])),
                     "forces_mae_meV_per_A": float(np.mean(maes)), "min": float(min(maes)), "max": float(max(maes)),
                     "labelled_energy_excess_eV": float(np.mean(excess)) if None not in excess else None})
    return mean


def run_loop(molecule: str, files, profile, args, log, loop: Loop) -> list[dict]:
    """One ``molequi learn`` loop (reused when its folder holds the finished rounds): per round,
    the 1000 K force MAE, the largest spread and the energy of the frames it labels."""
    from molequi.training import load_config
    from molequi.learn import run_learning

    start = rmd17_geometries(args.data_dir, molecule)[0]
    config = load_config(None, {**MODEL, "max_epochs": profile["learn_epochs"], "validation": 0.1, "device": "cpu",
                                "batch_size": 4, "seed": 1000 * loop.seed})
    temperatures = list(args.learn_temperatures or TEMPERATURES)
    folder = args.out / "learn" / molecule / loop.folder(args.learn_temperatures)
    if folder not in LOOPS_USED and (folder / f"round_{profile['rounds']:03d}" / "round.json").exists():
        REUSED.append(("loop", sum(sum(json.loads(path.read_text())["wall_s"].values())
                                   for path in folder.glob("round_*/round.json"))))
    LOOPS_USED.add(folder)  # a loop shared by several comparisons is run, or counted as reused, once
    settings = LearnSettings(
        rounds=profile["rounds"], per_round=profile["per_round"], temperatures=temperatures,
        md_steps=profile["md_steps"], committee=profile["learn_members"], replicas=2, sample_every=10,
        selection=loop.selection, seed=loop.seed, max_std=loop.max_std, trust_scope=loop.trust_scope,
        pool_factor=loop.pool_factor, md_from=loop.md_from, rank_by=loop.rank_by,
    )
    started = time.monotonic()
    name = f"{molecule} {loop.selection} seed {loop.seed}"
    loop_runner = run_ranked_by_true_error if loop.oracle else run_learning
    result = loop_runner(settings, [start], folder, config=config, test_data=[files["md_1000K"]],
                         log=lambda message: log(f"{name}: {message}"))
    log(f"{name}: loop done ({time.monotonic() - started:.0f} s)")
    excess = labelled_energy_excess(folder, files["md_1000K"], len(result.rows))
    return [{"n_labels": row["n_labels"], "forces_mae_meV_per_A": row["test_forces_mae_meV_per_A"],
             "max_std": row["max_std"], "labelled_energy_excess_eV": excess[r]} for r, row in enumerate(result.rows)]


def run_ranked_by_true_error(settings: LearnSettings, start, folder: Path, labeler=None, **kwargs):
    """``molequi learn`` with each round's MD frames ranked by the committee's true force error
    instead of its spread: the loop that error bars which were exactly right would drive (an upper
    bound for every uncertainty; it labels every MD frame to rank them). The trust ceiling still
    reads the spread. molequi learn continues a run whose ``--rounds`` grew, so the loop runs one
    round further per call and, between calls, the frames the next call labels get their true
    error as rank key (:func:`rank_by_true_error`). ``kwargs`` go to ``run_learning``."""
    from molequi.learn import run_learning

    if settings.rank_by != "mean":
        raise ValueError("the true error replaces the mean spread (std_mean): rank_by must be 'mean'")
    result = None
    for rounds in range(settings.rounds + 1):
        if rounds < settings.rounds and (folder / f"round_{rounds + 1:03d}").exists():
            continue  # a later call has begun: it continues from there
        if rounds > 0:
            rank_by_true_error(folder / f"round_{rounds - 1:03d}", labeler)
        result = run_learning(dataclasses.replace(settings, rounds=rounds), start, folder, **kwargs)
    return result


def rank_by_true_error(round_dir: Path, labeler=None) -> None:
    """Replace the rank key (``std_mean``) of ``round_dir``'s MD frames by the round committee's
    true mean per-atom force error against ``labeler`` (default GFN2-xTB), eV/Å; the spread is kept
    as ``spread_mean``. Nothing to do once the round has labelled or was ranked; a frame the
    labeler fails on gets no rank (NaN: never labelled)."""
    from ase.io import read, write

    from molequi.learn import label_structure, make_labeler, predict_committee

    path = round_dir / "candidates.extxyz"
    if (round_dir / "labelled.extxyz").exists():
        return
    frames = read(path, ":")
    if all("spread_mean" in atoms.info for atoms in frames):
        return
    prediction = predict_committee(sorted(round_dir.glob("member_*/model.molequi")), frames)
    calculator = labeler if labeler is not None else make_labeler("xtb")
    for atoms, forces in zip(frames, prediction.forces):
        try:
            reference = label_structure(atoms, calculator).get_forces()
            error = float(np.linalg.norm(forces - reference, axis=1).mean())
        except Exception:  # a geometry the labeler fails on: the loop skips it too
            error = math.nan
        atoms.info["spread_mean"] = atoms.info["std_mean"]
        atoms.info["std_mean"] = error
    partial = path.with_suffix(".ranking.extxyz")
    write(partial, frames, format="extxyz")
    partial.replace(path)  # whole or not at all: a killed ranking is redone


@functools.lru_cache(maxsize=None)
def median_energy(path: Path) -> float:
    """The median reference energy of a labelled file, eV (read once: every loop compares with it)."""
    from ase.io import read

    return float(np.median([atoms.get_potential_energy() for atoms in read(path, ":")]))


def labelled_energy_excess(loop: Path, test_file: Path, n_rounds: int) -> list[float | None]:
    """Per round, the median reference energy of the frames it labelled above the median of the
    1000 K test frames, eV (None for the last round, which labels nothing): how far from the
    thermal 1000 K region the picks lie (committee MD on a poor model strays eV above it)."""
    from molequi.learn import read_labelled

    reference = median_energy(test_file)
    excess: list[float | None] = []
    for r in range(n_rounds):
        path = loop / f"round_{r:03d}" / "labelled.extxyz"
        frames = read_labelled(path) if path.exists() else []
        excess.append(float(np.median([a.get_potential_energy() for a in frames])) - reference if frames else None)
    return excess


# --- report -----------------------------------------------------------------------------------


def _calibration_results(report: dict):
    for key, result in report["calibration"].items():
        molecule, _, kind = key.partition("/")
        yield (molecule, kind), result


def targets(report: dict) -> list[tuple[str, bool]]:
    checks = []
    for (molecule, kind), result in _calibration_results(report):
        rows = result["temperatures"]
        molecule = f"{molecule} {kind}"
        after300, after1000 = rows["300K"]["after"], rows["1000K"]["after"]
        checks.append((f"{molecule}: RMSE÷std after calibration in 0.8–1.25 at 300 K ({after300['rmse_over_std']:.2f})",
                       0.8 <= after300["rmse_over_std"] <= 1.25))
        checks.append((f"{molecule}: RMSE÷std after calibration ≤ 1.5 at 1000 K ({after1000['rmse_over_std']:.2f})",
                       after1000["rmse_over_std"] <= 1.5))
        worst = min(row["after"]["spearman"] for row in rows.values())
        checks.append((f"{molecule}: Spearman ≥ 0.7 at every temperature (lowest {worst:.2f})", worst >= 0.7))
        area = max(row["after"]["miscalibration_area"] for row in rows.values())
        checks.append((f"{molecule}: miscalibration area ≤ 0.1 after calibration (largest {area:.3f})", area <= 0.1))
    for molecule, result in report["learning"].items():
        if result.get("oracle"):
            continue  # a bound for molequi's loops, not one of them
        n = result["loop_labels_to_reach_random"]
        ok = n is not None and n <= 0.5 * result["random_labels"]
        checks.append((f"{molecule}: loop reaches random selection's 1000 K force MAE "
                       f"({result['random_final_mae']:.0f} meV/Å at {result['random_labels']:g} labels) with ≤ half the labels "
                       f"({'never' if n is None else f'{n:g} labels'})", ok))
    return checks


def _mae_cell(point: dict) -> str:
    """Mean force MAE, with the range over seeds when there were several."""
    text = f"{point['forces_mae_meV_per_A']:.0f}"
    if "min" in point and point["max"] > point["min"]:
        text += f" ({point['min']:.0f}–{point['max']:.0f})"
    return text


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _excess_cell(point: dict) -> str:
    excess = point.get("labelled_energy_excess_eV")
    return "–" if excess is None else f"{excess:.1f}"


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"Measured with `{report['command']}` on {m['cpu']} ({m['cpu_count']} cores shared with other jobs, "
        f"load {report['load_before']:.1f} before / {report['load_after']:.1f} after; {report['wall_s'] / 60:.1f} min wall, "
        f"{report['cpu_s'] / 60:.1f} min CPU; torch {m['torch']}, commit {str(m.get('git_commit', ''))[:10]}). "
        f"Profile `{report['profile']}`: {json.dumps(report['settings'])}; models {json.dumps(MODEL)}."
        + (f" Reused from an earlier run in the same --out (not in the times above): "
           f"{sum(kind == 'model' for kind, _ in report['reused'])} trained models and "
           f"{sum(kind == 'loop' for kind, _ in report['reused'])} learning loops, which had taken "
           f"{sum(seconds for _, seconds in report['reused']) / 60:.0f} min wall." if report.get("reused") else ""),
        "",
        "Spearman: per structure, mean |force error| vs mean predicted std (unchanged by calibration); within one "
        "trajectory: the same over each test trajectory's frames alone, averaged; if the errors followed the std: "
        "the mean Spearman of 200 sets of errors drawn from N(0, calibrated std²), the most these error bars can "
        "reach on these frames (they vary too little between structures to rank them better); with unlimited members: "
        "a split-half (Spearman–Brown) estimate of what a committee of the same kind but of many more members would "
        "reach, its std no longer diluted by the few members' sampling noise; RMSE÷std and "
        "miscalibration area per force component; calibration fitted on held-out rMD17 geometries (xTB labels) by "
        "`molequi.training.uncertainty.fit_committee_calibration`, as `molequi calibrate` does.",
        "",
        "| molecule | uncertainty (calibration) | T | Spearman | within one trajectory | if the errors followed the std | with unlimited members | RMSE÷std before | RMSE÷std after | miscal. area before | after | force RMSE (meV/Å) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (molecule, _), result in _calibration_results(report):
        fit = result["calibration"]
        form = f"σ' = {fit['a']:.2f} σ" if fit["form"] == "scale" else f"σ' = {fit['a']:.2f} σ^{fit['b']:.2f}"
        for t, row in result["temperatures"].items():
            b, a = row["before"], row["after"]
            lines.append(f"| {molecule} | {result['kind']} ({form}) | {t} | {a['spearman']:.2f} | "
                         f"{_number(row.get('spearman_within_trajectory'))} | {_number(row.get('spearman_if_exact'))} | "
                         f"{_number(row.get('spearman_members_limit'))} | {b['rmse_over_std']:.2f} | {a['rmse_over_std']:.2f} | {b['miscalibration_area']:.3f} | "
                         f"{a['miscalibration_area']:.3f} | {a['forces_rmse_meV_per_A']:.0f} |")
    for molecule, result in report["learning"].items():
        seeds = result.get("seeds", [0])
        over = f"mean over seeds {', '.join(map(str, seeds))} (range)" if len(seeds) > 1 else f"seed {seeds[0]}"
        lines += ["", f"Active learning on {molecule} (force MAE on the 1000 K xTB MD frames, meV/Å; {over}):", "",
                  f"| labels | loop ({LOOP_NAMES[result['selection']]}) | random from the same MD | "
                  "median energy of the frames it labels next above the test frames', loop / random (eV) |", "|---|---|---|---|"]
        for loop, rand in zip(result["curves"]["loop"], result["curves"]["random"]):
            lines.append(f"| {loop['n_labels']:g} | {_mae_cell(loop)} | {_mae_cell(rand)} | "
                         f"{_excess_cell(loop)} / {_excess_cell(rand)} |")
    lines += ["", "Targets:", ""]
    lines += [f"- {'met' if ok else '**not met**'}: {text}" for text, ok in targets(report)]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    """Three panels: per committee or ensemble (one row each), RMSE ÷ std before and after
    calibration and the measured Spearman beside the one exact error bars of the same spread, and
    the unlimited-members estimate, would reach (markers per temperature); the learning loops
    against random."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    results = list(_calibration_results(report))
    figure, axes = plt.subplots(1, 3, figsize=(17, max(6.2, 2.5 + 0.32 * len(results))),
                                gridspec_kw={"width_ratios": [1, 1, 1.2]})
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    markers = dict(zip(TEMPERATURES, ("o", "s", "^")))
    rows = np.arange(len(results))[::-1]  # the first result on top
    names = [f"{molecule}: {result['kind'].rpartition(', ')[0] or result['kind']}" for (molecule, _), result in results]
    for ax in axes[:2]:
        ax.set_yticks(rows, names, fontsize=7)
        ax.set_ylim(-0.7, len(results) - 0.3)
        ax.grid(alpha=0.3, axis="x")
    ax = axes[0]
    for y, (_, result) in zip(rows, results):
        for k, (t, row) in enumerate(zip(TEMPERATURES, result["temperatures"].values())):
            dy = 0.2 * (k - 1)
            ax.plot([row["before"]["rmse_over_std"]], [y + dy], markers[t], color=colours[k], alpha=0.3)
            ax.plot([row["after"]["rmse_over_std"]], [y + dy], markers[t], color=colours[k])
    ax.axvspan(0.8, 1.25, color="green", alpha=0.1)
    ax.axvline(1.5, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log")  # raw shallow-ensemble spreads can be an order of magnitude too small
    ticks = [0.5, 0.8, 1.0, 1.5, 2.0, 5.0, 10.0, 20.0, 50.0]
    low, high = ax.get_xlim()
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xticks([t for t in ticks if low <= t <= high], [f"{t:g}" for t in ticks if low <= t <= high])
    ax.set_xlabel("force RMSE ÷ predicted std (pale: raw, dark: calibrated)")
    for k, t in enumerate(TEMPERATURES):
        ax.plot([], [], markers[t], color=colours[k], label=f"{t:g} K frames")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=3)
    ax = axes[1]
    for y, (_, result) in zip(rows, results):
        for k, (t, row) in enumerate(zip(TEMPERATURES, result["temperatures"].values())):
            dy = 0.2 * (k - 1)
            ax.plot([row["after"]["spearman"]], [y + dy], markers[t], color=colours[k])
            if row.get("spearman_if_exact") is not None:
                ax.plot([row["spearman_if_exact"]], [y + dy], "|", color=colours[k], ms=8)
            if row.get("spearman_members_limit") is not None:
                ax.plot([row["spearman_members_limit"]], [y + dy], markers[t], color=colours[k], mfc="none", alpha=0.7)
    ax.axvline(0.7, color="grey", lw=0.8)
    ax.set_yticklabels([])
    ax.set_xlabel("Spearman per structure (target ≥ 0.7)")
    for marker, fill, text in (("o", None, "measured"), ("|", None, "if the errors followed the std"),
                               ("o", "none", "with unlimited members (estimate)")):
        ax.plot([], [], marker, color="grey", mfc=fill, ls="", label=text)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2)
    ax = axes[2]
    drawn = set()  # loops of other settings can share one random loop: draw it once
    for k, (name, result) in enumerate(report["learning"].items()):
        for selection, style, shift in (("loop", "o-", -0.25), ("random", "s--", 0.25)):
            curve = result["curves"][selection]
            if selection == "random":
                key = tuple((p["n_labels"], p["forces_mae_meV_per_A"]) for p in curve)
                if key in drawn:
                    continue
                drawn.add(key)
            mae = np.array([p["forces_mae_meV_per_A"] for p in curve])
            spread = np.array([[p.get("min", m) for p, m in zip(curve, mae)], [p.get("max", m) for p, m in zip(curve, mae)]])
            ax.errorbar(np.array([p["n_labels"] for p in curve]) + shift + 0.1 * k, mae, yerr=np.abs(spread - mae),
                        fmt=style, color=colours[k], capsize=3, label=f"{name.partition(', ')[2] or name}: {selection}")
    ax.set_xlabel("labelled structures")
    ax.set_ylabel("force MAE at 1000 K (meV/Å; bars: range over seeds)")
    ax.set_yscale("log")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1))
    ax.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)


def ceiling(text: str) -> tuple[float, str]:
    """``--learn-max-std`` values: ``EV_PER_A`` or ``EV_PER_A:SCOPE`` (molequi learn's --trust-scope)."""
    value, _, scope = text.partition(":")
    scope = scope or "frame"
    if scope not in TRUST_SCOPES:
        raise argparse.ArgumentTypeError(f"trust scope must be one of {', '.join(TRUST_SCOPES)}, got {scope!r}")
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of eV/Å: {value!r}") from None
    if number < 0 or not math.isfinite(number) or (scope != "frame" and number == 0):
        raise argparse.ArgumentTypeError(f"a ceiling must be ≥ 0 eV/Å (> 0 with a scope), got {text!r}")
    return number, scope


def loop_spec(text: str) -> Loop:
    """One loop of ``--learn-loops``: ``key=value`` pairs of :class:`Loop` fields, comma-separated
    (e.g. ``max_std=0.6,trust_scope=trajectory,md_from=labelled``); the seed comes from --learn-seeds."""
    fields = {f.name: f for f in dataclasses.fields(Loop) if f.name != "seed"}
    values: dict[str, object] = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise argparse.ArgumentTypeError(f"{item!r}: expected KEY=VALUE with KEY one of {', '.join(fields)}")
        try:
            values[key] = (float(value) if key == "max_std" else int(value) if key == "pool_factor"
                           else _flag(value) if key == "oracle" else value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r}: not a number (oracle: 0 or 1)") from None
    loop = Loop(**values)
    choices = {"selection": LOOP_NAMES, "trust_scope": TRUST_SCOPES, "md_from": MD_STARTS, "rank_by": RANKINGS}
    for key, allowed in choices.items():
        if getattr(loop, key) not in allowed:
            raise argparse.ArgumentTypeError(f"{key} must be one of {', '.join(allowed)}, got {getattr(loop, key)!r}")
    if loop.max_std is not None and not loop.max_std > 0 or loop.pool_factor < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: max_std must be > 0 eV/Å and pool_factor ≥ 1")
    if loop.oracle and loop.rank_by != "mean":
        raise argparse.ArgumentTypeError(f"{text!r}: oracle=1 ranks by the mean error: add rank_by=mean")
    return loop


def _flag(value: str) -> bool:
    if value not in ("0", "1"):
        raise ValueError(value)
    return value == "1"


def loop_variants(args) -> list[Loop]:
    """Every loop the (b) flags ask for, each compared with random selection: the ``--learn-loops``
    given, or else ceilings × selections × pool factors (uncertain loops only) × MD starts × rankings."""
    if args.learn_loops:
        return list(args.learn_loops)
    variants = []
    for max_std, trust_scope in args.learn_max_std:
        for selection in args.learn_selections:
            pools = args.learn_pool_factor if selection == "uncertain" else [DEFAULT_POOL_FACTOR]
            variants += [Loop(selection, max_std, trust_scope, pool_factor, md_from, rank_by)
                         for pool_factor in pools for md_from in args.learn_md_from for rank_by in args.learn_rank_by]
    return variants


def ideal_spearman(errors, calibration=None, draws: int = 200, seed: int = 0) -> float:
    """The per-structure Spearman (``molequi evaluate``'s) that errors drawn exactly from
    N(0, std²) of the (calibrated) stds of ``errors`` would reach, averaged over ``draws``: the
    ceiling the predicted stds allow (stds that vary little between structures cannot rank them
    well, however right they are)."""
    rng = np.random.default_rng(seed)
    std = calibration.apply("forces", errors.std) if calibration else errors.std
    exact = dataclasses.replace(errors, std=std)
    return float(np.mean([forces_metrics(dataclasses.replace(exact, errors=rng.normal(0.0, std)))["spearman"]
                          for _ in range(draws)]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run of every stage)")
    parser.add_argument("--molecules", nargs="*", default=["ethanol", "aspirin"],
                        help="rMD17 molecules for (a); none: skip (a)")
    parser.add_argument("--committee-members", type=int, nargs="+", default=None, metavar="N",
                        help="(a): committee sizes, one table row each (default: the profile's members; the "
                        "first members are shared, so a larger committee trains only the extra ones)")
    parser.add_argument("--committee-diversity", nargs="+", default=["seed"], choices=list(DIVERSITIES),
                        help="(a): how committee members differ, one committee each: seed only; also a bootstrap "
                        "resample of the training set; also a cutoff (4, 4.5, 5.5, 6 Å in turn). With several, "
                        "a row pools every member trained")
    parser.add_argument("--learn-molecules", nargs="*", default=["ethanol"], help="molecules for (b)")
    parser.add_argument("--learn-max-std", type=ceiling, nargs="+", default=[(0.0, "frame")],
                        metavar="EV_PER_A[:SCOPE]",
                        help="(b): trust ceilings of the loops (molequi learn --max-std, both selections), one pair "
                        "of loops each; 0 = none; ':trajectory' adds --trust-scope trajectory (e.g. 0.6:trajectory)")
    parser.add_argument("--learn-pool-factor", type=int, nargs="+", default=[DEFAULT_POOL_FACTOR], metavar="P",
                        help="(b): molequi learn --pool-factor of the uncertain loops (the diverse pick among the "
                        "P × per-round most uncertain frames), one pair of loops each")
    parser.add_argument("--learn-selections", nargs="+", default=["uncertain"], choices=list(LOOP_NAMES),
                        help="(b): molequi learn --selection of the loops compared with random selection")
    parser.add_argument("--learn-temperatures", type=float, nargs="+", default=None, metavar="K",
                        help=f"(b): MD temperatures of the loops (default {' '.join(f'{t:g}' for t in TEMPERATURES)})")
    parser.add_argument("--learn-md-from", nargs="+", default=["start"], choices=list(MD_STARTS),
                        help="(b): molequi learn --md-from of the loops (both selections), one pair of loops each")
    parser.add_argument("--learn-rank-by", nargs="+", default=["max"], choices=list(RANKINGS),
                        help="(b): molequi learn --rank-by of the loops (the spread that ranks frames), one pair each")
    parser.add_argument("--learn-loops", type=loop_spec, nargs="+", default=None, metavar="KEY=VALUE[,…]",
                        help="(b): the loops to compare with random selection, one spec each (keys: selection, max_std, "
                        "trust_scope, pool_factor, md_from, rank_by; e.g. max_std=0.6,trust_scope=trajectory,"
                        "md_from=labelled); instead of the product of the flags above")
    parser.add_argument("--learn-seeds", type=int, nargs="+", default=[0], metavar="S",
                        help="(b): seeds of every loop pair (start copies, members, MD); the tables show the mean "
                        "over seeds and its range")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="rMD17 .npz directory (geometries only)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench_uncertainty")
    parser.add_argument("--readme", action="store_true", help="paste the Markdown table into docs/benchmarks.md")
    args = parser.parse_args(argv)
    if args.committee_members and min(args.committee_members) < 2:
        parser.error("--committee-members: a committee needs at least 2 members")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from molequi.utils import machine_info

    profile_name = "quick" if args.quick else "full"
    profile = PROFILES[profile_name]
    args.out = args.out / profile_name
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python scripts/bench_uncertainty.py" + (" " + shlex.join(sys.argv[1:]) if len(sys.argv) > 1 else "")
    load_before = os.getloadavg()[0]
    started, cpu_started = time.monotonic(), cpu_seconds()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:6.0f} s] {message}", flush=True)

    report = {"command": command, "profile": profile_name, "settings": profile, "load_before": load_before,
              "calibration": {}, "learning": {}}
    files = {}
    for molecule in dict.fromkeys(args.molecules + args.learn_molecules):
        files[molecule] = molecule_data(molecule, profile, args, log)
    for molecule in args.molecules:
        counts = args.committee_members or [profile["members"]]
        pooled = []
        for diversity in args.committee_diversity:
            for count in counts:
                models = train_members(molecule, "committee", files[molecule], profile, args, log, count, diversity)
                pooled += models if count == max(counts) else []
                name = "committee" + (f" of {count}" if count != profile["members"] else "") \
                    + (f" ({DIVERSITIES[diversity]})" if diversity != "seed" else "")
                report["calibration"][f"{molecule}/{name}"] = calibration_table(models, files[molecule], "committee",
                                                                               DIVERSITIES[diversity])
        if len(args.committee_diversity) > 1:  # every member trained above, in one committee
            differ = ", ".join(DIVERSITIES[d] for d in args.committee_diversity)
            report["calibration"][f"{molecule}/committee of {len(pooled)} (pooled)"] = calibration_table(
                pooled, files[molecule], "committee", differ)
        models = train_members(molecule, "ensemble", files[molecule], profile, args, log)
        report["calibration"][f"{molecule}/ensemble"] = calibration_table(models, files[molecule], "ensemble")
    for molecule in args.learn_molecules:
        for loop in loop_variants(args):
            report["learning"][molecule + loop.flags()] = learning_comparison(molecule, files[molecule], profile, args, log, loop,
                                                          tuple(args.learn_seeds))
    report["reused"] = list(REUSED)
    report["wall_s"] = time.monotonic() - started
    report["cpu_s"] = cpu_seconds() - cpu_started
    report["load_after"] = os.getloadavg()[0]
    report["machine"] = machine_info("cpu")
    report["targets"] = [{"target": text, "met": ok} for text, ok in targets(report)]
    (args.out / "uncertainty.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (args.out / "uncertainty.md").write_text(text)
    plot(report, args.out / "uncertainty.png")
    print(text)
    if args.readme:
        sys.path.insert(0, str(REPO / "scripts"))
        from readme_section import update_readme_section

        update_readme_section("uncertainty", text)
        FIGURE.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args.out / "uncertainty.png", FIGURE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
