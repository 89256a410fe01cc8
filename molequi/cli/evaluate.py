"""``molequi evaluate``: errors of a model on a labelled data set."""

from __future__ import annotations

import argparse
import json

HELP = (
    "Evaluate a model on labelled structures and print its errors as JSON: energy (meV) and force (meV/Å) "
    "MAE/RMSE, and <property>_mae / <property>_rmse in the label's unit for each property head it was trained on."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="model file written by 'molequi train' (model.molequi)")
    parser.add_argument("data", metavar="DATA", help="labelled structures: extxyz, ASE .db, rMD17 .npz, or qm9[:SPLIT][?n=N&seed=S]")
    parser.add_argument("--plot", metavar="PNG", default=None,
                        help="also write a parity plot (predicted vs reference, one panel per trained output)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=32, help="structures per batch (memory only)")
    parser.add_argument("--energy-key", metavar="KEY", default="energy",
                        help="key of the energy label, eV (calculator results or atoms.info; MACE-style files: REF_energy)")
    parser.add_argument("--forces-key", metavar="KEY", default="forces",
                        help="key of the forces label, eV/Å (calculator results or atoms.arrays; MACE-style: REF_forces)")
    parser.add_argument("--stress-key", metavar="KEY", default="stress", help="key of the stress label, eV/Å³ (read, not evaluated)")
    parser.add_argument("--out", metavar="JSON", default=None, help="also write the metrics to this JSON file")


def run(args: argparse.Namespace) -> int:
    from molequi.data import LabelKeys, read_structures
    from molequi.errors import ConfigError
    from molequi.models import load_model
    from molequi.training.evaluate import evaluate_model, resolve_device
    from molequi.training.trainer import write_json

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be ≥ 1, got {args.batch_size}")
    device = resolve_device(args.device)
    model = load_model(args.model, device=device)
    structures = read_structures(args.data, keys=LabelKeys(args.energy_key, args.forces_key, args.stress_key))
    metrics = evaluate_model(model, structures, batch_size=args.batch_size, device=device, plot=args.plot,
                             source=str(args.data))
    metrics = {"model": str(args.model), "data": str(args.data), **metrics}
    if args.out:
        write_json(metrics, args.out)
    print(json.dumps(metrics, indent=2))
    return 0
