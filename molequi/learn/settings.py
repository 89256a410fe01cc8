"""The settings of an active-learning run, and the names its flags choose from."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from molequi.errors import ConfigError

FORMAT = "molequi-learn"
RESUMABLE_SETTINGS = ("rounds",)
"""Loop settings that may change when a run continues (more rounds extend the loop)."""
IGNORED_TRAINING_KEYS = ("device", "num_workers", "progress", "eval_batch_size")
"""Training settings that do not change results, so they may differ on a rerun."""
ROUND_COLUMNS = [
    "round", "n_labels", "n_new", "md_frames", "md_stopped", "md_out_of_domain", "max_std", "mean_std",
    "test_energy_mae_meV", "test_energy_bias_meV", "test_forces_mae_meV_per_A", "test_forces_rmse_meV_per_A",
    "energy_spearman", "energy_calibration_fallback", "forces_spearman", "forces_calibration_fallback",
    "domain_threshold",
]
SELECTIONS = ("uncertain", "clustered", "random")
TRUST_SCOPES = ("frame", "trajectory")
MD_STARTS = ("start", "labelled", "rotamers")
RANK_KEYS = {"max": "std_max", "mean": "std_mean"}  # each ranking of frames, and the frame info it reads
RANKINGS = tuple(RANK_KEYS)


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


DEFAULT_MAX_STD = 0.6
"""The default trust ceiling, eV/Å: the largest per-atom force spread of a frame still labelled."""


@dataclass
class LearnSettings:
    """Settings of an active-learning run.

    Attributes:
        rounds: acquisition rounds; rounds 0 … ``rounds`` are trained, so ``rounds`` × ``per_round``
            frames are labelled in all.
        per_round: frames labelled per round.
        temperatures: MD temperatures, K (each start structure runs at each of them).
        md_steps: MD steps per round (Langevin, ``dt`` fs).
        committee: independently initialised models (the spread needs two members in all).
        ensemble_heads: K ≥ 2: each model is a shallow ensemble of K readout heads on one body
            (``--committee 1 --ensemble-heads 4``: one model, four members); 0: plain models, or
            with ``init`` the model's own heads (``--init organic-xtb --committee 1``: its four).
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
            ceiling, as in DP-GEN); None: no ceiling. The default (:data:`DEFAULT_MAX_STD`, with
            ``trust_scope="trajectory"``) is what ``scripts/bench_learning.py`` measured better
            than no ceiling on a shifted test. A round whose every frame is beyond it labels
            without it (and says so) rather than not at all.
        trust_scope: what a frame over ``max_std`` rules out: ``"frame"`` (that frame only) or
            ``"trajectory"`` (that frame and every later one of its MD system: a trajectory driven
            by forces the committee disagrees on has left the region its labels describe, and its
            later frames are no more physical when the spread dips again; see
            :func:`beyond_ceiling`).
        md_from: where each round's MD starts: ``"start"`` (the start structures, every round) or
            ``"labelled"`` (from round 1 on, the frames the previous round labelled, one system per
            frame and temperature: the exploration moves on to where the last picks lay, instead of
            covering the same ``md_steps`` around the start every round; round 0, and a round whose
            predecessor labelled nothing, start from the start structures), or ``"rotamers"``
            (every round, each of the ``replicas`` systems of a start structure starts from a
            random rotamer of it, :func:`molequi.md.torsions.random_rotamer`: short MD does not
            cross torsion barriers, and conformers the labels never visit keep an energy offset
            that the reference refit cannot remove).
        dt: MD time step, fs.
        friction: Langevin friction, 1/fs.
        seed: base seed of the perturbations, the members and the MD.
        init: a model file or a shipped model's name (``"organic-xtb"``): every member of
            round 0 fine-tunes it (training's ``init``: its architecture and elements, its
            reference energies refitted), later rounds fine-tune the previous round's members,
            so a handful of labels adapts it to a new molecule. None: round 0 starts from
            random weights.
        anchor: with ``init``, every round's members are pulled towards the weights of ``init``
            itself (training's ``anchor``, weight ``anchor`` / labels; 0: not at all). It keeps
            the initial model's energies where the labels do not reach, and its errors with them:
            measured (``scripts/bench_anchor.py``) it halved aspirin's test energy error when the
            labels stayed in the start conformer, and raised it when they covered the test's
            (ethanol; aspirin's rotamer loop), so it is off unless asked for.
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
    max_std: float | None = DEFAULT_MAX_STD
    trust_scope: str = "trajectory"
    md_from: str = "start"
    dt: float = 0.5
    friction: float = 0.01
    seed: int = 0
    init: str | None = None
    anchor: float = 0.0

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
            # with --init the model's own heads count too: checked when the loop reads it
            (self.init is not None or self.committee * max(1, self.ensemble_heads) >= 2,
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
            (self.dt > 0, f"--dt must be > 0 fs, got {self.dt}"),
            (self.friction >= 0, f"--friction must be ≥ 0 1/fs, got {self.friction}"),
            (self.anchor >= 0, f"--anchor must be ≥ 0, got {self.anchor}"),
            (isinstance(self.labeler_kwargs, dict), "--labeler-kwargs must be a JSON object"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        parse_labeler(self.labeler)
