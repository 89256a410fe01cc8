"""``molequi calibrate``: fit the size of a committee's (or shallow ensemble's) error bars."""

from __future__ import annotations

import argparse
import json
import sys
import warnings

from molequi.cli.options import add_device_option, add_label_key_options, add_model_option, model_paths

HELP = (
    "Fit a calibration of committee / ensemble-head stds on held-out labelled structures: σ' = a·σ, or a power "
    "law σ' = a·σ^b when it has the lower held-out Gaussian NLL, per output (energy, forces per atom-component, "
    "each property head); write it as JSON for evaluate, md, screen and MolequiCalculator(calibration=)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_option(parser, positional_help="one model trained with --ensemble-heads K; for a committee give "
                                             "every member with --model instead")
    parser.add_argument("data", metavar="DATA",
                        help="held-out labelled structures (not the training set: its errors are too small), any "
                             "format 'molequi evaluate' reads")
    parser.add_argument("--out", metavar="JSON", default="calibration.json", help="where to write the calibration (a .json file)")
    add_device_option(parser)
    parser.add_argument("--batch-size", type=int, default=32, help="structures per batch (memory only)")
    add_label_key_options(parser, stress=False)


def run(args: argparse.Namespace) -> int:
    from molequi.data import LabelKeys, read_structures
    from molequi.cli.paths import JSON_SUFFIXES, guard_outputs
    from molequi.errors import ConfigError
    from molequi.devices import resolve_device
    from molequi.models.uncertainty.calibration import CalibrationWarning, models_identity
    from molequi.models.uncertainty.evaluation import (committee_errors, fit_committee_calibration, load_committee,
                                                       member_count)

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be ≥ 1, got {args.batch_size}")
    paths = model_paths(args, getattr(args, "argv", None))
    guard_outputs({"--model": paths, "DATA": args.data}, files=[("--out", args.out, JSON_SUFFIXES)])
    models = load_committee(paths, device=resolve_device(args.device))
    if member_count(models) < 2:  # said here: the library's message predates the --model syntax
        raise ConfigError("an uncertainty needs two or more members: give every committee member with --model "
                          "(--model a.molequi --model b.molequi) or use a model trained with "
                          "'molequi train --ensemble-heads 4'")
    structures = read_structures(args.data, keys=LabelKeys(args.energy_key, args.forces_key))
    errors = committee_errors(models, structures, args.batch_size, str(args.data))
    provenance = {"models": paths, **models_identity(models), "data": str(args.data), "n_structures": len(structures),
                  "n_members": sum(m.model.config.ensemble_heads for m in models),
                  "std": "unbiased (ddof 1) spread over members; forces per atom, applied to each component"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)  # printed below, once each, with the summary
        calibration = fit_committee_calibration(errors, provenance)
    calibration.save(args.out)
    print(json.dumps(calibration_summary(calibration), indent=2))
    for line in calibration.warnings():
        print(f"warning: {line}", file=sys.stderr)
    print(f"calibration: {args.out}")
    return 0


def calibration_summary(calibration) -> dict[str, dict]:
    """What ``molequi calibrate`` prints per output (energy and forces apart): the fitted form
    σ' = a·σ^b (a in the output's unit^(1−b), b unitless), RMSE ÷ std (unitless, 1 when the stds
    are the right size) before and after calibration, the Spearman ranking of the structures
    (mean |error| vs mean std) with its one-sided p-value, and the fit's warnings; then
    ``domain``, the in-domain threshold of the per-structure force std (eV/Å)."""
    summary = {}
    for name, fit in calibration.fits.items():
        outputs = calibration.info["outputs"][name]
        summary[name] = {"form": fit.form, "a": fit.a, "b": fit.b,
                         "rmse_over_std_before": outputs["before"].get("rmse_over_std"),
                         "rmse_over_std_after": outputs["after"].get("rmse_over_std"),
                         "spearman": outputs.get("spearman"), "spearman_p": outputs.get("spearman_p"),
                         "warnings": outputs.get("warnings", [])}
    if calibration.domain_threshold is not None:
        summary["domain"] = {"threshold_eV_per_A": calibration.domain_threshold,
                             "quantile": calibration.info["domain"].get("quantile"),
                             "statistic": calibration.info["domain"].get("statistic")}
    return summary
