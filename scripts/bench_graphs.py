#!/usr/bin/env python
"""Graph building and inference throughput on QM9 molecules (what scoring and data loading cost).

Side by side in one process, per molecule: the close-contact search at 0.1 Å that validation
used to run (vesin cells as wide as the cutoff), ``atoms_to_graph`` as it is now (validation +
neighbor list + tensors), the device-built inference batch (``open_structures_batch``), and
``molequi.predict`` without forces (inference mode), with a trained model (``--model``) or a
random one of the default size.

    python scripts/bench_graphs.py --n 2000                         # CPU
    python scripts/bench_graphs.py --n 20000 --device cuda --model runs/quickstart/gap_model/model.molequi

Writes ``bench_graphs.json`` and ``bench_graphs.md`` (machine and command) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from molequi.utils import machine_info


def per_molecule(function: Callable[[], object], n: int, device: str, repeats: int = 3) -> float:
    """Median over ``repeats`` runs of ``function`` (which handles ``n`` molecules), s per molecule."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="QM9 test molecules")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default=None, help="a model file (default: random weights, default size)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_graphs"))
    args = parser.parse_args()

    from molequi.data.graph import atoms_to_graph, open_structures_batch
    from molequi.data.neighbors import neighbor_list
    from molequi.data.qm9 import load_qm9
    from molequi.models import ModelConfig, build_model, load_model, predict

    molecules = load_qm9("test", n=args.n)
    if args.model:
        model = load_model(args.model, device=args.device)
        label = Path(args.model).name
    else:
        model = build_model(ModelConfig(species=[1, 6, 7, 8, 9]), torch.float32).to(args.device).eval()
        label = "random weights, default ModelConfig, float32"
    cutoff = model.model.config.cutoff
    chunks = [molecules[i : i + args.batch_size] for i in range(0, len(molecules), args.batch_size)]
    predict(model, molecules[: args.batch_size], args.batch_size, compute_forces=False)  # warm-up

    rows = {
        "close-contact search at 0.1 Å (the old validation)": per_molecule(
            lambda: [neighbor_list(a.positions, 0.1) for a in molecules], len(molecules), "cpu", repeats=1),
        "atoms_to_graph (validation + neighbor list + tensors)": per_molecule(
            lambda: [atoms_to_graph(a, cutoff, with_labels=False) for a in molecules], len(molecules), "cpu"),
        f"open_structures_batch on {args.device} (batches of {args.batch_size})": per_molecule(
            lambda: [open_structures_batch(c, cutoff, args.device) for c in chunks], len(molecules), args.device),
        f"predict without forces on {args.device} ({label})": per_molecule(
            lambda: predict(model, molecules, args.batch_size, compute_forces=False), len(molecules), args.device),
    }
    report = {"machine": machine_info(args.device), "n": len(molecules), "device": args.device,
              "model": label, "torch_threads": torch.get_num_threads(),
              "command": "python " + shlex.join(sys.argv),
              "seconds_per_molecule": rows}
    lines = [f"Machine: {report['machine']['cpu']}, {report['machine']['cpu_count']} CPUs, "
             f"GPU: {report['machine']['gpu'] or 'none'}; torch {report['machine']['torch']} "
             f"({report['torch_threads']} threads); {len(molecules)} QM9 test molecules.",
             f"Command: `{report['command']}`", "",
             "| step | ms per molecule | molecules/s |", "|---|---:|---:|"]
    lines += [f"| {name} | {1e3 * s:.3f} | {1 / s:,.0f} |" for name, s in rows.items()]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_graphs.json").write_text(json.dumps(report, indent=2))
    (args.out / "bench_graphs.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
