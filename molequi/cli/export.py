"""``molequi export``: a trained model as a file other codes load without molequi."""

from __future__ import annotations

import argparse

from molequi.cli.choices import EXPORT_FORMATS

HELP = (
    "Export a trained model as TorchScript: a file plain PyTorch loads (torch.jit.load, no molequi) "
    "and calls as module(positions [N,3] Å, atomic_numbers [N] int64) -> {'energy': eV, 'forces': eV/Å} "
    "for one open molecule."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="model file written by 'molequi train' (model.molequi)")
    parser.add_argument("--format", choices=EXPORT_FORMATS, default="torchscript",
                        help="output format (TorchScript: LAMMPS/OpenMM-Torch-style consumers via a small wrapper)")
    parser.add_argument("--out", required=True, metavar="FILE", help="where to write the exported model (a .pt file, e.g. model.pt)")
    parser.add_argument("--device", default="auto",
                        help="auto (CUDA if available), cpu, cuda or cuda:N: the device the file is traced on "
                        "and runs on")


def run(args: argparse.Namespace) -> int:
    from molequi.models import load_model
    from molequi.models.export import export_model
    from molequi.devices import resolve_device
    from molequi.cli.paths import EXPORT_SUFFIXES, guard_outputs

    guard_outputs({"MODEL": args.model}, files=[("--out", args.out, EXPORT_SUFFIXES)])
    device = resolve_device(args.device)
    model = load_model(args.model, device=device)
    path = export_model(model, args.out, args.format)
    print(f"wrote {path} ({args.format}; call module(positions [N,3] Å, atomic_numbers [N] int64))")
    return 0
