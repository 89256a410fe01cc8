#!/usr/bin/env python
"""Mixed precision on rMD17: float32 against float64 for training speed, MD speed and accuracy.

For each molecule and each dtype, one after the other with the same thread count, trains with
``molequi train`` for the same budget (through ``scripts/bench_rmd17.py``: 950 training + 50
validation structures, tested on the 1000 test structures), then with the trained model:

* MD speed: the batched engine (NVE, 0.5 fs) on ``--md-replicas`` copies of a test structure of
  ``--md-molecule``, steps per second and the largest total-energy change, meV;
* same weights in the other dtype: the largest energy and force differences on
  ``--compare`` test structures (what float32 costs in forces and energies);
* order of the atoms: the energy MAE on those structures with every structure's atoms permuted,
  minus the MAE without (a float32 total summed in float32 would change by ~0.1 meV).

Writes ``precision.json`` and ``precision.md`` into ``--out``; ``--readme`` pastes the table into
docs/benchmarks.md's ``precision`` block. Records wall and CPU seconds, ``uptime`` before and after each
training, and the machine (``molequi.utils.machine_info``).

    python scripts/bench_precision.py --minutes 3 --threads 1 --readme              # CPU (the docs/benchmarks.md table)
    python scripts/bench_precision.py --minutes 12 --device cuda --tf32 --readme    # GPU, adds TF32 rows

``--tf32`` (CUDA only) adds a float32 row with TF32 matrix products (cuBLAS/cuDNN), in training
(``TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1``) and in MD.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_rmd17  # noqa: E402  (the training driver this benchmark shares)


def uptime() -> str:
    """``uptime``'s line (the load averages of the shared machine)."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@contextlib.contextmanager
def tf32(enabled: bool):
    """TF32 matrix products on CUDA while inside (a no-op when not ``enabled``)."""
    import torch

    if not enabled:
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_structures(molecule: str, args: argparse.Namespace, count: int):
    from molequi.data.readers import read_rmd17

    return read_rmd17(args.data_dir / f"rmd17_{molecule}_test_{args.split}.npz")[:count]


def md_speed(model_file: str, dtype: str, molecule: str, args: argparse.Namespace, use_tf32: bool) -> dict:
    """Steps per second of the batched engine, and the largest |ΔE_total| over the run, meV."""
    import torch

    from molequi.md import BatchedMD, Potential, load_models, state_from_atoms

    frame = test_structures(molecule, args, 1)[0]
    device = args.device
    potential = Potential(load_models(model_file, device=device, dtype=getattr(torch, dtype)))
    state = state_from_atoms([frame.copy() for _ in range(args.md_replicas)], temperature=300.0, seed=0, device=device)
    with tf32(use_tf32):
        engine = BatchedMD(potential, state, dt=0.5, ensemble="nve")
        engine.run(5)  # warm-up (first neighbor lists, allocator)
        if device != "cpu":
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter(), time.process_time()
        engine.run(args.md_steps)
        if device != "cpu":
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "md_molecule": molecule,
        "md_replicas": args.md_replicas,
        "md_steps": args.md_steps,
        "md_steps_per_s": args.md_steps / wall,
        "md_wall_s": wall,
        "md_cpu_s": cpu,
        "md_steps_per_cpu_s": args.md_steps / cpu,
        "md_max_energy_change_meV": 1000.0 * float(engine.max_deviation.max()) if engine.state.num_systems else None,
        "md_stopped": len(engine.stopped),
    }


