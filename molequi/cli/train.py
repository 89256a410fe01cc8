"""``molequi train``: fit a potential to energies and forces."""

from __future__ import annotations

import argparse
import json

from molequi.cli.choices import DEFAULT_MAX_EPOCHS, DTYPES, HEAD_KINDS, TRAINING_DEFAULTS
from molequi.cli.options import LABEL_KEY_HELP
from molequi.errors import ConfigError

HELP = (
    "Train an equivariant potential on structures labelled with energies (eV) and forces (eV/Å), "
    "or a property model (--target gap, --target U0, --target dipole_norm ...) on QM9-style data."
)

def int_or_none(text: str) -> int | None:
    """An argparse type: a whole number, or ``none`` (the setting's null)."""
    if text.strip().lower() in ("none", "null"):
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number or 'none', got {text!r}") from None


# flag -> (config key, type, help); defaults come from the YAML file or TrainingConfig.
OVERRIDES = {
    "--max-epochs": ("max_epochs", int, "stop after N passes over the training set"),
    "--max-minutes": ("max_minutes", float, "wall-clock budget in minutes; when it runs out the epoch is cut short, "
                      "validated and every output written"),
    "--device": ("device", str, "auto (CUDA if available), cpu, cuda or cuda:N"),
    "--dtype": ("dtype", str, f"{' or '.join(DTYPES)} for weights and arithmetic"),
    "--seed": ("seed", int, "seed of the train/validation split, the initial weights and the shuffling"),
    "--batch-size": ("batch_size", int, "structures per optimizer step (per process under torchrun)"),
    "--lr": ("learning_rate", float, "initial learning rate"),
    "--validation": ("validation", float, "held-out structures: a count (e.g. 50) or a fraction in (0, 1)"),
    "--energy-weight": ("energy_weight", float, "loss weight of the per-atom energy MSE, (eV/atom)²"),
    "--forces-weight": ("forces_weight", float, "loss weight of the force-component MSE, (eV/Å)²"),
    "--num-workers": ("num_workers", int, "DataLoader worker processes (0 = none)"),
    "--energy-key": ("energy_key", str, LABEL_KEY_HELP["energy"]),
    "--forces-key": ("forces_key", str, LABEL_KEY_HELP["forces"]),
    "--stress-key": ("stress_key", str, LABEL_KEY_HELP["stress"]),
    "--e0s": ("e0s", str, "per-element reference energies: fit (least squares on the training energies), average "
              "(MACE's name for the same fit) or FILE.json {symbol or Z: eV}"),
    "--init": ("init", str, "fine-tune: start from this model file or pretrained model (organic-xtb): its "
               "architecture and normalisation are kept, its per-element reference energies refitted by least "
               "squares on --data, and --lr defaults to 0.003; architecture flags that differ are refused"),
    "--anchor": ("anchor", float, "with --init: pull the weights towards the initial model's, a penalty W / N · "
                 "Σ(θ − θ₀)² in the loss (N training structures): keeps what the model knew and the new labels do "
                 "not show, and its errors there"),
    "--replay": ("replay", float, "with --init: mix this fraction (of the training set's size) of --replay-data "
                 "structures into training, energies moved by the refitted reference shift, against forgetting"),
    "--replay-data": ("replay_data", str, "with --replay: the pretraining data (extxyz with energies and forces), "
                      "e.g. data/organic_xtb/train.extxyz from datasets/organic_xtb.py"),
    "--channels": ("model.channels", int, "feature channels per irrep"),
    "--l-max": ("model.l_max", int, "highest rotation order of the features passed between layers (0-3)"),
    "--edge-l-max": ("model.edge_l_max", int_or_none, "highest rotation order of the edge harmonics and messages "
                     "(0-3, raised to l-max when below it; none = l-max, the layout of models from before this "
                     "setting); the body-order product contracts them to the l-max features"),
    "--num-layers": ("model.num_layers", int, "message-passing layers"),
    "--correlation": ("model.correlation", int, "body order of the node-feature product (1-4)"),
    "--cutoff": ("model.cutoff", float, "neighbor cutoff radius, Å"),
    "--baseline": ("model.baseline", str, "Δ-learning: learn the labels minus this physical model, added back wherever "
                   "the model runs: 'xtb' = GFN2-xTB through tblite (molecules; labels cached in DIR/baseline_cache)"),
    "--ensemble-heads": ("model.ensemble_heads", int, "K ≥ 2: a shallow ensemble — K readout heads on one shared body, "
                         "trained on the mean over heads of the loss; one model file then gives mean ± std (the "
                         "spread of the heads) to predict, evaluate, md, screen and the calculator"),
}

