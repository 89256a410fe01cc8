"""Active learning: grow a training set where a committee of potentials disagrees.

Each round trains a committee on the labels so far (warm-started from the previous round's
members), runs committee MD with the batched engine at the given temperatures, picks the
``per_round`` most uncertain and mutually different frames, labels them with an ASE calculator
(GFN2-xTB through tblite by default) and adds them to the training set::

    from molequi.training import load_config
    from molequi.training.learn import LearnSettings, run_learning
    settings = LearnSettings(rounds=3, per_round=10, temperatures=[300.0, 600.0], md_steps=400)
    run_learning(settings, ["ethanol.xyz"], "runs/learn", config=load_config(None, {"max_epochs": 30}))

Round r (0 … ``rounds``) trains on ``n_labels`` structures, evaluates the committee on the test
data, explores with MD, and — except in the last round — labels ``per_round`` new frames.
Files in the output directory (each written atomically)::

    learn.json                  settings and the content hashes of the start structures and test data
    start.extxyz                the labelled start set (start structures, and perturbed copies)
    round_NNN/train.extxyz      the training set of round NNN
    round_NNN/member_M/         a ``molequi train`` run per committee member (model.molequi …)
    round_NNN/candidates.extxyz the MD frames with their committee spread
    round_NNN/labelled.extxyz   the frames picked and labelled in round NNN
    round_NNN/round.json        the round's row and timings (written last: the round is done)
    rounds.csv, rounds.png      one row per round; test error and max spread against labels

A run killed at any point continues where it stopped when the same command is run again:
training members resume from their checkpoints, labels already computed are kept. A rerun
with different settings, start structures or test data is refused, naming what changed
(only ``rounds`` may grow). Units: Å, eV, eV/Å, fs, K.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import importlib
import io
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from molequi.errors import ConfigError, MolequiError
from molequi.utils import atomic_write

FORMAT = "molequi-learn"
RESUMABLE_SETTINGS = ("rounds",)
"""Loop settings that may change when a run continues (more rounds extend the loop)."""
IGNORED_TRAINING_KEYS = ("device", "num_workers", "progress", "eval_batch_size")
"""Training settings that do not change results, so they may differ on a rerun."""
ROUND_COLUMNS = [
    "round", "n_labels", "n_new", "md_frames", "md_stopped", "max_std", "mean_std",
    "test_energy_mae_meV", "test_forces_mae_meV_per_A", "test_forces_rmse_meV_per_A",
]
SELECTIONS = ("uncertain", "clustered", "random")
TRUST_SCOPES = ("frame", "trajectory")
MD_STARTS = ("start", "labelled")
RANK_KEYS = {"max": "std_max", "mean": "std_mean"}  # each ranking of frames, and the frame info it reads
RANKINGS = tuple(RANK_KEYS)
_EXTXYZ_DECIMALS = 8  # extxyz stores positions with 8 decimals: label exactly what is stored


@dataclass
class LearnSettings:
    """Settings of an active-learning run.

    Attributes:
        rounds: acquisition rounds; rounds 0 … ``rounds`` are trained, so ``rounds`` × ``per_round``
            frames are labelled in all.
        per_round: frames labelled per round.
        temperatures: MD temperatures, K (each start structure runs at each of them).
        md_steps: MD steps per round (Langevin, ``timestep`` fs).
        committee: independently initialised models (the spread needs two members in all).
        ensemble_heads: K ≥ 2: each model is a shallow ensemble of K readout heads on one body
            (``--committee 1 --ensemble-heads 4``: one model, four members); 0: plain models.
        labeler: ``"xtb"`` (GFN2-xTB, tblite) or an ASE calculator class as ``"module:Class"``.
        labeler_kwargs: keyword arguments of that class (JSON-serialisable).
        perturbed: for each unlabelled start structure, how many copies with Gaussian noise of
            ``perturb_sigma`` Å on the positions are labelled beside it.
        perturb_sigma: Å.
        replicas: MD systems per start structure and temperature (different seeds).
        sample_every: MD steps between recorded frames.
        pool_factor: the diverse pick is made among the ``pool_factor`` × ``per_round`` most
            uncertain frames (1: simply the most uncertain).
        rank_by: the spread the uncertain and clustered picks rank frames by: ``"max"`` (the
            largest per-atom force spread: a frame with one strayed atom ranks high) or ``"mean"``
            (the mean over atoms: frames the committee gets wrong as a whole, which is what a
            per-structure force error measures). The trust ceiling always reads the largest.
        selection: ``"uncertain"`` (the above), ``"clustered"`` (the MD frames split into
            ``per_round`` clusters of similar geometry, the most uncertain frame of each: every
            region the MD visited gets a label, where the uncertain pick may spend all of them on
            the few wildest frames; see :func:`select_clustered`) or ``"random"`` (frames drawn
            uniformly from the same MD: the baseline that active learning must beat).
        max_std: frames whose largest per-atom force spread exceeds this (eV/Å) are not labelled:
            a committee that disagrees that much has usually left physical geometries (a trust
            ceiling, as in DP-GEN); None: no ceiling.
        trust_scope: what a frame over ``max_std`` rules out: ``"frame"`` (that frame only) or
            ``"trajectory"`` (that frame and every later one of its MD system: a trajectory driven
            by forces the committee disagrees on has left the region its labels describe, and its
            later frames are no more physical when the spread dips again; see
            :func:`beyond_ceiling`).
        md_from: where each round's MD starts: ``"start"`` (the start structures, every round) or
            ``"labelled"`` (from round 1 on, the frames the previous round labelled, one system per
            frame and temperature: the exploration moves on to where the last picks lay, instead of
            covering the same ``md_steps`` around the start every round; round 0, and a round whose
            predecessor labelled nothing, start from the start structures).
        timestep: MD time step, fs.
        friction: Langevin friction, 1/fs.
        seed: base seed of the perturbations, the members and the MD.
    """

    rounds: int
    per_round: int
    temperatures: list[float]
    md_steps: int
    committee: int = 4
    ensemble_heads: int = 0
    labeler: str = "xtb"
    labeler_kwargs: dict[str, Any] = field(default_factory=dict)
    perturbed: int = 4
    perturb_sigma: float = 0.05
    replicas: int = 2
    sample_every: int = 10
    pool_factor: int = 4
    rank_by: str = "max"
    selection: str = "uncertain"
    max_std: float | None = None
    trust_scope: str = "frame"
    md_from: str = "start"
    timestep: float = 0.5
    friction: float = 0.01
    seed: int = 0

    def validate(self) -> None:
        checks = [
            (self.rounds >= 0, f"--rounds must be ≥ 0, got {self.rounds}"),
            (self.per_round >= 1, f"--per-round must be ≥ 1, got {self.per_round}"),
            (len(self.temperatures) >= 1, "--temperature needs at least one value"),
            (all(t > 0 and math.isfinite(t) for t in self.temperatures),
             f"--temperature values must be > 0 K, got {self.temperatures}"),
            (self.md_steps >= 1, f"--md-steps must be ≥ 1, got {self.md_steps}"),
            (self.committee >= 1, f"--committee must be ≥ 1, got {self.committee}"),
            (self.ensemble_heads >= 0, f"--ensemble-heads must be ≥ 0, got {self.ensemble_heads}"),
            (self.ensemble_heads != 1, "--ensemble-heads must be 0 (none) or ≥ 2 (heads of a shallow ensemble)"),
            (self.committee * max(1, self.ensemble_heads) >= 2,
             "the uncertainty needs at least two members: --committee 2 or more, or --ensemble-heads 2 or more"),
            (self.perturbed >= 0, f"--perturbed must be ≥ 0, got {self.perturbed}"),
            (self.perturb_sigma >= 0, f"--perturb-sigma must be ≥ 0 Å, got {self.perturb_sigma}"),
            (self.replicas >= 1, f"--replicas must be ≥ 1, got {self.replicas}"),
            (1 <= self.sample_every <= self.md_steps,
             f"--sample-every must be between 1 and --md-steps ({self.md_steps}), got {self.sample_every}"),
            (self.pool_factor >= 1, f"--pool-factor must be ≥ 1, got {self.pool_factor}"),
            (self.max_std is None or self.max_std > 0, f"--max-std must be > 0 eV/Å, got {self.max_std}"),
            (self.trust_scope in TRUST_SCOPES,
             f"--trust-scope must be one of {', '.join(TRUST_SCOPES)}, got {self.trust_scope!r}"),
            (self.rank_by in RANKINGS, f"--rank-by must be one of {', '.join(RANKINGS)}, got {self.rank_by!r}"),
            (self.md_from in MD_STARTS, f"--md-from must be one of {', '.join(MD_STARTS)}, got {self.md_from!r}"),
            (self.selection in SELECTIONS, f"--selection must be one of {', '.join(SELECTIONS)}, got '{self.selection}'"),
            (self.timestep > 0, f"--timestep must be > 0 fs, got {self.timestep}"),
            (self.friction >= 0, f"--friction must be ≥ 0 1/fs, got {self.friction}"),
            (isinstance(self.labeler_kwargs, dict), "--labeler-kwargs must be a JSON object"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        parse_labeler(self.labeler)


# --- labelling ----------------------------------------------------------------------------------


def parse_labeler(spec: str) -> tuple[str, str] | None:
    """``"xtb"`` → None (GFN2-xTB); ``"module:Class"`` → (module, class name).

    Raises:
        ConfigError: any other form.
    """
    if spec == "xtb":
        return None
    module, sep, name = spec.partition(":")
    if not sep or not module or not name or not name.isidentifier() or not all(
        part.isidentifier() for part in module.split(".")
    ):
        raise ConfigError(f"--labeler must be 'xtb' or an ASE calculator class as 'module:Class', got '{spec}'")
    return module, name


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


# --- selection ----------------------------------------------------------------------------------


def distance_descriptor(atoms: Atoms) -> np.ndarray:
    """Sorted interatomic distances, Å: invariant to rotation, translation and atom order."""
    positions = atoms.positions
    i, j = np.triu_indices(len(atoms), k=1)
    return np.sort(np.linalg.norm(positions[j] - positions[i], axis=-1))


def select_frames(stds: np.ndarray, descriptors: Sequence[np.ndarray], k: int, pool_factor: int = 4) -> list[int]:
    """Indices of uncertain and mutually different frames, in the order they were picked.

    Greedy farthest-point sampling among the ``pool_factor × k`` frames of highest ``stds``: the
    most uncertain frame first, then repeatedly the pool frame farthest (Euclidean distance of
    descriptors; frames of different size count as infinitely far) from those already picked.
    Returns the whole pool in pick order (a caller labels the first ``k`` that succeed).

    Args:
        stds: [n_frames] uncertainty per frame (e.g. the largest per-atom force spread, eV/Å).
        descriptors: one vector per frame (see :func:`distance_descriptor`).
        k: frames wanted.
        pool_factor: pool size relative to ``k`` (1: the ``k`` most uncertain).
    """
    stds = np.asarray(stds, dtype=np.float64)
    if len(stds) != len(descriptors):
        raise ValueError(f"{len(stds)} stds but {len(descriptors)} descriptors")
    finite = np.flatnonzero(np.isfinite(stds))
    order = finite[np.argsort(-stds[finite], kind="stable")]
    pool = list(order[: max(k, 1) * pool_factor])
    if not pool:
        return []
    picked = [pool.pop(0)]
    nearest = np.array([_descriptor_distance(descriptors[p], descriptors[picked[0]]) for p in pool])
    while pool:
        best = int(np.argmax(nearest))  # ties go to the more uncertain frame (pool is sorted)
        picked.append(pool.pop(best))
        nearest = np.delete(nearest, best)
        nearest = np.minimum(nearest, [_descriptor_distance(descriptors[p], descriptors[picked[-1]]) for p in pool])
    return [int(p) for p in picked]


def select_clustered(stds: np.ndarray, descriptors: Sequence[np.ndarray], k: int, seed: int = 0) -> list[int]:
    """Indices of the most uncertain frame of each of ``k`` clusters of similar frames, most
    uncertain first, then every other frame of finite ``stds`` by falling uncertainty (the
    fallbacks of a caller whose labeler fails on a frame).

    The clusters are k-means (scipy, k-means++ start) of the descriptors; frames of different
    size (descriptor length) are clustered apart, with the ``k`` clusters shared between the sizes
    in proportion to their frame counts (each size at least one while ``k`` lasts).

    Args:
        stds: [n_frames] uncertainty per frame (eV/Å); NaN or inf: never picked.
        descriptors: one vector per frame (see :func:`distance_descriptor`).
        k: frames wanted (clusters).
        seed: seeds the k-means start.
    """
    from scipy.cluster.vq import kmeans2

    stds = np.asarray(stds, dtype=np.float64)
    if len(stds) != len(descriptors):
        raise ValueError(f"{len(stds)} stds but {len(descriptors)} descriptors")
    finite = np.flatnonzero(np.isfinite(stds))
    groups: dict[int, list[int]] = {}
    for index in finite:
        groups.setdefault(len(descriptors[index]), []).append(int(index))
    shares = _cluster_shares([len(members) for members in groups.values()], k)
    rng = np.random.default_rng(seed)
    picked: list[int] = []
    for members, clusters in zip(groups.values(), shares):
        clusters = min(clusters, len(members))
        if clusters == 0:
            continue
        if clusters == len(members):
            labels = np.arange(len(members))
        else:
            data = np.stack([descriptors[m] for m in members]).astype(np.float64)
            _, labels = kmeans2(data, clusters, minit="++", seed=rng)
        for cluster in np.unique(labels):
            in_cluster = [m for m, label in zip(members, labels) if label == cluster]
            picked.append(max(in_cluster, key=lambda m: stds[m]))
    picked.sort(key=lambda m: -stds[m])
    chosen = set(picked)
    rest = [int(m) for m in finite[np.argsort(-stds[finite], kind="stable")] if m not in chosen]
    return picked + rest


def _cluster_shares(sizes: list[int], k: int) -> list[int]:
    """``k`` clusters shared in proportion to ``sizes`` (largest remainders), each size ≥ 1 while they last."""
    if not sizes:
        return []
    shares = [min(1, size) for size in sizes] if k >= len(sizes) else [0] * len(sizes)
    if k < len(sizes):  # fewer clusters than sizes: the most numerous sizes get one each
        for index in np.argsort(sizes)[::-1][:k]:
            shares[int(index)] = 1
        return shares
    spare = k - sum(shares)
    ideal = np.array(sizes, dtype=np.float64) / sum(sizes) * spare
    extra = np.floor(ideal).astype(int)
    for index in np.argsort(-(ideal - extra))[: spare - int(extra.sum())]:
        extra[int(index)] += 1
    return [int(share + more) for share, more in zip(shares, extra)]


def beyond_ceiling(stds: np.ndarray, systems: Sequence[int], steps: Sequence[int], ceiling: float,
                   scope: str = "frame") -> np.ndarray:
    """Frames the trust ceiling rules out: a [n_frames] boolean mask.

    Args:
        stds: [n_frames] largest per-atom force spread per frame, eV/Å.
        systems: the MD system (trajectory) of each frame.
        steps: the MD step of each frame (order within its trajectory).
        ceiling: eV/Å.
        scope: ``"frame"``: the frames over ``ceiling``; ``"trajectory"``: also every frame of a
            trajectory after its first one over ``ceiling``.
    """
    stds = np.asarray(stds, dtype=np.float64)
    over = ~(stds <= ceiling)  # NaN spreads count as over
    if scope == "frame":
        return over
    systems, steps = np.asarray(systems), np.asarray(steps)
    ruled_out = over.copy()
    for system in np.unique(systems):
        frames = np.flatnonzero(systems == system)
        crossed = steps[frames][over[frames]]
        if len(crossed):
            ruled_out[frames[steps[frames] >= crossed.min()]] = True
    return ruled_out


def _descriptor_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b)) if a.shape == b.shape else math.inf


# --- committee predictions ----------------------------------------------------------------------


@dataclass
class CommitteePrediction:
    """Committee mean and spread on a list of structures (eV, eV/Å)."""

    energy: np.ndarray  # [S] mean energy, eV
    energy_std: np.ndarray  # [S] eV
    forces: list[np.ndarray]  # per structure [n_atoms, 3] mean forces, eV/Å
    forces_std: list[np.ndarray]  # per structure [n_atoms] per-atom spread, eV/Å


def predict_committee(models: Sequence[str | Path], structures: Sequence[Atoms], device: str = "cpu") -> CommitteePrediction:
    """Evaluate a committee (model files) on each structure with the ASE calculator."""
    from molequi.calculators import MolequiCalculator

    calculator = MolequiCalculator([str(m) for m in models], device=device, skin=0.0)
    energy, energy_std, forces, forces_std = [], [], [], []
    for atoms in structures:
        atoms = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        atoms.calc = calculator
        energy.append(atoms.get_potential_energy())
        forces.append(atoms.get_forces().copy())
        energy_std.append(calculator.results.get("energy_std", math.nan))
        forces_std.append(np.asarray(calculator.results.get("forces_std", np.full(len(atoms), math.nan))).copy())
    return CommitteePrediction(np.array(energy), np.array(energy_std), forces, forces_std)


def test_errors(prediction: CommitteePrediction, structures: Sequence[Atoms]) -> dict[str, float]:
    """Energy MAE (meV, total energy) and force MAE/RMSE (meV/Å, per component) of the committee mean."""
    from molequi.data.graph import structure_labels

    labels = [structure_labels(atoms) for atoms in structures]
    energy_errors = np.array([prediction.energy[k] - e for k, (e, _) in enumerate(labels)])
    force_errors = np.concatenate([(prediction.forces[k] - f).ravel() for k, (_, f) in enumerate(labels)])
    return {
        "test_energy_mae_meV": 1000.0 * float(np.abs(energy_errors).mean()),
        "test_forces_mae_meV_per_A": 1000.0 * float(np.abs(force_errors).mean()),
        "test_forces_rmse_meV_per_A": 1000.0 * float(np.sqrt((force_errors**2).mean())),
    }


# --- exploration --------------------------------------------------------------------------------


def explore(
    models: Sequence[str | Path],
    starts: Sequence[Atoms],
    settings: LearnSettings,
    seed: int,
    device: str = "cpu",
    replicas: int | None = None,
) -> tuple[list[Atoms], list[str]]:
    """Committee Langevin MD of every start structure at every temperature (``replicas`` systems
    each; default ``settings.replicas``).

    Returns the frames recorded every ``sample_every`` steps, with ``info`` holding ``std_max``
    and ``std_mean`` (largest and mean per-atom force spread, eV/Å), ``energy_std`` (eV),
    ``temperature`` (K), ``system`` and ``md_step``; and the reasons of systems stopped early
    (too hot, collapsed, non-finite: their earlier frames are kept).
    """
    from molequi.md import BatchedMD, Potential, load_models, state_from_atoms

    systems, temperatures = [], []
    for atoms in starts:
        for temperature in settings.temperatures:
            for _ in range(settings.replicas if replicas is None else replicas):
                systems.append(atoms)
                temperatures.append(float(temperature))
    potential = Potential(load_models([str(m) for m in models], device=device))
    state = state_from_atoms(systems, temperature=temperatures, friction=settings.friction, seed=seed, device=device)
    engine = BatchedMD(potential, state, dt=settings.timestep, ensemble="nvt")
    frames: list[Atoms] = []

    def record(md: BatchedMD) -> None:
        if md.state.step % settings.sample_every or md.state.num_systems == 0:
            return
        s = md.state
        stds = md.outputs["forces_std"]
        positions = s.positions.cpu().numpy()
        batch = s.batch.cpu().numpy()
        std = stds.cpu().numpy()
        energy_std = md.outputs["energy_std"].cpu().numpy()
        for k, system in enumerate(s.system_ids.tolist()):
            mask = batch == k
            atoms = Atoms(numbers=s.numbers[mask].cpu().numpy(), positions=positions[mask])
            atoms.info.update({
                "std_max": float(std[mask].max()), "std_mean": float(std[mask].mean()),
                "energy_std": float(energy_std[k]), "temperature": temperatures[system],
                "system": int(system), "md_step": int(s.step),
            })
            frames.append(atoms)

    engine.run(settings.md_steps, observers=[record])
    return frames, [str(event) for event in engine.stopped]


# --- the loop -----------------------------------------------------------------------------------


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
            base seed: member m of round r uses ``seed + m + 100 r``).
        test_data: labelled files to evaluate each round's committee on.
        log: where progress lines go (default: stdout).

    Raises:
        MolequiError subclasses for bad settings, inputs, a changed rerun, or a labeler failure.
    """
    from molequi.data.graph import structure_labels
    from molequi.data.readers import read_structures, require_labels
    from molequi.training import TrainingConfig, resolve_device

    say = log if log is not None else (lambda message: print(message, flush=True))
    settings.validate()
    config = config if config is not None else TrainingConfig()
    out_dir = Path(out_dir)
    starts = read_start(start) if start and not isinstance(start[0], Atoms) else [a.copy() for a in start]
    test_paths = [str(p) for p in (test_data or [])]
    test_structures: list[Atoms] = []
    for path in test_paths:
        structures = read_structures(path)
        require_labels(structures, path)
        test_structures.extend(structures)
    identity = {
        "format": FORMAT,
        "settings": asdict(settings),
        "training": {k: v for k, v in config.to_dict().items() if k not in IGNORED_TRAINING_KEYS},
        "start_sha256": structures_sha256(starts),
        "test_sha256": files_sha256(test_paths) if test_paths else None,
    }
    labeler = None

    def get_labeler():
        nonlocal labeler
        if labeler is None:
            labeler = make_labeler(settings.labeler, settings.labeler_kwargs)
        return labeler

    if settings.rounds > 0 or not all(None not in structure_labels(a) for a in starts):
        get_labeler()  # a missing or broken labeler fails here, before anything is written
    _check_identity(out_dir, identity, say)
    device = str(resolve_device(config.device))

    start_file = out_dir / "start.extxyz"
    if not start_file.exists():
        labelled = _label_start(starts, settings, get_labeler, say)
        _write_extxyz(labelled, start_file)
    md_starts = [Atoms(numbers=a.numbers, positions=a.positions) for a in starts]
    rows: list[dict[str, Any]] = []
    models: list[Path] = []
    for r in range(settings.rounds + 1):
        row, models = _run_round(r, settings, config, out_dir, md_starts, test_structures, device, get_labeler, say)
        rows.append(row)
        _write_rounds(rows, out_dir)
    say(f"done: {settings.rounds + 1} rounds, {rows[-1]['n_labels']} labels; committee: {','.join(str(m) for m in models)}")
    return LearnResult(out_dir, rows, models)


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


