"""MD speed: molequi's batched engine against torch-sim driving the same model through
:class:`molequi.calculators.torchsim.TorchSimModel`.

Both run Langevin NVT (BAOAB in both) at 300 K, dt 0.5 fs, on S copies of ethanol (9 atoms,
open boundaries), with one model (molequi's default training architecture, random weights:
the cost does not depend on the weights). Reported per step: wall and CPU seconds (the machine
may be shared: CPU seconds are the steadier figure), and the ratio torch-sim / molequi.

    python scripts/bench_torchsim.py --device cpu --systems 1 16 128 --steps 40

Writes ``bench_torchsim.json`` and ``bench_torchsim.md`` into ``--out`` and, with
``--readme``, the table into docs/benchmarks.md's ``bench_torchsim`` block.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build(dtype: torch.dtype, device: str):
    from molequi.models import build_model
    from molequi.training.config import default_model

    config = dataclasses.replace(default_model(), species=[1, 6, 8], avg_num_neighbors=8.0,
                                 e0s={"1": -13.6, "6": -1029.8, "8": -2041.3})
    torch.manual_seed(0)
    return build_model(config, dtype=dtype).to(device).eval()


def ethanols(count: int):
    from ase.build import molecule

    return [molecule("CH3CH2OH") for _ in range(count)]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_steps(step, steps: int, warmup: int, device: str) -> dict[str, float]:
    for _ in range(warmup):
        step()
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    sync(device)
    return {"wall_s_per_step": (time.perf_counter() - wall) / steps, "cpu_s_per_step": (time.process_time() - cpu) / steps}


def molequi_engine(model, count: int, steps: int, warmup: int, device: str) -> dict[str, float]:
    from molequi.md import BatchedMD, Potential, state_from_atoms

    engine = BatchedMD(Potential([model]), state_from_atoms(ethanols(count), 300.0, 0.01, seed=0, device=device),
                       dt=0.5, ensemble="nvt")
    return time_steps(engine.step, steps, warmup, device)


def torchsim_engine(model, count: int, steps: int, warmup: int, device: str) -> dict[str, float]:
    import torch_sim as ts

    from molequi.calculators.torchsim import TorchSimModel

    adapter = TorchSimModel(model, device=device)
    fs = 1e-3 * ts.units.MetalUnits.time
    f64 = {"dtype": torch.float64, "device": device}
    init, update = ts.nvt_langevin(adapter, dt=torch.tensor(0.5 * fs, **f64),
                                   kT=torch.tensor(300.0 * ts.units.MetalUnits.temperature, **f64),
                                   gamma=torch.tensor(0.01 / fs, **f64), seed=0)
    holder = {"state": init(ts.io.atoms_to_state(ethanols(count), torch.device(device), torch.float64))}

    def step() -> None:
        holder["state"] = update(holder["state"])

    return time_steps(step, steps, warmup, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--systems", type=int, nargs="+", default=[1, 16, 128])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="runs/bench_torchsim")
    parser.add_argument("--readme", action="store_true", help="write the table into docs/benchmarks.md's bench_torchsim block")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from molequi.utils import machine_info

    load_before = os.getloadavg()[0]
    model = build(getattr(torch, args.dtype), args.device)
    rows = []
    for count in args.systems:
        ours = molequi_engine(model, count, args.steps, args.warmup, args.device)
        theirs = torchsim_engine(model, count, args.steps, args.warmup, args.device)
        rows.append({"systems": count, "atoms": 9 * count, "molequi": ours, "torch_sim": theirs,
                     "ratio_cpu": theirs["cpu_s_per_step"] / ours["cpu_s_per_step"]})
        print(json.dumps(rows[-1]), flush=True)
    info = machine_info(args.device)
    info["loadavg_1min_before"], info["loadavg_1min_after"] = round(load_before, 2), round(os.getloadavg()[0], 2)
    command = "python scripts/bench_torchsim.py " + " ".join(sys.argv[1:])
    lines = [
        f"Langevin NVT of ethanol copies, dt 0.5 fs, default architecture ({args.dtype}), {args.device}, "
        f"{args.threads} thread(s); ms per step (CPU ms in brackets), one run of {args.steps} steps after {args.warmup} warm-up steps.",
        "",
        "| systems | atoms | molequi engine | torch-sim + adapter | torch-sim / molequi (CPU) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        m, t = row["molequi"], row["torch_sim"]
        lines.append(f"| {row['systems']} | {row['atoms']} | {1e3 * m['wall_s_per_step']:.1f} ({1e3 * m['cpu_s_per_step']:.1f}) "
                     f"| {1e3 * t['wall_s_per_step']:.1f} ({1e3 * t['cpu_s_per_step']:.1f}) | {row['ratio_cpu']:.2f} |")
    lines += ["", f"Machine: {info['cpu']}, {info['cpu_count']} cores, torch {info['torch']}, load "
              f"{info['loadavg_1min_before']} → {info['loadavg_1min_after']} (1-min average, shared machine). "
              f"Command: `{command}`."]
    markdown = "\n".join(lines) + "\n"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_torchsim.json").write_text(json.dumps({"rows": rows, "machine": info, "command": command}, indent=2))
    (out / "bench_torchsim.md").write_text(markdown)
    print(markdown)
    if args.readme:
        from scripts.readme_section import update_readme_section

        update_readme_section("bench_torchsim", markdown)


if __name__ == "__main__":
    main()