METAVARS = {"--init": "MODEL", "--anchor": "W", "--replay": "FRACTION", "--replay-data": "FILE", "--baseline": "xtb", "--ensemble-heads": "K", "--energy-key": "KEY", "--forces-key": "KEY", "--stress-key": "KEY", "--e0s": "fit|average|FILE.json", "--l-max": "L", "--edge-l-max": "L", "--lr": "LR", "--validation": "N_OR_FRACTION", "--max-epochs": "N", "--max-minutes": "MINUTES"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # defaults whose value alone would mislead (None standing for the rule of TrainingConfig.epoch_limit)
    shown = {"--max-epochs": f"{DEFAULT_MAX_EPOCHS}, or no limit when --max-minutes is given"}
    parser.add_argument("--data", nargs="+", metavar="TRAIN", default=argparse.SUPPRESS,
                        help="training file(s): extxyz, ASE .db or rMD17 .npz with energies (eV) and forces (eV/Å); "
                        "the validation split is taken from them (required unless --resume)")
    parser.add_argument("--test-data", nargs="+", metavar="TEST", default=None,
                        help="test file(s), evaluated with the final model; writes DIR/test_metrics.json")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output directory: model.molequi, log.csv, learning_curve.png, config.yaml, checkpoints/")
    parser.add_argument("--config", metavar="YAML", default=None,
                        help="training config (see molequi/training/default.yaml for every key); flags override it")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from checkpoints/last.pt with its saved settings "
                        "(only --max-epochs, --max-minutes, --device, --num-workers may change)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh in a DIR that holds an earlier run, deleting that run's outputs "
                        "(without it, a non-empty DIR is refused)")
    parser.add_argument("--target", action="append", default=[], metavar="NAME[:KIND]",
                        help="train this label instead of energies+forces (repeatable): 'energy' or 'U0' = the energy "
                        "label without forces; any other NAME = a property head on atoms.info[NAME] of a KIND from "
                        "molequi.models.heads: " + "; ".join(f"{kind}: {text}" for kind, text in HEAD_KINDS.items()) +
                        " (default: dipole for dipole*, else intensive). Sets --forces-weight 0 and, without an energy target, --energy-weight 0 unless given. "
                        "QM9 example: --data 'qm9:train?n=20000' --target gap")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (one line per epoch only)")
    parser.add_argument("--compile", action="store_true",
                        help="train through torch.compile: the first step compiles (about a minute on a CPU), later "
                        "steps are faster (scripts/bench_train.py); eager, with one warning, where compilation fails")
    parser.add_argument("--allow-outliers", action="store_true",
                        help="train on structures whose energy per atom (after the per-element reference energies) or "
                        "largest force lies more than 20 MADs from the median; without it they are refused, named, "
                        "with the likely unit mix-up (kcal/mol or Hartree among eV)")
    parser.add_argument("--stream", action="store_true",
                        help="read the training structures from disk as batches need them (one .xyz/.extxyz file, "
                        "any size: memory does not grow with it); the normalisation is fitted on a sample of 5,000; "
                        "no outlier check, --baseline or --replay")
    parser.add_argument("--freeze", action="store_true",
                        help="with --init: train only the readout heads; the body keeps the initial model's weights")
    parser.add_argument("--charge-input", action="store_true",
                        help="give the network each structure's total charge (atoms.info['charge'], e; 0 when absent), "
                        "so one set of atoms in two charge states gets two energies")
    for flag, (key, kind, text) in OVERRIDES.items():
        default = TRAINING_DEFAULTS[key]
        parser.add_argument(flag, type=kind, default=argparse.SUPPRESS, metavar=METAVARS.get(flag, flag.strip("-").split("-")[-1].upper()),
                            help=f"{text} (default: {shown.get(flag, 'none' if default is None else default)}, "
                            "or the --config value)")


def overrides_from(args: argparse.Namespace) -> dict:
    overrides = {}
    for flag, (key, _, _) in OVERRIDES.items():
        name = flag.removeprefix("--").replace("-", "_")
        if hasattr(args, name):
            value = getattr(args, name)
            if key == "validation" and float(value).is_integer() and value >= 1:
                value = int(value)
            overrides[key] = value
    if args.no_progress:
        overrides["progress"] = False
    if getattr(args, "allow_outliers", False):
        overrides["allow_outliers"] = True
    if getattr(args, "charge_input", False):
        overrides["model.charge_input"] = True
    if getattr(args, "freeze", False):
        overrides["freeze"] = True
    if getattr(args, "stream", False):
        overrides["stream"] = True
    if getattr(args, "compile", False):
        overrides["compile"] = True
    return overrides


def run(args: argparse.Namespace) -> int:
    from molequi.training import load_config, resume_settings, train

    overrides = overrides_from(args)
    if args.resume:
        if args.config is not None:
            raise ConfigError("--resume continues with the run's saved settings; do not pass --config")
        if args.target:
            raise ConfigError("--resume continues with the run's saved targets; do not pass --target")
        config, data = resume_settings(args.out, overrides)
        data = getattr(args, "data", data)
    else:
        if not hasattr(args, "data"):
            raise ConfigError("--data is required (the training file(s))")
        if overrides.get("init") is not None:
            from molequi.training.finetune import fine_tune_overrides

            overrides = fine_tune_overrides(overrides, args.config)
        config = load_config(args.config, overrides, targets=args.target)
        data = args.data
    from molequi.cli.paths import guard_outputs
    from molequi.training.trainer import TRAIN_OUTPUTS

    guard_outputs({"--data": data, "--test-data": args.test_data, "--config": args.config},
                  folders=[("--out", args.out, TRAIN_OUTPUTS)])
    result = train(config, data, args.out, test_data=args.test_data, resume=args.resume, overwrite=args.overwrite)
    if result.test_metrics is not None:
        print(json.dumps(result.test_metrics, indent=2))
    return 0