def _label_start(starts: list[Atoms], settings: LearnSettings, get_labeler, say) -> list[Atoms]:
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


def _run_round(r, settings, config, out_dir, md_starts, test_structures, device, get_labeler, say):
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
            record["row"]["n_new"] = _label_round(round_dir, candidates, settings, get_labeler, say)
            say(f"round {r}/{settings.rounds}: labelled {record['row']['n_new']} frames ({settings.labeler})")
            _write_json(record, done)
        return record["row"], members
    round_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    clock = _Clock(timings)

    train_file = round_dir / "train.extxyz"
    if not train_file.exists():
        data = read(out_dir / "start.extxyz", ":")
        for q in range(r):
            data += read_labelled(out_dir / f"round_{q:03d}" / "labelled.extxyz")
        _write_extxyz(data, train_file)
    n_labels = len(read(train_file, ":"))
    with clock("train"):
        for m, model_path in enumerate(members):
            if model_path.exists():
                continue
            member_dir = model_path.parent
            member_config = _member_config(config, settings, r, m, n_labels)
            resume = (member_dir / "checkpoints" / "last.pt").exists()
            previous = out_dir / f"round_{r - 1:03d}" / f"member_{m}" / "model.molequi"
            train(member_config, str(train_file), member_dir, resume=resume, log=lambda message: None,
                  init_weights=previous if r > 0 and not resume else None,
                  overwrite=not resume)  # a member killed before its first epoch starts again
    say(f"round {r}/{settings.rounds}: trained {settings.committee} members on {n_labels} labels "
        f"({timings['train']:.1f} s)")
    row: dict[str, Any] = {"round": r, "n_labels": n_labels}
    if test_structures:
        with clock("test"):
            row.update(test_errors(predict_committee(members, test_structures, device), test_structures))
        say(f"round {r}/{settings.rounds}: test force MAE {row['test_forces_mae_meV_per_A']:.1f} meV/Å, "
            f"energy MAE {row['test_energy_mae_meV']:.1f} meV ({len(test_structures)} structures)")

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
            _write_extxyz(candidates, candidates_file)
            _write_json(stopped, stopped_file)
    stds = np.array([a.info["std_max"] for a in candidates])
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
            n_new = _label_round(round_dir, candidates, settings, get_labeler, say)
        say(f"round {r}/{settings.rounds}: labelled {n_new} frames ({settings.labeler}, {timings['label']:.1f} s)")
    row["n_new"] = n_new
    _write_json({"row": row, "wall_s": timings, "stopped": stopped}, done)
    return row, members


