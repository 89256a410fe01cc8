"""``molequi learn``: active learning with a committee, MD exploration and an ASE labeler."""

from __future__ import annotations

import argparse
import json
import shlex

from molequi.cli.options import add_renamed_option
from molequi.errors import ConfigError

HELP = (
    "Active learning: train a committee on a few labelled structures, explore with committee MD, label the most "
    "uncertain and mutually different frames (GFN2-xTB by default, or any ASE calculator), retrain, repeat. "
    "Rerun the same command to continue a killed run."
)

# flag -> (training config key, type, help), as in 'molequi train'
TRAINING_FLAGS = {
    "--max-epochs": ("max_epochs", int, "epochs per member and round"),
    "--max-minutes": ("max_minutes", float, "wall-clock budget per member and round, minutes"),
    "--device": ("device", str, "auto (CUDA if available), cpu, cuda or cuda:N (training, MD and test)"),
    "--lr": ("learning_rate", float, "initial learning rate"),
    "--batch-size": ("batch_size", int, "structures per optimizer step"),
    "--channels": ("model.channels", int, "feature channels per irrep"),
    "--l-max": ("model.l_max", int, "highest rotation order of the features"),
    "--num-layers": ("model.num_layers", int, "message-passing layers"),
    "--cutoff": ("model.cutoff", float, "neighbor cutoff radius, Å"),
}
LEARN_OUTPUTS = ("round_*", "rounds.csv", "rounds.png", "learn.json", "start.extxyz")
"""What a learning run writes in its output folder."""

METAVARS = {"--l-max": "L", "--lr": "LR", "--max-epochs": "N", "--max-minutes": "MINUTES", "--num-layers": "N",
            "--batch-size": "N", "--cutoff": "Å"}


def _floats(text: str) -> list[float]:
    try:
        return [float(value) for value in text.split(",") if value.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers (K), got '{text}'") from None


def ceiling(text: str) -> float | str:
    """``--max-std``: a positive number of eV/Å, or ``none`` (no trust ceiling)."""
    if text.strip().lower() == "none":
        return "none"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a force spread in eV/Å or 'none', got '{text}'") from None


def ceiling_settings(value: float | str | None) -> dict:
    """The :class:`~molequi.learn.LearnSettings` keyword of ``--max-std``: none when not given
    (the settings' default ceiling), ``max_std=None`` for ``none``."""
    if value is None:
        return {}
    return {"max_std": None if value == "none" else value}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--start", nargs="+", required=True, metavar="STRUCTURES",
                        help="start structures: files (extxyz, xyz, ASE .db …) or ASE G2 names (CH3CH2OH); labelled "
                        "ones (energy + forces) are used as they are, unlabelled ones are labelled with --perturbed "
                        "noisy copies each")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output directory: rounds.csv, rounds.png, round_NNN/ (training set, committee, MD "
                        "candidates, new labels); rerun the same command to continue")
    parser.add_argument("--labeler", default="xtb", metavar="xtb|module:Class",
                        help="reference method: 'xtb' (GFN2-xTB through tblite) or any ASE calculator class, e.g. "
                        "'pyscf_module:Calc'")
    parser.add_argument("--labeler-kwargs", default="{}", metavar="JSON",
                        help="keyword arguments of the labeler's class (or of tblite's TBLite), as a JSON object")
    parser.add_argument("--rounds", type=int, default=3, metavar="N",
                        help="acquisition rounds (rounds 0 … N are trained; may grow when a run is continued)")
    parser.add_argument("--per-round", type=int, default=10, metavar="K", help="frames labelled per round")
    parser.add_argument("--temperature", type=_floats, default=[300.0], metavar="T[,T…]",
                        help="MD temperature(s), K (every start structure runs at each)")
    parser.add_argument("--md-steps", type=int, default=500, metavar="S", help="Langevin MD steps per round")
    parser.add_argument("--dt", type=float, default=0.5, metavar="FS", help="MD time step, fs")
    add_renamed_option(parser, "--timestep", "--dt", "--dt 0.5")
    parser.add_argument("--friction", type=float, default=0.01, metavar="1/FS", help="Langevin friction, 1/fs")
    parser.add_argument("--replicas", type=int, default=2, metavar="R",
                        help="MD systems per start structure and temperature (different seeds)")
    parser.add_argument("--sample-every", type=int, default=10, metavar="N", help="MD steps between candidate frames")
    parser.add_argument("--pool-factor", type=int, default=4, metavar="F",
                        help="pick diverse frames (farthest-point on sorted interatomic distances) among the F × K "
                        "most uncertain (1: just the K most uncertain)")
    parser.add_argument("--rank-by", choices=("max", "mean"), default="max",
                        help="the force spread that ranks the frames: 'max' (largest per-atom spread) or 'mean' (mean "
                        "over atoms: frames wrong as a whole rather than in one atom); --max-std reads the largest")
    parser.add_argument("--selection", choices=("uncertain", "clustered", "random"), default="uncertain",
                        help="'uncertain': the above; 'clustered': split the MD frames into K clusters of similar "
                        "geometry and label the most uncertain frame of each; 'random': draw the frames uniformly "
                        "from the same MD instead (a baseline)")
    parser.add_argument("--max-std", type=ceiling, default=None, metavar="EV_PER_A",
                        help="trust ceiling: frames whose largest per-atom force spread exceeds this (eV/Å) are not "
                        "labelled (the committee has left physical geometries); default 0.6; 'none': no ceiling")
    parser.add_argument("--trust-scope", choices=("frame", "trajectory"), default="trajectory",
                        help="what a frame over --max-std rules out: 'frame' (that frame) or 'trajectory' (that frame "
                        "and the later frames of its MD trajectory, which has left the trusted region)")
    parser.add_argument("--md-from", choices=("start", "labelled", "rotamers"), default="start",
                        help="where each round's MD starts: 'start' (the start structures, every round), 'labelled' "
                        "(the frames the previous round labelled, one system per frame and temperature: the "
                        "exploration moves on from where the last picks lay) or 'rotamers' (each replica from a "
                        "random rotamer of its start structure, every rotatable bond turned: reaches the "
                        "conformers short MD does not)")
    parser.add_argument("--committee", type=int, default=4, metavar="M", help="committee members (models) per round")
    parser.add_argument("--ensemble-heads", type=int, default=0, metavar="K",
                        help="shallow-ensemble heads per model instead of a committee (0: committee)")
    parser.add_argument("--perturbed", type=int, default=4, metavar="N",
                        help="noisy copies labelled beside each unlabelled start structure")
    parser.add_argument("--perturb-sigma", type=float, default=0.05, metavar="Å", help="noise of those copies, Å")
    parser.add_argument("--test-data", nargs="+", metavar="TEST", default=None,
                        help="labelled test file(s): each round's committee is evaluated on them (rounds.csv)")
    parser.add_argument("--config", metavar="YAML", default=None,
                        help="training config of every member (molequi/training/default.yaml lists the keys); "
                        "the flags below override it")
    parser.add_argument("--seed", type=int, default=0, help="base seed (members, perturbations, MD)")
    parser.add_argument("--init", metavar="MODEL", default=None,
                        help="fine-tune this model (a .molequi file or a shipped model's name, e.g. organic-xtb) "
                        "instead of training from random weights: its architecture and elements are kept, so a "
                        "handful of labels adapts it to a new molecule; the learning rate defaults to the fine-tuning "
                        "one of molequi train --init")
    parser.add_argument("--anchor", type=float, default=0.0, metavar="W",
                        help="with --init: pull every round's members towards the --init model's weights (a penalty "
                        "W / labels · Σ(θ − θ₀)² in the loss): they keep its energies where the labels do not reach, "
                        "e.g. conformers the loop's MD never visits, and its errors there (default 0: no pull; "
                        "docs/benchmarks.md measures 200)")
    for flag, (_, kind, text) in TRAINING_FLAGS.items():
        parser.add_argument(flag, type=kind, default=argparse.SUPPRESS, metavar=METAVARS.get(flag, flag.strip("-").split("-")[-1].upper()),
                            help=f"{text} (default: the training default or --config)")


