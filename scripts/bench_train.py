"""Training throughput, eager against ``torch.compile``: structures per second of the training step.

The step is the trainer's (:func:`molequi.training.trainer.take_step` without the EMA): energy
and forces, the weighted loss, its backward (through the force pass), clipping and Adam. On
rMD17 aspirin with random initial weights, for each architecture, batch size and mode, after
warm-up steps (the first compiled step compiles; its seconds are reported apart). The modes take turns over
the same batches, a few steps each, so a shared machine's load weighs on both alike.

Times are CPU seconds of this process (``time.process_time``) with ``--threads`` torch threads
(1 by default): on a shared machine the load slows the wall clock, not the work done. On a GPU
the wall time is used (synchronised).

    OMP_NUM_THREADS=1 python scripts/bench_train.py --readme          # CPU, writes the docs block
    python scripts/bench_train.py --device cuda --batch-sizes 16 64 256 --threads 0   # GPU

Larger batches amortise the fixed cost of a step; the learning rate that suits them grows too
(the square-root rule, ``lr × sqrt(batch / 16)`` from the default 3e-2 at 16, is a safe start).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MOLEQUI_RMD17", ROOT.parent / "shared" / "data" / "rmd17"))
ARCHITECTURES = {
    "64x0e": {"channels": 64, "l_max": 0, "correlation": 3, "radial_hidden": [64, 64], "edge_l_max": None},
    "default": {},  # `molequi train` without --config
}


def batches(architecture: str, batch_size: int, count: int, device: str):
    """``count`` training batches of rMD17 aspirin and the data's model configuration."""
    from torch_geometric.loader import DataLoader

    from molequi.training.config import TrainingConfig
    from molequi.training.data import prepare_data

    config = TrainingConfig(model=dict(ARCHITECTURES[architecture]))
    prepared = prepare_data([str(DATA / "rmd17_aspirin_train_01.npz")], config.model, config.validation, config.seed)
    generator = torch.Generator().manual_seed(0)
    loader = DataLoader(prepared.train, batch_size=batch_size, shuffle=True, drop_last=True, generator=generator)
    taken = [batch.to(device) for _, batch in zip(range(count), loader)]
    return taken, prepared.model_config, config


def stepper(model_config, config, mode: str, device: str):
    """The trainer's step for a fresh model (same initial weights in every mode)."""
    from molequi.models.io import build_model
    from molequi.training.metrics import loss_terms, weighted_loss

    torch.manual_seed(0)
    model = build_model(model_config, torch.float32).to(device).train()
    if mode == "compiled":
        model.compile()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    weights = {"energy": config.energy_weight, "forces": config.forces_weight}

    def step(batch) -> None:
        outputs = model(batch, compute_forces=True)
        loss = weighted_loss(loss_terms(outputs, batch), weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()

    return step


def measure(architecture: str, batch_size: int, args) -> list[dict]:
    """One row per mode: structures/s (CPU or GPU seconds), ms per step, and the warm-up steps'
    seconds (the first compiled step compiles). The modes take turns, a few steps each, so that
    a shared machine's changing load weighs on them alike."""
    from molequi.nn import compiled

    data, model_config, config = batches(architecture, batch_size, args.warmup + args.steps, args.device)
    steps = {mode: stepper(model_config, config, mode, args.device) for mode in args.modes}
    clock = time.process_time if args.device == "cpu" else time.perf_counter
    warmup, seconds = {}, dict.fromkeys(args.modes, 0.0)
    for mode, step in steps.items():
        first = time.perf_counter()
        for batch in data[: args.warmup]:
            step(batch)
        sync(args.device)
        warmup[mode] = time.perf_counter() - first
    timed = data[args.warmup:]
    turn = max(1, args.steps // args.rounds)
    for start in range(0, len(timed), turn):
        for mode, step in steps.items():
            started = clock()
            for batch in timed[start : start + turn]:
                step(batch)
            sync(args.device)
            seconds[mode] += clock() - started
    return [{
        "architecture": architecture, "batch_size": batch_size, "mode": mode, "steps": len(timed),
        "ms_per_step": 1e3 * seconds[mode] / len(timed), "structures_per_s": batch_size * len(timed) / seconds[mode],
        "warmup_s": warmup[mode], "fell_back": mode == "compiled" and not compiled.SHARED.active,
    } for mode in args.modes]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def markdown(rows: list[dict], info: dict, args, command: str) -> str:
    clock = "CPU" if args.device == "cpu" else "wall"
    lines = [
        f"Training step on rMD17 aspirin (21 atoms), float32, random initial weights; {info['cpu']}"
        + (f", GPU {info['gpu']}" if info.get("gpu") else "")
        + f", {args.threads or torch.get_num_threads()} torch thread(s), {clock} seconds; load average "
        f"{os.getloadavg()[0]:.1f} at the end (the machine is shared). Command: `{command}`",
        "",
        "| architecture | batch | eager (structures/s) | compiled (structures/s) | speed-up | eager ms/step | compiled ms/step | first compiled steps (s, compiling) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    by = {(r["architecture"], r["batch_size"], r["mode"]): r for r in rows}
    for architecture in args.architectures:
        for batch_size in args.batch_sizes:
            eager, fast = by.get((architecture, batch_size, "eager")), by.get((architecture, batch_size, "compiled"))
            cells = [architecture, str(batch_size)]
            cells += [f"{r['structures_per_s']:.1f}" if r else "–" for r in (eager, fast)]
            cells.append(f"{fast['structures_per_s'] / eager['structures_per_s']:.2f}×" if eager and fast else "–")
            cells += [f"{r['ms_per_step']:.0f}" if r else "–" for r in (eager, fast)]
            cells.append(f"{fast['warmup_s']:.0f}" + (" (fell back to eager)" if fast["fell_back"] else "") if fast else "–")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--architectures", nargs="+", default=list(ARCHITECTURES), choices=list(ARCHITECTURES))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[16, 64])
    parser.add_argument("--modes", nargs="+", default=["eager", "compiled"], choices=["eager", "compiled"])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per row")
    parser.add_argument("--rounds", type=int, default=5, help="turns the modes take over the timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (the first compiled one compiles)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", default="bench_train", help="output folder (bench_train.json, bench_train.md)")
    parser.add_argument("--readme", action="store_true", help="write the table into docs/benchmarks.md (block 'train-throughput')")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from molequi.utils import machine_info

    info = machine_info(args.device)
    rows = []
    for architecture in args.architectures:
        for batch_size in args.batch_sizes:
            for row in measure(architecture, batch_size, args):
                print(json.dumps(row), flush=True)
                rows.append(row)
    command = "python scripts/bench_train.py " + " ".join(sys.argv[1:])
    table = markdown(rows, info, args, command)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_train.json").write_text(json.dumps({"machine": info, "command": command, "rows": rows}, indent=1))
    (out / "bench_train.md").write_text(table)
    print(table)
    if args.readme:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from readme_section import update_readme_section

        update_readme_section("train-throughput", table)


if __name__ == "__main__":
    main()
