#!/usr/bin/env python
"""Learning-loop benchmark (CPU): shifted test, time to failure, ranking, energy per round.

Per molecule and seed, two ways to spend the same labels (GFN2-xTB through tblite):

* random: committees trained from scratch on N frames drawn at random from a 300 K xTB MD pool;
* loop: ``molequi learn`` from one rMD17 geometry (labelled with 4 perturbed copies), committee
  MD at 300, 600 and 1000 K, the most uncertain and mutually different frames labelled; its
  committee at N labels.

A. Shifted test: the union of xTB MD frames at 300, 600 and 1000 K (trajectories other than the
   pool's), torsion scans (each rotatable bond turned through 360°) and stretched bonds (one
   bond 1.15–1.45 × its length), all labelled with xTB. Per N: the force error per component —
   mean, 99th percentile and max over the union — and the mean at 300 K alone.
B. Time to failure: each committee (its mean forces) drives Langevin replicas at 500 K (0.5 fs)
   from the start geometry; a replica fails when a bonded distance deviates > 0.5 Å from the
   start structure's, or a safety stop takes it (too hot, atoms collapsed, non-finite). Mean
   time to failure (runs that survive count their full length: a lower bound) and the fraction
   surviving.
C. Ranking: the Spearman of the per-structure mean force std against the per-structure mean
   |force error| on each temperature's frames, for the loop's last committee and for one
   shallow ensemble (as many heads as the committee has members) trained on the same labels,
   beside the split-half ceiling of unlimited members (Spearman–Brown on two interleaved halves).
   Plus the loop's test energy MAE per round, and the energy and force calibrations of its last
   committee fitted on the 300 K frames (form, exponent, Spearman, warnings).

    python scripts/bench_learning.py                     # reduced: ethanol, 2 seeds, 10/20 labels, ~25 min on 1 core
    python scripts/bench_learning.py --full --molecules ethanol aspirin --readme    # the full settings (many hours)

Reduced settings (default) against full (``--full``): seeds 2 / 5, labels 10, 20 / 10, 20, 40, 80,
committee 4 / 4 members, 25 / 100 epochs per member and round, loop MD 120 / 400 steps per round,
test 12 / 60 frames per temperature and 8 / 36 torsion and stretch frames each, time to failure
4 replicas × 0.2 ps / 8 replicas × 20 ps. The xTB data are cached in ``--out``/data and every
trained committee in ``--out``, so a rerun reuses them. ``--readme`` writes the Markdown into
docs/benchmarks.md (block ``learning``, or ``--block NAME``) and the plot into
``scripts/figures/NAME.png``.
Targets: at equal labels the loop's 99th-percentile force error on the shifted test ≤ 0.7 ×
random's with its 300 K mean within 10 % of random's; the loop's committees survive ≥ 2 × longer
at 20 and 40 labels; Spearman ≥ 90 % of the ceiling at every temperature; the loop's last-round
energy MAE ≤ its first round's; no flat energy calibration without a warning.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "datasets"))  # xtb_md: the xTB MD helpers
sys.path.insert(0, str(REPO / "scripts"))
DEFAULT_DATA = REPO.parent / "shared" / "data" / "rmd17"
FIGURES = REPO / "scripts" / "figures"
TEMPERATURES = (300.0, 600.0, 1000.0)
PROFILES = {
    "reduced": dict(seeds=2, labels=(10, 20), committee=4, epochs=25, md_steps=120, pool=120, test_frames=12,
                    scans=8, ttf_replicas=4, ttf_steps=400, per_round=5),
    "full": dict(seeds=5, labels=(10, 20, 40, 80), committee=4, epochs=100, md_steps=400, pool=600, test_frames=60,
                 scans=36, ttf_replicas=8, ttf_steps=40000, per_round=5),
    "smoke": dict(seeds=1, labels=(10,), committee=4, epochs=2, md_steps=20, pool=10, test_frames=4, scans=2,
                  ttf_replicas=2, ttf_steps=40, per_round=5),  # a check that every stage runs (minutes)
}
MODEL = {"model.channels": 32, "model.l_max": 1, "model.num_layers": 2, "model.radial_hidden": [32, 32],
         "model.readout_hidden": 16, "model.edge_l_max": None}
PERTURBED = 4  # noisy copies labelled beside the loop's start geometry
TTF_TEMPERATURE, TTF_DT, BOND_TOLERANCE = 500.0, 0.5, 0.5  # K, fs, Å
PROFILES_USED: dict = {}  # the profile of this run (for the Markdown)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- data -------------------------------------------------------------------------------------


def torsion_scan(reference, count: int, rng, tries: int = 20) -> list:
    """``count`` structures: a rotatable bond (:func:`molequi.md.torsions.rotatable_bonds`) turned
    to an angle spread over 360°, bonds taken in turn; an angle that clashes is drawn again (up
    to ``tries`` times, then the next bond)."""
    from molequi.md.torsions import clashes, rotatable_bonds, turned

    rotatable = rotatable_bonds(reference)
    frames = []
    for k in range(count):
        for attempt in range(tries * len(rotatable)):
            bond = rotatable[(k + attempt // tries) % len(rotatable)]
            atoms = turned(reference, bond, 360.0 * (k + rng.uniform()) / count)
            if not clashes(atoms, bond):
                frames.append(atoms)
                break
    return frames


def stretched_bonds(reference, count: int, rng) -> list:
    """``count`` structures with one (non-ring) bond stretched to 1.15–1.45 × its length (the
    smaller side of the bond moved along it)."""
    from molequi.md.bonds import bonded_pairs
    from molequi.md.torsions import side_of

    bonds = bonded_pairs(reference)
    frames = []
    candidates = [(i, j, side_of(bonds, len(reference), i, j)) for i, j in bonds.tolist()]
    candidates = [(i, j, m if m.sum() <= len(reference) / 2 else ~m) for i, j, m in candidates if m is not None]
    for k in range(count):
        i, j, mask = candidates[rng.integers(len(candidates))]
        atoms = reference.copy()
        moving, fixed = (j, i) if mask[j] else (i, j)
        vector = atoms.positions[moving] - atoms.positions[fixed]
        atoms.positions[mask] += (rng.uniform(1.15, 1.45) - 1.0) * vector
        frames.append(atoms)
    return frames


def molecule_data(molecule: str, profile: dict, args, ranking_frames: int | None = None) -> dict[str, Path]:
    """xTB-labelled pool (300 K MD), test frames per kind, and the start geometry, cached; with
    ``ranking_frames`` other than the profile's test frames also that many MD frames per
    temperature for C (keys ``rank_md_…``)."""
    import bench_uncertainty as shared
    import xtb_md

    folder = args.out / "data" / molecule
    folder.mkdir(parents=True, exist_ok=True)
    geometries = shared.rmd17_geometries(args.data_dir, molecule)
    start = geometries[0]
    files = {"start": folder / "start.extxyz", "pool": folder / f"pool_300K_{profile['pool']}.extxyz"}
    n, scans = profile["test_frames"], profile["scans"]
    md_sets = {f"md_{t:g}K": (t, n) for t in TEMPERATURES}
    if ranking_frames and ranking_frames != n:  # C's larger sets: the same trajectories, run longer
        md_sets |= {f"rank_md_{t:g}K": (t, ranking_frames) for t in TEMPERATURES}
    files |= {key: folder / f"test_md_{t:g}K_{count}.extxyz" for key, (t, count) in md_sets.items()}
    files |= {"torsion": folder / f"test_torsion_{scans}.extxyz", "stretch": folder / f"test_stretch_{scans}.extxyz"}
    if not files["start"].exists():
        xtb_md.write_extxyz_atomic([start], files["start"])
    if not files["pool"].exists():
        started = time.monotonic()
        frames = []
        for k in range(2):  # two trajectories from two geometries: a pool a random pick can spread over
            frames += shared.xtb_md_frames(geometries[k * len(geometries) // 2], 300.0, profile["pool"] // 2, seed=50 + k,
                                           trajectory=k)
        xtb_md.write_extxyz_atomic(frames, files["pool"])
        log(f"{molecule}: {len(frames)} pool frames, xTB MD at 300 K ({time.monotonic() - started:.0f} s)")
    for key, (t, count) in md_sets.items():
        if not files[key].exists():
            md_test_frames(molecule, geometries, t, count, files[key])
    rng = np.random.default_rng(11)
    for kind, make in (("torsion", torsion_scan), ("stretch", stretched_bonds)):
        if not files[kind].exists():
            frames = shared.xtb_label(make(start, scans, rng), kind)
            for atoms in frames:
                atoms.info["kind"] = kind
            xtb_md.write_extxyz_atomic(frames, files[kind])
            log(f"{molecule}: {len(frames)} {kind} test frames labelled")
    return files


def md_test_frames(molecule: str, geometries, temperature: float, count: int, path: Path) -> None:
    """``count`` xTB MD frames at ``temperature`` (K), half from each of two trajectories started
    at a quarter and three quarters through the rMD17 file, written to ``path``."""
    import bench_uncertainty as shared
    import xtb_md

    started = time.monotonic()
    frames = []
    for k in range(2):
        geometry = geometries[(2 * k + 1) * len(geometries) // 4]
        frames += shared.xtb_md_frames(geometry, temperature, count // 2, seed=70 + k, trajectory=k)
    for atoms in frames:
        atoms.info["kind"] = f"{temperature:g} K"
    xtb_md.write_extxyz_atomic(frames, path)
    log(f"{molecule}: {len(frames)} test frames, xTB MD at {temperature:g} K ({time.monotonic() - started:.0f} s)")


def test_sets(files: dict[str, Path]) -> dict[str, list]:
    from ase.io import read

    return {key: read(path, ":") for key, path in files.items() if key.startswith("md_") or key in ("torsion", "stretch")}


# --- committees -------------------------------------------------------------------------------


def training_config(profile: dict, seed: int, heads: int = 0, init: str | None = None, anchor: float = 0.0):
    """Every member's training settings; with ``init`` (a pretrained model's name) a fine-tuning
    run of it: its architecture, the fine-tuning learning rate (as ``molequi train --init``), and
    the pull ``anchor`` towards its weights (``--anchor``)."""
    from molequi.training import load_config
    from molequi.training.finetune import FINE_TUNE_LEARNING_RATE

    extra = {"model.ensemble_heads": heads} if heads else {}
    architecture = MODEL if init is None else {"init": init, "learning_rate": FINE_TUNE_LEARNING_RATE,
                                               **({"anchor": anchor} if anchor else {})}
    return load_config(None, {**architecture, **extra, "max_epochs": profile["epochs"], "validation": 0.1, "device": "cpu",
                              "batch_size": 4, "seed": seed, "progress": False,
                              # the loop's labels lie far from each other by design (the loop sets it itself)
                              "allow_outliers": bool(heads)})


def random_committee(molecule: str, files, profile, args, seed: int, n_labels: int,
                     init: str | None = None) -> list[Path]:
    """A committee trained on ``n_labels`` frames drawn from the 300 K pool: from scratch, or
    fine-tuned from the pretrained model ``init`` (one model: its ensemble heads are the members)."""
    from ase.io import read, write

    from molequi.training import train

    folder = args.out / ("random" if init is None else f"random_from_{init}") / molecule / f"seed_{seed}" / f"n_{n_labels}"
    data = folder / "train.extxyz"
    if not data.exists():
        pool = read(files["pool"], ":")
        picks = np.random.default_rng([seed, n_labels]).choice(len(pool), n_labels, replace=False)
        folder.mkdir(parents=True, exist_ok=True)
        write(data, [pool[k] for k in picks], format="extxyz")
    models = []
    for m in range(members_from(profile, init)[0]):
        out = folder / f"member_{m}"
        if not (out / "model.molequi").exists():
            if out.exists():
                shutil.rmtree(out)
            train(training_config(profile, 1000 * seed + m, init=init), str(data), out, log=lambda message: None)
        models.append(out / "model.molequi")
    return models


def members_from(profile: dict, init: str | None) -> tuple[int, int]:
    """Committee size and ensemble heads per model: the profile's committee from scratch; from a
    pretrained model with ensemble heads, that one model (how `molequi learn --init` runs it cheaply)."""
    if init is None:
        return profile["committee"], 0
    from molequi.models.io import read_config
    from molequi.training.finetune import resolve_model

    heads = int(read_config(resolve_model(init)).ensemble_heads or 0)
    return (1, heads) if heads >= 2 else (profile["committee"], 0)


def loop_committees(molecule: str, files, profile, args, seed: int, max_std: float | None = None,
                    init: str | None = None, md_from: str = "start",
                    anchor: float = 0.0) -> tuple[dict[int, list[Path]], list[dict]]:
    """The loop's committee at each label count of the profile, and its rounds table; with
    ``max_std`` (eV/Å) under a trust ceiling of trajectory scope (``molequi learn --max-std X
    --trust-scope trajectory``); with ``init`` starting from that pretrained model
    (``molequi learn --init NAME``, pulled towards it by ``anchor``: ``--anchor W``); its MD from
    ``md_from`` (``molequi learn --md-from``)."""
    from ase.io import read

    from molequi.learn import LearnSettings, run_learning

    per_round = profile["per_round"]
    start_labels = 1 + PERTURBED
    rounds = (max(profile["labels"]) - start_labels) // per_round
    committee, heads = members_from(profile, init)
    settings = LearnSettings(rounds=rounds, per_round=per_round, temperatures=list(TEMPERATURES),
                             md_steps=profile["md_steps"], committee=committee, ensemble_heads=heads, replicas=1,
                             sample_every=10,
                             perturbed=PERTURBED, seed=seed, max_std=max_std,
                             trust_scope="trajectory" if max_std else "frame", init=init, md_from=md_from,
                             anchor=anchor)
    name = (("loop" if max_std is None else f"loop_ceiling_{max_std:g}") + ("" if init is None else f"_from_{init}")
            + (f"_anchor_{anchor:g}" if init is not None and anchor else "")
            + ("" if md_from == "start" else f"_md_from_{md_from}"))
    folder = args.out / name / molecule / f"seed_{seed}"
    start = read(files["start"])
    start.calc = None  # labelled with its perturbed copies by the loop itself
    started = time.monotonic()
    if (folder / "learn.json").exists():  # a rerun continues from the rounds the run already took
        rounds = max(rounds, int(json.loads((folder / "learn.json").read_text())["settings"]["rounds"]))
    for extra in range(4):  # under a ceiling a round may label fewer frames: more rounds reach the labels
        settings = dataclasses.replace(settings, rounds=rounds + extra)
        result = run_learning(settings, [start], folder, config=training_config(profile, 1000 * seed, init=init),
                              test_data=[files[f"md_{t:g}K"] for t in TEMPERATURES],
                              log=lambda message: log(f"{molecule} loop seed {seed}: {message}"))
        stuck = len(result.rows) > 1 and result.rows[-2]["n_new"] == 0  # the ceiling left nothing to label
        if result.rows[-1]["n_labels"] >= max(profile["labels"]) or stuck:
            break
    log(f"{molecule} loop seed {seed}: done ({time.monotonic() - started:.0f} s)")
    committees = {}
    for n in profile["labels"]:  # the last committee with at most n labels (fewer under a ceiling: a handicap)
        r = max(k for k, row in enumerate(result.rows) if row["n_labels"] <= n)
        committees[n] = [folder / f"round_{r:03d}" / f"member_{m}" / "model.molequi" for m in range(committee)]
    return committees, result.rows[:max(k for k, row in enumerate(result.rows) if row["n_labels"] <= max(profile["labels"])) + 1]


ENSEMBLES = {"ensemble heads": {}, "ensemble heads, bootstrap + NLL": {"ensemble_bootstrap": True,
                                                                      "ensemble_nll_weight": 1.0},
             "ensemble heads, bootstrap + NLL, 4 × epochs": {"ensemble_bootstrap": True, "ensemble_nll_weight": 1.0,
                                                             "epochs_factor": 4}}
"""The shallow ensembles of C, by name: their training options beside the heads loss (the last
one trains as many epochs as the committee's members together: the same CPU cost)."""


FINE_TUNED_HEADS = {"heads": {}, "heads, bootstrap": {"ensemble_bootstrap": True},
                    "heads, bootstrap + NLL": {"ensemble_bootstrap": True, "ensemble_nll_weight": 1.0}}
"""How the pretrained model's heads are fine-tuned in C′ (beside the heads loss; ``heads`` is the
random selection's model itself)."""


def fine_tuned_heads(molecule: str, files, profile, args, seed: int, n_labels: int, name: str) -> Path:
    """The pretrained model fine-tuned on the random selection's ``n_labels`` labels as
    ``FINE_TUNED_HEADS[name]`` says (the same seed and epochs as that selection's model)."""
    from molequi.training import TrainingConfig, train

    plain = random_committee(molecule, files, profile, args, seed, n_labels, init=args.pretrained)[0]
    if not FINE_TUNED_HEADS[name]:
        return plain
    data = plain.parent.parent / "train.extxyz"
    variant = name.replace("heads, ", "").replace(" + ", "_").replace(" ", "_")
    out = args.out / f"heads_from_{args.pretrained}" / molecule / variant / f"seed_{seed}" / f"n_{n_labels}"
    if not (out / "model.molequi").exists():
        if out.exists():
            shutil.rmtree(out)
        config = training_config(profile, 1000 * seed, init=args.pretrained)
        train(TrainingConfig.from_dict({**config.to_dict(), **FINE_TUNED_HEADS[name]}), str(data), out,
              log=lambda message: None)
    return out / "model.molequi"


def more_members(molecule: str, profile, args, seed: int, committee: list[Path], count: int) -> list[Path]:
    """``count`` more members (other seeds) trained like ``committee``'s on the same labels:
    with them a committee of twice the size."""
    from molequi.training import TrainingConfig, train

    data = committee[0].parent.parent / "train.extxyz"
    models = []
    for m in range(count):
        out = args.out / "more_members" / molecule / f"seed_{seed}" / data.parent.name / f"member_{m}"
        if not (out / "model.molequi").exists():
            if out.exists():
                shutil.rmtree(out)
            config = training_config(profile, 1000 * seed + 500 + m)
            train(TrainingConfig.from_dict({**config.to_dict(), "allow_outliers": True}), str(data), out,
                  log=lambda message: None)
        models.append(out / "model.molequi")
    return models


def ensemble_on_loop_labels(molecule: str, profile, args, seed: int, committee: list[Path], name: str) -> Path:
    """One shallow ensemble (``committee`` heads, trained as ``ENSEMBLES[name]`` says) on the
    labels the loop's ``committee`` had."""
    from molequi.training import TrainingConfig, train

    data = committee[0].parent.parent / "train.extxyz"
    options = dict(ENSEMBLES[name])
    factor = options.pop("epochs_factor", 1)
    variant = ("heads" if not options else "bootstrap_nll") + (f"_x{factor}" if factor > 1 else "")
    out = args.out / "ensemble" / molecule / variant / f"seed_{seed}" / data.parent.name
    if not (out / "model.molequi").exists():
        if out.exists():
            shutil.rmtree(out)
        config = training_config(profile, 1000 * seed, heads=profile["committee"])
        config = TrainingConfig.from_dict({**config.to_dict(), **options, "max_epochs": factor * profile["epochs"]})
        train(config, str(data), out, log=lambda m: None)
    return out / "model.molequi"


# --- A: shifted test --------------------------------------------------------------------------


def members_on(models, frames) -> list[dict]:
    from molequi.models.predict import predict
    from molequi.models.uncertainty.committee import load_models

    return predict(load_models([str(m) for m in models]), frames)


def shifted_test(models, tests: dict[str, list]) -> dict:
    """Force errors per component of the committee mean on the union of the test sets (mean,
    99th percentile, max; eV/Å → meV/Å), the 300 K mean, and the energy MAE (meV)."""
    from molequi.data.labels import structure_labels

    errors, energy, by_kind = [], [], {}
    for kind, frames in tests.items():
        results = members_on(models, frames)
        kind_errors = []
        for atoms, result in zip(frames, results):
            e, f = structure_labels(atoms)
            kind_errors.append(np.abs(np.asarray(result["forces"]) - f).ravel())
            energy.append(abs(result["energy"] - e))
        by_kind[kind] = 1000 * float(np.mean(np.concatenate(kind_errors)))
        errors += kind_errors
    every = np.concatenate(errors)
    return {"mean": 1000 * float(every.mean()), "p99": 1000 * float(np.quantile(every, 0.99)),
            "max": 1000 * float(every.max()), "mean_300K": by_kind["md_300K"], "by_kind": by_kind,
            "energy_mae_meV": 1000 * float(np.mean(energy))}


# --- B: time to failure -----------------------------------------------------------------------


def time_to_failure(models, reference, profile, seed: int) -> dict:
    """Langevin MD of ``ttf_replicas`` replicas at 500 K; the time (fs) each fails, or the run's
    length for survivors; mean over replicas and the fraction surviving."""
    from molequi.md import BatchedMD, Potential, load_models, state_from_atoms
    from molequi.md.bonds import BondWatch

    replicas = profile["ttf_replicas"]
    potential = Potential(load_models([str(m) for m in models]))
    state = state_from_atoms([reference] * replicas, temperature=TTF_TEMPERATURE, friction=0.01, seed=10_000 * seed)
    engine = BatchedMD(potential, state, dt=TTF_DT, ensemble="nvt")
    failed: dict[int, float] = {}
    watch = BondWatch([reference] * replicas, tolerance=BOND_TOLERANCE, new_bonds=False, every=10)
    engine.run(profile["ttf_steps"], [watch])
    for event in engine.stopped:
        failed[event.system] = event.step * TTF_DT
    length = profile["ttf_steps"] * TTF_DT
    times = [failed.get(k, length) for k in range(replicas)]
    return {"mean_fs": float(np.mean(times)), "surviving": 1.0 - len(failed) / replicas, "length_fs": length}


# --- C: ranking -------------------------------------------------------------------------------


def per_structure_spread(models, frames) -> dict[str, np.ndarray]:
    """One prediction pass over ``frames``: per structure the mean |force error| of the members'
    mean, the mean force std over all members and over each interleaved half (eV/Å; the halves
    empty below 4 members), and its atom count."""
    from molequi.data.labels import structure_labels

    error, std, halves = [], [], ([], [])
    for atoms, result in zip(frames, members_on(models, frames)):
        members = np.asarray(result["forces_members"])  # [M, n, 3]
        error.append(np.abs(members.mean(0) - structure_labels(atoms)[1]).mean())
        std.append(np.sqrt(members.var(0, ddof=1).mean(-1)).mean())
        if len(members) >= 4:
            for half, part in zip(halves, (members[0::2], members[1::2])):
                half.append(np.sqrt(part.var(0, ddof=1).mean(-1)).mean())
    return {"error": np.asarray(error), "std": np.asarray(std), "half_a": np.asarray(halves[0]),
            "half_b": np.asarray(halves[1]), "atoms": np.array([len(atoms) for atoms in frames])}


def spread_by_set(models, tests: dict[str, list]) -> tuple[dict, dict[str, dict]]:
    """:func:`per_structure_spread` over every test frame in one pass, and its slice per test set."""
    every = [atoms for frames in tests.values() for atoms in frames]
    spread, parts, start = per_structure_spread(models, every), {}, 0
    for key, frames in tests.items():
        parts[key] = {name: values[start:start + len(frames)] if len(values) else values for name, values in spread.items()}
        start += len(frames)
    return spread, parts


def force_mae(spread: dict[str, np.ndarray]) -> float:
    """Mean |force error| per component over the structures of ``spread`` (meV/Å): each
    structure's mean weighted by its atoms, as :func:`shifted_test`'s mean."""
    return 1000 * float(np.average(spread["error"], weights=spread["atoms"]))


def spearman_with_ceiling(spread: dict[str, np.ndarray]) -> tuple[float, float | None]:
    """Spearman of per-structure mean force std vs mean |force error| (from
    :func:`per_structure_spread`), and its split-half ceiling for unlimited members
    (Spearman–Brown; None below 4 members)."""
    from scipy.stats import spearmanr

    measured = float(spearmanr(spread["error"], spread["std"]).statistic)
    if not len(spread["half_a"]):
        return measured, None
    r_half = float(spearmanr(spread["half_a"], spread["half_b"]).statistic)
    if not r_half > 0:
        return measured, None
    return measured, float(np.clip(measured / math.sqrt(2 * r_half / (1 + r_half)), -1.0, 1.0))


def spread_ratio(spread: dict[str, np.ndarray]) -> float:
    """RMS over structures of the per-structure mean |force error| ÷ RMS of the per-structure
    mean force std (raw, uncalibrated): 1 when the spread is sized like the error."""
    return float(np.sqrt(np.mean(np.square(spread["error"])) / np.mean(np.square(spread["std"]))))


def committee_ranking(models, tests: dict[str, list], members: int) -> dict:
    """C for one committee (or ensemble of ``members`` heads): per MD temperature the Spearman and
    its split-half ceiling (:func:`spearman_with_ceiling`), the mean force error over every test
    frame (meV/Å), and ``members``."""
    spread, parts = spread_by_set(models, tests)
    return {**{key: spearman_with_ceiling(part) for key, part in parts.items() if key.startswith("md_")},
            "test force MAE": force_mae(spread), "members": members}


def heads_ranking(models, tests: dict[str, list]) -> dict:
    """C′ for one fine-tuned model: Spearman per temperature and on every test frame together
    (torsions and stretched bonds too: what the loop must rank across), the raw spread's size
    (:func:`spread_ratio`) and the mean force error (meV/Å)."""
    spread, parts = spread_by_set(models, tests)
    ranking = {key: spearman_with_ceiling(part)[0] for key, part in parts.items() if key.startswith("md_")}
    return {**ranking, "all": spearman_with_ceiling(spread)[0], "error / spread": spread_ratio(spread),
            "test force MAE": force_mae(spread)}


def energy_and_force_calibration(models, frames) -> dict:
    """``molequi calibrate``'s fits of the committee on ``frames``: per output its form, exponent,
    Spearman and warnings."""
    from molequi.models.uncertainty.committee import load_models
    from molequi.models.uncertainty.evaluation import committee_errors, fit_committee_calibration

    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        calibration = fit_committee_calibration(committee_errors(load_models([str(m) for m in models]), frames))
    return {name: {"form": fit.form, "b": fit.b, "spearman": calibration.info["outputs"][name]["spearman"],
                   "warnings": calibration.info["outputs"][name]["warnings"]} for name, fit in calibration.fits.items()}


# --- the run ----------------------------------------------------------------------------------


def within_out(args, model: Path) -> str:
    """``model``'s path relative to ``--out``, so that the cache holds whether ``--out`` was given
    relative or absolute."""
    out = args.out.resolve()
    resolved = model.resolve()
    return str(resolved.relative_to(out)) if resolved.is_relative_to(out) else str(resolved)


def content_digest(paths) -> str:
    """SHA-256 over the bytes of ``paths`` (in order): the data files an evaluation read."""
    import hashlib

    digest = hashlib.sha256()
    for path in map(Path, paths):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def cached(args, key: str, models, compute, data_digest: str = ""):
    """``compute()``'s result, reused from ``--out``/evaluations.json while the model files are
    those it was computed with (same sizes and modification times) and the data it read (the test
    frames, the start structure) have the same :func:`content_digest`: a test set generated again
    misses."""
    from molequi.utils import atomic_write_text

    path = args.out / "evaluations.json"
    store = json.loads(path.read_text()) if path.exists() else {}
    stamp = [[within_out(args, m), m.stat().st_size, m.stat().st_mtime] for m in map(Path, models)]
    if key in store and store[key].get("data") == data_digest and store[key]["models"] == stamp:
        return store[key]["result"]
    result = compute()
    # read again before writing: runs of other seeds (--only-seed) may share the file meanwhile
    store = json.loads(path.read_text()) if path.exists() else {}
    store[key] = {"models": stamp, "data": data_digest, "result": result}
    atomic_write_text(path, json.dumps(store))
    return result


def provenance(argv) -> str:
    import os
    import platform
    import shlex
    import subprocess

    commit = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    load = os.getloadavg()[0]
    return (f"Measured with `python scripts/bench_learning.py {shlex.join(argv)}` at commit {commit or '?'} on "
            f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores shared with other jobs, load "
            f"{load:.1f} at the end), one torch thread.")


def loop_specs(args, anchored: bool = False) -> dict[str, dict]:
    """The loops ``args`` ask for, by the name the report gives them: ``loop_committees``'s
    keyword arguments for each. ``anchored``: the loops from the pretrained model with
    ``--anchored-loops W`` instead (reported by their rounds only)."""
    from molequi.learn.settings import DEFAULT_MAX_STD

    if anchored:
        if not (args.pretrained and args.anchored_loops is not None):
            return {}
        return {f"loop from {args.pretrained}, ceiling {DEFAULT_MAX_STD:g} eV/Å" + ("" if md_from == "start" else ", rotamers")
                + f", anchor {args.anchored_loops:g}": dict(max_std=DEFAULT_MAX_STD, init=args.pretrained, md_from=md_from,
                                                              anchor=args.anchored_loops)
                for md_from in (("start", "rotamers") if args.rotamer_loops else ("start",))}
    specs: dict[str, dict] = {"loop": {}}
    if args.loop_max_std:
        specs[f"loop, ceiling {args.loop_max_std:g} eV/Å"] = dict(max_std=args.loop_max_std)
    if args.pretrained:  # as `molequi learn --init NAME` runs by default: under the default ceiling
        specs[f"loop from {args.pretrained}, ceiling {DEFAULT_MAX_STD:g} eV/Å"] = dict(max_std=DEFAULT_MAX_STD,
                                                                                        init=args.pretrained)
    if args.rotamer_loops:  # the ceiling loops again, their MD from random rotamers of the start
        if args.loop_max_std:
            specs[f"loop, ceiling {args.loop_max_std:g} eV/Å, rotamers"] = dict(max_std=args.loop_max_std,
                                                                                 md_from="rotamers")
        if args.pretrained:
            specs[f"loop from {args.pretrained}, ceiling {DEFAULT_MAX_STD:g} eV/Å, rotamers"] = dict(
                max_std=DEFAULT_MAX_STD, init=args.pretrained, md_from="rotamers")
    return specs


def selection_names(args) -> list[str]:
    """Every selection ``args`` ask for (the names ``--long-ttf-selections`` accepts)."""
    return ["random"] + ([f"random from {args.pretrained}"] if args.pretrained else []) + list(loop_specs(args))


def run_molecule(molecule: str, profile: dict, args) -> dict:
    from ase.io import read

    files = molecule_data(molecule, profile, args, args.ranking_frames)
    tests = test_sets(files)
    ranking_tests = tests | {key.removeprefix("rank_"): read(path, ":") for key, path in files.items()
                             if key.startswith("rank_")}  # C's frames: A's, or more with --ranking-frames
    reference = read(files["start"])
    data = content_digest(path for key, path in sorted(files.items())  # what the evaluations read
                          if key != "pool" and not key.startswith("rank_"))
    ranking_data = data + content_digest(path for key, path in sorted(files.items()) if key.startswith("rank_"))
    report: dict = {"seeds": [], "labels": list(profile["labels"]), "ranking_frames": len(ranking_tests["md_300K"])}
    for seed in ([args.only_seed] if args.only_seed is not None else range(profile["seeds"])):
        entry: dict = {"seed": seed, "random": {}}
        loops = {name: loop_committees(molecule, files, profile, args, seed, **options)
                 for name, options in loop_specs(args).items()}
        anchored_loops = {name: loop_committees(molecule, files, profile, args, seed, **options)
                          for name, options in loop_specs(args, anchored=True).items()}  # their rounds only
        committees, rows = loops["loop"]
        entry["rounds"] = {kind: [{k: row.get(k) for k in ("n_labels", "test_energy_mae_meV", "test_energy_bias_meV",
                                                           "test_forces_mae_meV_per_A")} for row in found_rows]
                           for kind, (_, found_rows) in (loops | anchored_loops).items()}
        for n in profile["labels"]:
            runs = [(kind, found[n]) for kind, (found, _) in loops.items()]
            runs.append(("random", random_committee(molecule, files, profile, args, seed, n)))
            if args.pretrained:
                runs.append((f"random from {args.pretrained}",
                             random_committee(molecule, files, profile, args, seed, n, init=args.pretrained)))
            for kind, models in runs:
                entry.setdefault(kind, {})
                started = time.monotonic()
                result = cached(args, f"{molecule}/{kind}/{seed}/{n}/{profile['ttf_steps']}", models,
                                lambda: {**shifted_test(models, tests),
                                         "ttf": time_to_failure(models, reference, profile, seed)}, data)
                if args.long_ttf_ps and n in args.long_ttf_labels and kind in (args.long_ttf_selections or [kind]):
                    steps = max(1, round(1000 * args.long_ttf_ps / TTF_DT))
                    result = {**result, "ttf_long": cached(
                        args, f"{molecule}/{kind}/{seed}/{n}/ttf/{steps}", models,
                        lambda: time_to_failure(models, reference, {**profile, "ttf_steps": steps}, seed), data)}
                entry[kind][n] = result
                log(f"{molecule} seed {seed} {kind} {n} labels: force mean {result['mean']:.0f}, p99 {result['p99']:.0f}, "
                    f"max {result['max']:.0f} meV/Å, 300 K {result['mean_300K']:.0f} meV/Å; time to failure "
                    f"{result['ttf']['mean_fs']:.0f} fs, {100 * result['ttf']['surviving']:.0f} % survive "
                    f"({time.monotonic() - started:.0f} s)")
        last = max(profile["labels"])
        entry["ranking"] = {}
        variants = [("committee", committees[last]),
                    (f"committee of {2 * len(committees[last])}",
                     committees[last] + more_members(molecule, profile, args, seed, committees[last],
                                                     len(committees[last])))] + [
            (name, [ensemble_on_loop_labels(molecule, profile, args, seed, committees[last], name)]) for name in ENSEMBLES]
        frames = len(ranking_tests["md_300K"])
        for name, models in variants:
            members = len(models) if len(models) > 1 else profile["committee"]  # an ensemble: its heads
            entry["ranking"][name] = cached(args, f"{molecule}/ranking/{name}/{seed}/{last}/{frames}", models,
                                            lambda: committee_ranking(models, ranking_tests, members), ranking_data)
        entry["calibration"] = cached(args, f"{molecule}/calibration/{seed}/{last}/{frames}", committees[last],
                                      lambda: energy_and_force_calibration(committees[last], ranking_tests["md_300K"]),
                                      ranking_data)
        if args.pretrained:
            entry["heads_ranking"] = {name: {n: cached(args, f"{molecule}/heads/{name}/{seed}/{n}", [model],
                                                      lambda: heads_ranking([model], tests), data)
                                             for n in profile["labels"]
                                             for model in [fine_tuned_heads(molecule, files, profile, args, seed, n, name)]}
                                      for name in FINE_TUNED_HEADS}
        log(f"{molecule} seed {seed}: ranking {json.dumps(entry['ranking'])}; calibration {json.dumps(entry['calibration'])}")
        report["seeds"].append(entry)
        (args.out / f"{args.block}.json").write_text(json.dumps({molecule: report}, indent=1))
    return report


def mean_sd(values) -> tuple[float, float]:
    values = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if not len(values):
        return math.nan, math.nan
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def cell(values, digits: int = 0) -> str:
    mean, sd = mean_sd(values)
    return "–" if math.isnan(mean) else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def selections(report: dict) -> list[str]:
    """The ways of picking labels a report holds: random first (from scratch, then from a
    pretrained model), then the loops."""
    kinds = report["seeds"][0]
    return ["random"] + [k for k in kinds if k.startswith("random from")] + [k for k in kinds if k.startswith("loop")]


def baseline_of(selection: str) -> str:
    """The random selection a loop is judged against: the one with the same start."""
    return f"random from {selection.split(' from ')[1].split(',')[0]}" if " from " in selection else "random"


def members_for(ratio: float, members: int | None, target: float = 0.9) -> float | None:
    """Members a committee would need for Spearman ≥ ``target`` × ceiling, by Spearman–Brown from
    ``ratio`` = Spearman ÷ ceiling measured with ``members``: the ratio is the square root of
    the committee spread's reliability R (how alike two committees of the same size rank the
    frames), R = M·r / (1 + (M − 1)·r) for M members of reliability r each. None without a
    positive ratio or a member count."""
    if not members or not ratio > 0:
        return None
    reliability = min(ratio, 0.999) ** 2
    single = reliability / (members - (members - 1) * reliability)
    goal = target ** 2
    return goal * (1 - single) / (single * (1 - goal))


def targets(report: dict) -> list[tuple[str, bool | None]]:
    seeds = report["seeds"]
    checks = []
    for loop in [kind for kind in selections(report) if kind.startswith("loop")]:
        random = baseline_of(loop)
        for n in report["labels"]:
            loop_p99, random_p99 = (mean_sd([s[k][n]["p99"] for s in seeds])[0] for k in (loop, random))
            loop_300, random_300 = (mean_sd([s[k][n]["mean_300K"] for s in seeds])[0] for k in (loop, random))
            checks.append((f"{n} labels: {loop} p99 force error ≤ 0.7 × {random}'s ({loop_p99:.0f} vs {random_p99:.0f} "
                           "meV/Å)", loop_p99 <= 0.7 * random_p99))
            checks.append((f"{n} labels: {loop} 300 K mean within 10 % of {random}'s ({loop_300:.0f} vs {random_300:.0f} "
                           "meV/Å)", loop_300 <= 1.1 * random_300))
            if n in (20, 40):
                ttf = "ttf_long" if all("ttf_long" in s[k][n] for s in seeds for k in (loop, random)) else "ttf"
                loop_t, random_t = (mean_sd([s[k][n][ttf]["mean_fs"] for s in seeds])[0] for k in (loop, random))
                length = seeds[0][random][n][ttf]["length_fs"] / 1000
                checks.append((f"{n} labels: {loop} survives ≥ 2 × {random}'s time over {length:g} ps ({loop_t:.0f} vs "
                               f"{random_t:.0f} fs)", loop_t >= 2 * random_t))
    for name in seeds[0]["ranking"]:
        for key in [k for k in seeds[0]["ranking"][name] if k.startswith("md_")]:
            # the seeds with a ceiling (none where the halves disagree), measured and ceiling from the same seeds
            pairs = [s["ranking"][name][key] for s in seeds if s["ranking"][name][key][1] is not None]
            measured, ceiling = (mean_sd([pair[k] for pair in pairs])[0] for k in (0, 1))
            text = f"{name} {key.removeprefix('md_')}: Spearman ≥ 0.9 × ceiling ({measured:.2f} vs {ceiling:.2f}" + (
                f", {len(pairs)} of {len(seeds)} seeds with a ceiling)" if len(pairs) < len(seeds) else ")")
            ok = None if not ceiling > 0 else measured >= 0.9 * ceiling
            needed = members_for(measured / ceiling, seeds[0]["ranking"][name].get("members")) if ok is False else None
            checks.append((text + (f"; Spearman–Brown: ~{needed:.0f} members would reach it" if needed else ""), ok))
    for loop in seeds[0]["rounds"]:
        first, last = (mean_sd([s["rounds"][loop][k]["test_energy_mae_meV"] for s in seeds])[0] for k in (0, -1))
        checks.append((f"{loop}: energy MAE last round ≤ first ({last:.0f} vs {first:.0f} meV)", last <= first))
    silent = [s for s in seeds if s["calibration"].get("energy", {}).get("b", 1.0) < 0.3 and not s["calibration"]["energy"]["warnings"]]
    checks.append(("no flat energy calibration without a warning", not silent))
    return checks


def markdown(results: dict, profile_name: str, wall: float, argv=()) -> str:
    lines = [provenance(argv), "", f"Settings: `{profile_name}` ({', '.join(f'{k} {v}' for k, v in (PROFILES_USED or PROFILES[profile_name]).items())}); "
             f"wall {wall / 60:.0f} min in this invocation (models, loops and evaluations that earlier runs left in "
             f"--out are reused, not counted). Mean ± sd over seeds; force errors per component, meV/Å.", ""]
    for molecule, report in results.items():
        seeds = report["seeds"]
        lines += [f"**{molecule}** — A (shifted test) and B (time to failure at {TTF_TEMPERATURE:g} K)", "",
                  "| labels | selection | mean | p99 | max | 300 K mean | energy MAE (meV) | time to failure (fs) | surviving |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for n in report["labels"]:
            for kind in selections(report):
                rows = [s[kind][n] for s in seeds]
                lines.append(f"| {n} | {kind} | {cell([r['mean'] for r in rows])} | {cell([r['p99'] for r in rows])} | "
                             f"{cell([r['max'] for r in rows])} | {cell([r['mean_300K'] for r in rows])} | "
                             f"{cell([r['energy_mae_meV'] for r in rows])} | {cell([r['ttf']['mean_fs'] for r in rows])} | "
                             f"{cell([100 * r['ttf']['surviving'] for r in rows])} % |")
        long = [(n, kind) for n in report["labels"] for kind in selections(report)
                if all("ttf_long" in s[kind][n] for s in seeds)]
        if long:
            length = seeds[0][long[0][1]][long[0][0]]["ttf_long"]["length_fs"] / 1000
            lines += ["", f"B over {length:g} ps per replica (the same models and replicas, run longer)", "",
                      "| labels | selection | time to failure (fs) | surviving |", "|---|---|---|---|"]
            for n, kind in long:
                rows = [s[kind][n]["ttf_long"] for s in seeds]
                lines.append(f"| {n} | {kind} | {cell([r['mean_fs'] for r in rows])} | "
                             f"{cell([100 * r['surviving'] for r in rows])} % |")
        last = max(report["labels"])
        kinds = list(seeds[0]["random"][last]["by_kind"])
        lines += ["", f"Mean force error per kind of test frame at {last} labels (meV/Å): where each selection's "
                  "labels help, and what sets the 99th percentile", "",
                  "| selection | " + " | ".join(k.removeprefix("md_") for k in kinds) + " |",
                  "|---|" + "---|" * len(kinds)]
        for kind in selections(report):
            lines.append(f"| {kind} | " + " | ".join(cell([s[kind][last]["by_kind"][k] for s in seeds]) for k in kinds)
                         + " |")
        keys = [k for k in seeds[0]["ranking"]["committee"] if k.startswith("md_")]
        frames = report.get("ranking_frames", PROFILES_USED.get("test_frames"))
        lines += ["", f"C (ranking on the loop's last labels, {frames} MD frames per temperature: Spearman of "
                  f"per-structure force std vs error, and the "
                  f"split-half ceiling; {PROFILES_USED.get('committee', 4)} members or heads unless named; the ensembles "
                  "train one model, 1/4 of a committee of 4's CPU time, but the last, which trains 4 × the epochs)", "",
                  "| members | " + " | ".join(k.removeprefix("md_") for k in keys) + " | test force mean (meV/Å) |",
                  "|---|" + "---|" * (len(keys) + 1)]
        for name in seeds[0]["ranking"]:
            lines.append(f"| {name} | " + " | ".join(
                f"{cell([s['ranking'][name][k][0] for s in seeds], 2)} (ceiling {cell([s['ranking'][name][k][1] for s in seeds], 2)})"
                for k in keys) + f" | {cell([s['ranking'][name].get('test force MAE') for s in seeds])} |")
        if "heads_ranking" in seeds[0]:
            variants = seeds[0]["heads_ranking"]
            columns = [k for k in next(iter(next(iter(variants.values())).values())) if k != "test force MAE"]
            lines += ["", "C′ (the pretrained model's heads fine-tuned on the random selection's labels, one model: "
                      "Spearman of per-structure force std vs error per temperature and over every test frame, the "
                      "raw spread's size as RMS error ÷ RMS std, 1 = sized right before calibration)", "",
                      "| labels | fine-tuned | " + " | ".join(k.removeprefix("md_") for k in columns)
                      + " | test force mean (meV/Å) |", "|---|---|" + "---|" * (len(columns) + 1)]
            for n in report["labels"]:
                for name in variants:
                    rows = [s["heads_ranking"][name][n] for s in seeds]
                    lines.append(f"| {n} | {name} | " + " | ".join(cell([r[k] for r in rows], 2) for k in columns)
                                 + f" | {cell([r['test force MAE'] for r in rows])} |")
        lines += ["", "Per round (energy MAE, mean energy error and force MAE on the MD test frames; labels: mean "
                  "over seeds):", "", "| selection | round | labels | energy MAE (meV) | energy mean error (meV) | "
                  "force MAE (meV/Å) |", "|---|---|---|---|---|---|"]
        for loop in seeds[0]["rounds"]:
            count = min(len(s["rounds"][loop]) for s in seeds)
            for r in range(count):
                rows = [s["rounds"][loop][r] for s in seeds]
                lines.append(f"| {loop} | {r} | {mean_sd([x['n_labels'] for x in rows])[0]:.0f} | "
                             f"{cell([x['test_energy_mae_meV'] for x in rows])} | "
                             f"{cell([x['test_energy_bias_meV'] for x in rows])} | "
                             f"{cell([x['test_forces_mae_meV_per_A'] for x in rows])} |")
        calibration = seeds[-1]["calibration"]
        lines += ["", f"Calibration of the loop's last committee on the {frames} frames at 300 K (last seed): " + "; ".join(
            f"{name} {c['form']} b = {c['b']:.2f}, Spearman {c['spearman']:.2f}"
            + (f" — warned: {c['warnings'][0].split(' (')[0]}" if c["warnings"] else "") for name, c in calibration.items()), "",
                  "Targets:", ""]
        lines += [f"- {'met' if ok else ('n/a' if ok is None else '**not met**')}: {text}" for text, ok in targets(report)]
        lines.append("")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    """Per molecule: the shifted-test force error (p99 solid, mean dotted) and the time to
    failure against labels, one colour per selection, the legend below the panels (seven
    selections would hide the curves)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    figure, axes = plt.subplots(len(results), 2, figsize=(9, 3.4 * len(results) + 1.2), squeeze=False)
    handles: dict[str, Line2D] = {}
    for row, (molecule, report) in enumerate(results.items()):
        long_ps = None
        labels, seeds = report["labels"], report["seeds"]
        for k, kind in enumerate(selections(report)):
            colour = f"C{k % 10}"
            for key, style in (("p99", "o-"), ("mean", "s:")):
                values = [mean_sd([s[kind][n][key] for s in seeds]) for n in labels]
                axes[row][0].errorbar(labels, [v[0] for v in values], [v[1] for v in values], fmt=style, color=colour,
                                      capsize=3)
            values = [mean_sd([s[kind][n]["ttf"]["mean_fs"] for s in seeds]) for n in labels]
            axes[row][1].errorbar(labels, [v[0] for v in values], [v[1] for v in values], fmt="o-", color=colour,
                                  capsize=3)
            long = [n for n in labels if all("ttf_long" in s[kind][n] for s in seeds)]
            if long:  # the longer runs of B at the survival target's label counts
                values = [mean_sd([s[kind][n]["ttf_long"]["mean_fs"] for s in seeds]) for n in long]
                axes[row][1].errorbar(long, [v[0] for v in values], [v[1] for v in values], fmt="*", markersize=11,
                                      color=colour, capsize=3)
                long_ps = seeds[0][kind][long[0]]["ttf_long"]["length_fs"] / 1000
            handles.setdefault(kind, Line2D([], [], color=colour, marker="o", label=kind))
        axes[row][0].set(xlabel="labels", ylabel="shifted-test force error (meV/Å)", yscale="log",
                         title=f"{molecule}: p99 (solid), mean (dotted)")
        axes[row][1].set(xlabel="labels", ylabel=f"time to failure at {TTF_TEMPERATURE:g} K (fs)", yscale="log",
                         title=molecule + (f": {long_ps:g} ps runs as stars" if long_ps else ""))
        for axis in axes[row]:
            axis.grid(alpha=0.3)
    figure.legend(handles=list(handles.values()), loc="lower center", ncol=2, fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0.06 + 0.03 * math.ceil(len(handles) / 2) / len(results), 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="the full settings (see above) instead of the reduced ones")
    parser.add_argument("--smoke", action="store_true", help="tiny settings: check that every stage runs")
    parser.add_argument("--molecules", nargs="+", default=["ethanol"], help="rMD17 molecules (default ethanol; the full benchmark: ethanol aspirin)")
    parser.add_argument("--seeds", type=int, default=None, help="override the profile's seed count")
    parser.add_argument("--labels", type=int, nargs="+", default=None, metavar="N",
                        help="override the profile's label counts (reduced: 10 20; full: 10 20 40 80); the loops "
                             "continue the rounds they took before")
    parser.add_argument("--only-seed", type=int, default=None, metavar="K",
                        help="compute seed K alone (seeds may run in parallel processes sharing --out; a later run "
                             "without it reads them from the cache and reports them all)")
    parser.add_argument("--loop-max-std", type=float, default=None, metavar="EV_PER_A",
                        help="also run the loop under this trust ceiling (trajectory scope), as a third selection")
    parser.add_argument("--ttf-ps", type=float, default=None, metavar="PS",
                        help="override the profile's time-to-failure length per replica (ps; reduced: 0.2, full: 20)")
    parser.add_argument("--long-ttf-ps", type=float, default=None, metavar="PS",
                        help="also run time to failure this long (ps) for --long-ttf-labels (the survival target's "
                             "label counts), beside the profile's; cached like the rest")
    parser.add_argument("--long-ttf-labels", type=int, nargs="+", default=[20, 40], metavar="N",
                        help="label counts that get the longer time-to-failure run (default: 20 40)")
    parser.add_argument("--long-ttf-selections", nargs="+", default=None, metavar="NAME",
                        help="only these selections get the longer run (default: all; names as the tables give them, "
                             "e.g. random \"loop, ceiling 0.6 eV/Å, rotamers\")")
    parser.add_argument("--ranking-frames", type=int, default=None, metavar="N",
                        help="C (ranking, calibration) on N xTB MD frames per temperature (the test trajectories "
                             "run longer) instead of A's test frames: a Spearman over 12 frames is noisy; A, B and "
                             "their cache are untouched")
    parser.add_argument("--pretrained", metavar="NAME", default=None,
                        help="also start from this shipped model (e.g. organic-xtb): a random selection fine-tuned "
                             "from it and its loop (molequi learn --init NAME, default ceiling), judged against it; "
                             "a model with ensemble heads is its own committee (one model, its heads the members)")
    parser.add_argument("--anchored-loops", type=float, default=None, metavar="W",
                        help="also run the loops from --pretrained with --anchor W, for their errors per round")
    parser.add_argument("--rotamer-loops", action="store_true",
                        help="also run the ceiling loops (--loop-max-std, and from --pretrained) with their MD "
                             "from random rotamers of the start (molequi learn --md-from rotamers)")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="rMD17 .npz directory (geometries only)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench_learning")
    parser.add_argument("--readme", action="store_true", help="write the Markdown block and the plot into the docs")
    parser.add_argument("--block", default="learning", metavar="NAME",
                        help="the docs block --readme writes, and the plot's name under scripts/figures (default "
                             "learning: ethanol; e.g. learning-aspirin for another molecule's run)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.long_ttf_selections or ()) - set(selection_names(args)))
    if unknown:
        parser.error(f"--long-ttf-selections: no selection named {', '.join(map(repr, unknown))}; these flags give "
                     f"{', '.join(map(repr, selection_names(args)))}")
    name = "full" if args.full else ("smoke" if args.smoke else "reduced")
    profile = dict(PROFILES[name])
    if args.seeds is not None:
        profile["seeds"] = args.seeds
    if args.labels:
        profile["labels"] = tuple(sorted(args.labels))
    if args.ttf_ps is not None:
        profile["ttf_steps"] = max(1, round(1000 * args.ttf_ps / TTF_DT))
    PROFILES_USED.update(profile)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    results = {molecule: run_molecule(molecule, profile, args) for molecule in args.molecules}
    (args.out / f"{args.block}.json").write_text(json.dumps(results, indent=1))
    text = markdown(results, name, time.monotonic() - started, sys.argv[1:] if argv is None else argv)
    (args.out / f"{args.block}.md").write_text(text)
    plot(results, args.out / f"{args.block}.png")
    print(text)
    if args.readme:
        from readme_section import update_readme_section

        shutil.copy(args.out / f"{args.block}.png", FIGURES / f"{args.block}.png")
        update_readme_section(args.block, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