def run(args: argparse.Namespace) -> int:
    from molequi.training import load_config
    from molequi.learn import LearnSettings, run_learning
    from molequi.cli.paths import guard_outputs

    guard_outputs({"--start": args.start, "--config": args.config, "--test-data": args.test_data,
                   "--init": [args.init] if args.init else None},
                  folders=[("--out", args.out, LEARN_OUTPUTS)])

    try:
        labeler_kwargs = json.loads(args.labeler_kwargs)
    except json.JSONDecodeError as error:
        raise ConfigError(f"--labeler-kwargs is not valid JSON ({error})") from None
    if not isinstance(labeler_kwargs, dict):
        raise ConfigError(f"--labeler-kwargs must be a JSON object, got {args.labeler_kwargs}")
    overrides = {"validation": 0.1, "seed": args.seed}
    for flag, (key, _, _) in TRAINING_FLAGS.items():
        name = flag.removeprefix("--").replace("-", "_")
        if hasattr(args, name):
            overrides[key] = getattr(args, name)
    if args.init:  # as `molequi train --init`: the initial model's architecture, the fine-tuning learning rate
        from molequi.training.finetune import fine_tune_overrides

        overrides = fine_tune_overrides({**overrides, "init": args.init}, args.config)
        del overrides["init"]  # each member's init is set by the loop (the model, then the last round's)
    config = load_config(args.config, overrides)
    settings = LearnSettings(
        rounds=args.rounds, per_round=args.per_round, temperatures=args.temperature, md_steps=args.md_steps,
        committee=args.committee, ensemble_heads=args.ensemble_heads, labeler=args.labeler,
        labeler_kwargs=labeler_kwargs, perturbed=args.perturbed, perturb_sigma=args.perturb_sigma,
        replicas=args.replicas, sample_every=args.sample_every, pool_factor=args.pool_factor, selection=args.selection, **ceiling_settings(args.max_std),
        trust_scope=args.trust_scope, md_from=args.md_from, rank_by=args.rank_by,
        dt=args.dt, friction=args.friction, seed=args.seed, init=args.init, anchor=args.anchor,
    )
    result = run_learning(settings, args.start, args.out, config=config, test_data=args.test_data)
    if result.models:
        print("the last committee, for molequi md / evaluate / calibrate / screen: "
              + " ".join(f"--model {shlex.quote(str(path))}" for path in result.models))
    return 0
