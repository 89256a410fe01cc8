"""``molequi calibrate``: fit the size of a committee's (or shallow ensemble's) error bars."""

from __future__ import annotations

import argparse
import json

from molequi.cli.options import add_device_option, add_label_key_options

HELP = (
    "Fit a calibration of committee / ensemble-head stds on held-out labelled structures: σ' = a·σ, or a power "
    "law σ' = a·σ^b when it has the lower held-out Gaussian NLL, per output (energy, forces per atom-component, "
    "each property head); write it as JSON for evaluate, md, screen and MolequiCalculator(calibration=)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL[,MODEL...]",
                        help="a committee (comma-separated model files) or one model trained with --ensemble-heads K")
    parser.add_argument("data", metavar="DATA",
                        help="held-out labelled structures (not the training set: its errors are too small), any "
                             "format 'molequi evaluate' reads")
    parser.add_argument("--out", metavar="JSON", default="calibration.json", help="where to write the calibration")
    add_device_option(parser)
    parser.add_argument("--batch-size", type=int, default=32, help="structures per batch (memory only)")
    add_label_key_options(parser, stress=False)


def run(args: argparse.Namespace) -> int:
    from molequi.data import LabelKeys, read_structures
    from molequi.errors import ConfigError
    from molequi.devices import resolve_device
    from molequi.models.uncertainty.evaluation import committee_errors, fit_committee_calibration, load_committee

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be ≥ 1, got {args.batch_size}")
    models = load_committee(args.model, device=resolve_device(args.device))
    structures = read_structures(args.data, keys=LabelKeys(args.energy_key, args.forces_key))
    errors = committee_errors(models, structures, args.batch_size, str(args.data))
    provenance = {"models": args.model.split(","), "data": str(args.data), "n_structures": len(structures),
                  "n_members": sum(m.model.config.ensemble_heads for m in models),
                  "std": "unbiased (ddof 1) spread over members; forces per atom, applied to each component"}
    calibration = fit_committee_calibration(errors, provenance)
    calibration.save(args.out)
    summary = {name: {"form": fit.form, "a": fit.a, "b": fit.b,
                      "rmse_over_std": [calibration.info["outputs"][name]["before"].get("rmse_over_std"),
                                        calibration.info["outputs"][name]["after"].get("rmse_over_std")]}
               for name, fit in calibration.fits.items()}
    print(json.dumps(summary, indent=2))
    print(f"calibration: {args.out}")
    return 0