def step_speed(model_file: str, dtype: str, molecule: str, settings: dict, args: argparse.Namespace) -> dict:
    """Training steps (energy and forces loss, backward, Adam) per wall and per CPU second, on
    batches of the training file: the CPU rate is what a shared machine's load changes least."""
    import torch
    from torch_geometric.data import Batch

    from molequi.data.graph import atoms_to_graph
    from molequi.data.readers import read_rmd17
    from molequi.models import load_model
    from molequi.training.metrics import loss_terms, weighted_loss

    size, warmup = int(settings["batch_size"]), 2
    frames = read_rmd17(args.data_dir / f"rmd17_{molecule}_train_{args.split}.npz")[: size * (args.steps + warmup)]
    model = load_model(model_file, device=args.device, dtype=dtype).train()
    graphs = [atoms_to_graph(atoms, model.model.config.cutoff) for atoms in frames]
    batches = [Batch.from_data_list(graphs[k : k + size]).to(args.device) for k in range(0, len(graphs), size)]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    weights = {"energy": float(settings["energy_weight"]), "forces": float(settings["forces_weight"])}

    def step(batch) -> None:
        loss = weighted_loss(loss_terms(model(batch, compute_forces=True), batch), weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for batch in batches[:warmup]:
        step(batch)
    wall, cpu = time.perf_counter(), time.process_time()
    for batch in batches[warmup:]:
        step(batch)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    steps = len(batches) - warmup
    return {"train_steps_timed": steps, "train_batch": size, "train_steps_per_s": steps / wall, "train_steps_per_cpu_s": steps / cpu}


def precision_checks(model_file: str, dtype: str, molecule: str, args: argparse.Namespace) -> dict:
    """The trained weights in float32 and float64 on the same structures; atom-order effect."""
    from molequi.models import load_model
    from molequi.models.predict import predict

    frames = test_structures(molecule, args, args.compare)
    models = {name: load_model(model_file, device=args.device, dtype=name)
              for name in ("float32", "float64")}
    out = {name: predict(model, frames, batch_size=25) for name, model in models.items()}
    de = np.array([a["energy"] - b["energy"] for a, b in zip(out["float32"], out["float64"])])
    df = np.concatenate([(a["forces"].astype(np.float64) - b["forces"]).ravel() for a, b in zip(out["float32"], out["float64"])])
    labels = np.array([atoms.get_potential_energy() for atoms in frames])
    rng = np.random.default_rng(0)
    permuted = [atoms[rng.permutation(len(atoms))] for atoms in frames]
    own = models[dtype]
    plain = np.array([r["energy"] for r in out[dtype]])
    shuffled = np.array([r["energy"] for r in predict(own, permuted, batch_size=25, compute_forces=False)])
    return {
        "compare_structures": len(frames),
        "f32_vs_f64_energy_max_meV": 1000.0 * float(np.abs(de).max()),
        "f32_vs_f64_forces_max_meV_per_A": 1000.0 * float(np.abs(df).max()),
        "f32_vs_f64_forces_mean_meV_per_A": 1000.0 * float(np.abs(df).mean()),
        "permutation_energy_mae_change_meV": 1000.0 * float(np.abs(np.abs(shuffled - labels).mean() - np.abs(plain - labels).mean())),
        "permutation_energy_max_change_meV": 1000.0 * float(np.abs(shuffled - plain).max()),
    }


def run_variant(molecule: str, variant: str, args: argparse.Namespace) -> dict:
    dtype = "float32" if variant == "tf32" else variant
    train_args = argparse.Namespace(**vars(args))
    train_args.dtype, train_args.out = dtype, args.out / variant
    environment = dict(os.environ)
    os.environ.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    if variant == "tf32":
        os.environ["TORCH_ALLOW_TF32_CUBLAS_OVERRIDE"] = "1"
    load_before, cpu_before, wall_before = uptime(), children_cpu_seconds(), time.monotonic()
    try:
        result = bench_rmd17.run_molecule(molecule, train_args)
    finally:
        os.environ.clear()
        os.environ.update(environment)
    row = {
        "variant": variant,
        "dtype": dtype,
        "train_wall_s": time.monotonic() - wall_before,
        "train_cpu_s": children_cpu_seconds() - cpu_before,
        "uptime_before": load_before,
        "uptime_after": uptime(),
        **result,
    }
    if "error" in result:
        return row
    row["epochs_per_s"] = result["epochs"] / (60.0 * result["training_minutes"])
    with tf32(variant == "tf32"):
        row.update(step_speed(result["model_file"], dtype, molecule, result["training"], args))
    row.update(precision_checks(result["model_file"], dtype, molecule, args))
    if molecule == args.md_molecule:
        row.update(md_speed(result["model_file"], dtype, molecule, args, variant == "tf32"))
    print(json.dumps({k: v for k, v in row.items() if k not in ("architecture", "training")}, indent=1), flush=True)
    return row


def fmt(value, digits: int = 2) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def load_figures(text: str) -> str:
    """The three load averages of an ``uptime`` line."""
    return text.rsplit("load average:", 1)[-1].strip() if "load average" in text else text


def markdown(rows: list[dict], machine: dict, args: argparse.Namespace) -> str:
    lines = [
        f"{len(rows)} trainings, one after the other, {args.minutes} min each, {args.threads} torch thread(s), "
        f"device {args.device}, on {machine.get('gpu') or machine['cpu']} ({machine['cpu_count']} cores, "
        f"shared with other jobs: see the load), torch {machine['torch']}, commit {str(machine.get('git_commit', ''))[:10]}.",
        f"Command: `{args.command}`",
        "Training: `scripts/rmd17.yaml`, 950 train + 50 validation, tested on the 1000 test structures (E: MAE of the "
        "total energy, meV; F: MAE per component, meV/Å). Epochs/s over the training budget; wall and CPU s of the "
        f"whole `molequi train` process (with the test); train steps: {args.steps} timed steps (batch of the config, "
        f"energy + forces loss, backward, Adam) of the trained model in its dtype. MD: batched engine, NVE 0.5 fs, {args.md_replicas} × {args.md_molecule}, "
        f"{args.md_steps} steps; max |ΔE| is the largest total-energy change.",
        "",
        "| molecule | dtype | epochs | epochs/s | wall s | CPU s | train steps/s | train steps/CPU s | E MAE | F MAE "
        "| MD steps/s | MD steps/CPU s | MD max \\|ΔE\\| meV | load before → after |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['molecule']} | {r['variant']} | failed: {r['error']} | | | | | | | | | | | |")
            continue
        lines.append(
            f"| {r['molecule']} | {r['variant']} | {r['epochs']} | {r['epochs_per_s']:.4f} | {r['train_wall_s']:.0f} | "
            f"{r['train_cpu_s']:.0f} | {r['train_steps_per_s']:.2f} | {r['train_steps_per_cpu_s']:.2f} | {r['energy_mae_meV']:.2f} | {r['forces_mae_meV_per_A']:.2f} | "
            f"{fmt(r.get('md_steps_per_s'), 2)} | {fmt(r.get('md_steps_per_cpu_s'), 2)} | {fmt(r.get('md_max_energy_change_meV'), 3)} | "
            f"{load_figures(r['uptime_before'])} → {load_figures(r['uptime_after'])} |"
        )
    lines += [
        "",
        f"The trained weights evaluated in float32 and in float64 on {args.compare} test structures, and the energy "
        "of every structure with its atoms permuted (the float64 energy path makes the order irrelevant):",
        "",
        "| molecule | trained in | max \\|E32 − E64\\| meV | max \\|F32 − F64\\| meV/Å | mean \\|F32 − F64\\| meV/Å | permuted: Δ E MAE meV | permuted: max \\|ΔE\\| meV |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            continue
        lines.append(
            f"| {r['molecule']} | {r['variant']} | {r['f32_vs_f64_energy_max_meV']:.4f} | "
            f"{r['f32_vs_f64_forces_max_meV_per_A']:.4f} | {r['f32_vs_f64_forces_mean_meV_per_A']:.5f} | "
            f"{r['permutation_energy_mae_change_meV']:.5f} | {r['permutation_energy_max_change_meV']:.5f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--molecules", nargs="+", default=["ethanol", "aspirin"], choices=sorted(bench_rmd17.MACE_PUBLISHED),
                        help="rMD17 molecules to train and test")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"], choices=["float32", "float64"],
                        help="training dtypes, run one after the other per molecule")
    parser.add_argument("--tf32", action="store_true", help="also a float32 run with TF32 matrix products (CUDA only)")
    parser.add_argument("--minutes", type=float, default=3.0, help="training budget per run, minutes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (OMP_NUM_THREADS) of every run")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--config", type=Path, default=bench_rmd17.DEFAULT_CONFIG, help="molequi training config")
    parser.add_argument("--max-epochs", type=int, default=None, help="override the config's max_epochs")
    parser.add_argument("--data-dir", type=Path, default=bench_rmd17.DEFAULT_DATA, help="folder with rmd17_<mol>_{train,test}_NN.npz")
    parser.add_argument("--split", default="01", help="which of the rMD17 splits (01-05)")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per dtype (speed per CPU second)")
    parser.add_argument("--compare", type=int, default=100, help="test structures for the float32/float64 and permutation checks")
    parser.add_argument("--md-molecule", default="aspirin", help="molecule of the MD speed runs")
    parser.add_argument("--md-replicas", type=int, default=8, help="copies of the molecule in one batched MD run")
    parser.add_argument("--md-steps", type=int, default=100, help="timed MD steps")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_precision"), help="output folder")
    parser.add_argument("--readme", action="store_true", help="paste the table into docs/benchmarks.md's 'precision' block")
    args = parser.parse_args(argv)
    if args.tf32 and not args.device.startswith("cuda"):
        parser.error("--tf32 needs --device cuda (TF32 is a GPU matrix-product mode)")
    args.command = shlex.join(["python", "scripts/bench_precision.py", *(sys.argv[1:] if argv is None else argv)])
    args.out.mkdir(parents=True, exist_ok=True)

    import torch

    from molequi.utils import machine_info

    torch.set_num_threads(args.threads)  # the in-process MD and comparison runs
    machine = machine_info(args.device)
    variants = list(args.dtypes) + (["tf32"] if args.tf32 else [])
    rows: list[dict] = []
    started = uptime()
    for molecule in args.molecules:
        for variant in variants:
            rows.append(run_variant(molecule, variant, args))
            report = {"machine": machine, "command": args.command, "uptime_start": started, "uptime_now": uptime(),
                      "minutes": args.minutes, "threads": args.threads, "rows": rows}
            (args.out / "precision.json").write_text(json.dumps(report, indent=2) + "\n")
            (args.out / "precision.md").write_text(markdown(rows, machine, args))
    text = (args.out / "precision.md").read_text()
    print(text)
    if args.readme:
        from readme_section import update_readme_section

        update_readme_section("precision", text)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