def md_seeds(r: int, settings: LearnSettings, out_dir: Path, starts: list[Atoms]) -> tuple[list[Atoms], int]:
    """The structures round ``r``'s MD starts from, and the systems per structure and temperature
    (see ``LearnSettings.md_from``)."""
    previous = out_dir / f"round_{r - 1:03d}" / "labelled.extxyz"
    if settings.md_from == "labelled" and r > 0 and previous.exists():
        labelled = [Atoms(numbers=a.numbers, positions=a.positions) for a in read_labelled(previous)]
        if labelled:
            return labelled, 1
    return starts, settings.replicas


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


def _member_config(config, settings: LearnSettings, r: int, m: int, n_labels: int):
    from molequi.training import TrainingConfig

    values = config.to_dict()
    values["seed"] = config.seed + m + 100 * r
    values["progress"] = False
    if settings.ensemble_heads >= 2:
        values["model"] = {**values["model"], "ensemble_heads": settings.ensemble_heads}
    validation = values["validation"]
    if isinstance(validation, int) and 2 * validation > n_labels:  # keep most labels for training
        values["validation"] = max(1, n_labels // 10)
    return TrainingConfig.from_dict(values)


def _label_round(round_dir: Path, candidates: list[Atoms], settings: LearnSettings, get_labeler, say) -> int:
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
        stds[beyond_ceiling(largest, [a.info.get("system", k) for k, a in enumerate(candidates)],
                            [a.info.get("md_step", 0) for a in candidates], settings.max_std, settings.trust_scope)] = np.nan
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
            _write_json(failures, round_dir / "labelling_failures.json")
            continue
        _write_extxyz(done, partial)
    if not done and order:
        raise MolequiError(f"the labeler failed on every candidate of {round_dir}; see the messages above")
    if not order:
        say(f"  no MD frame under the trust ceiling --max-std {settings.max_std} eV/Å: nothing labelled this round")
    _write_extxyz(done, final)
    partial.unlink(missing_ok=True)
    return len(done)


def _read_failed(round_dir: Path) -> list[int]:
    path = round_dir / "labelling_failures.json"
    return [int(k) for k in json.loads(path.read_text())] if path.exists() else []


# --- files --------------------------------------------------------------------------------------


def read_labelled(path: Path) -> list[Atoms]:
    """The frames of a round's ``labelled.extxyz``; a round that labelled nothing (every frame
    over the trust ceiling) leaves an empty file, which ASE refuses to read."""
    from ase.io import read

    return read(path, ":", format="extxyz") if path.stat().st_size else []


def _write_extxyz(structures: Sequence[Atoms], path: Path) -> Path:
    from ase.io import write

    return atomic_write(path, lambda temporary: write(str(temporary), list(structures), format="extxyz"))


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
