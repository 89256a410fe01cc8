"""``molequi evaluate``: errors of a model on a labelled data set."""

from __future__ import annotations

import argparse
import json
import sys

from molequi.cli.options import add_device_option, add_label_key_options, add_model_option, model_paths

HELP = (
    "Evaluate a model on labelled structures and print its errors as JSON: energy (meV) and force (meV/Å) "
    "MAE/RMSE, and <property>_mae / <property>_rmse in the label's unit for each property head it was trained on. "
    "A committee (--model A --model B) or a model with ensemble heads also gets uncertainty metrics: "
    "forces_std_spearman, forces_rmse_over_std, miscalibration_area (and per output)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_option(parser, positional_help="model file written by 'molequi train' (model.molequi); for a "
                                             "committee give every member with --model instead")
    parser.add_argument("data", metavar="DATA", help="labelled structures: extxyz, ASE .db, rMD17 .npz, or qm9[:SPLIT][?n=N&seed=S]")
    parser.add_argument("--plot", metavar="PNG", default=None,
                        help="also write a parity plot (.png, .pdf or .svg: predicted vs reference, one panel per trained output); "
                             "a committee or ensemble adds a reliability diagram (binned RMSE vs binned std) per output")
    parser.add_argument("--calibration", metavar="JSON", default=None,
                        help="calibrate the committee/ensemble stds with this file from 'molequi calibrate' "
                             "(the metrics then describe the calibrated stds)")
    add_device_option(parser)
    parser.add_argument("--batch-size", type=int, default=32, help="structures per batch (memory only)")
    add_label_key_options(parser)
    parser.add_argument("--out", metavar="JSON", default=None, help="also write the metrics to this .json file")


def energy_undetermined(models, structures) -> list[str]:
    """Formulas of the ``structures`` whose total-energy reference a model's training data did not
    determine (see :mod:`molequi.models.references`), one per such structure."""
    from molequi.models.references import energy_determined, formula_of

    configs = [m.model.config for m in models if m.model.config.e0s_basis is not None and "energy" in
               m.model.config.trained_outputs]
    return [formula_of(atoms.numbers) for atoms in structures
            if any(not energy_determined(c.e0s_basis, c.species, atoms.numbers) for c in configs)]


def run(args: argparse.Namespace) -> int:
    from molequi.data import LabelKeys, read_structures
    from molequi.errors import ConfigError
    from molequi.models.uncertainty import as_calibration
    from molequi.devices import resolve_device
    from molequi.training.evaluate import evaluate_model
    from molequi.utils import write_json
    from molequi.models.uncertainty.evaluation import load_committee, member_count
    from molequi.training.uncertainty import evaluate_committee

    from molequi.cli.paths import JSON_SUFFIXES, PLOT_SUFFIXES, guard_outputs

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be ≥ 1, got {args.batch_size}")
    paths = model_paths(args, getattr(args, "argv", None))
    guard_outputs({"--model": paths, "DATA": args.data, "--calibration": args.calibration},
                  files=[("--out", args.out, JSON_SUFFIXES), ("--plot", args.plot, PLOT_SUFFIXES)])
    device = resolve_device(args.device)
    models = load_committee(paths, device=device)
    calibration = as_calibration(args.calibration, models)
    keys = LabelKeys(args.energy_key, args.forces_key, args.stress_key)
    structures = read_structures(args.data, keys=keys)
    if args.energy_key != "energy" or args.forces_key != "forces":
        from molequi.data import require_labels

        # a key the user named must be there: never silently drop its metrics
        require_labels(structures, args.data, energy=args.energy_key != "energy", forces=args.forces_key != "forces",
                       keys=keys, purpose="evaluation")
    if member_count(models) < 2:
        if calibration is not None:
            raise ConfigError("--calibration needs a committee (--model A --model B) or a model with ensemble heads; "
                              "one plain model has no std to calibrate")
        metrics = evaluate_model(models[0], structures, batch_size=args.batch_size, device=device, plot=args.plot,
                                 source=str(args.data))
    else:
        metrics = evaluate_committee(models, structures, args.batch_size, calibration, args.plot, str(args.data))
    undetermined = energy_undetermined(models, structures)
    if undetermined:
        metrics["energy_reference_undetermined"] = len(undetermined)
        print(f"note: {len(undetermined)} of {len(structures)} structures ({', '.join(sorted(set(undetermined))[:5])}) "
              "have a composition whose per-element reference energies the model's training data did not determine: "
              "their energy errors measure an arbitrary reference, not the model", file=sys.stderr)
    metrics = {"model": paths[0] if len(paths) == 1 else paths, "data": str(args.data), **metrics}
    if args.out:
        write_json(metrics, args.out)
    print(json.dumps(metrics, indent=2))
    return 0
