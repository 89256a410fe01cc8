"""MD speed of molequi against MACE, side by side in one run.

molequi (this environment): the ASE calculator on one aspirin, and the batched engine on one
aspirin and on 128 / 1,024 aspirin copies. MACE 0.3.16 (its own environment, ``.venv-mace``
from ``scripts/mace_env.sh``, because it pins e3nn 0.4.4): its ASE calculator on one aspirin and
on one big structure of copies placed far apart. Random weights; molequi at a size matched to
each MACE configuration, and at molequi's default (quickstart) configuration.

    python scripts/bench_md.py --device cpu --seconds 5            # what runs on a laptop
    python scripts/bench_md.py --device cuda                       # the GPU side, one command

Eager against compiled (``torch.compile``, :meth:`molequi.nn.forces.ForceOutput.compile`): ``--modes
eager compiled`` times both for every molequi model (the compilation itself is not timed); on
one CPU thread, with ``--cpu-time``, the times are CPU seconds (a shared machine's load slows
the wall clock, not the work), and ``--readme`` writes the eager-vs-compiled table into
docs/benchmarks.md (block ``compiled-md``)::

    OMP_NUM_THREADS=1 python scripts/bench_md.py --threads 1 --cpu-time --dtypes float32 --molequi-models molequi-64x0e molequi-quickstart --mace-models --copies 128 --modes eager compiled --readme
    python scripts/bench_md.py --device cuda --dtypes float32 --mace-models --modes eager compiled graphs

Writes ``bench_md.json`` and ``bench_md.md`` (table with molequi/MACE ratios, the machine and
the command) into ``--out``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ASPIRIN = ROOT.parent / "shared" / "data" / "rmd17" / "rmd17_aspirin_test_01.npz"
SPACING = 25.0  # Å between copies: far beyond any cutoff
DRUG_LIKE = "C[C@H]1C[C@H]2[C@@H]3CC[C@@]([C@]3(C[C@@H]([C@@H]2[C@@]4(C1=CC(=O)C=C4)C)O)C)(C(=O)CO)O"
"""Methylprednisolone, C22H30O5: a 57-atom drug-like molecule of the elements H, C, O."""
CLOCK = {"clock": time.perf_counter}  # time.process_time with --cpu-time (one thread: CPU seconds)

# MACE configuration -> molequi configuration of matched size (channels, l_max; 2 layers, correlation 3)
MACE_CONFIGS = {"mace-64x0e": {"channels": 64, "L": 0}, "mace-128x1o": {"channels": 128, "L": 1}}
MATCHED_SHAPE = {"correlation": 3, "radial_hidden": [64, 64], "edge_l_max": None}  # harmonics of order l_max, as measured
MOLEQUI_CONFIGS = {
    "molequi-64x0e": {"channels": 64, "l_max": 0, **MATCHED_SHAPE},
    "molequi-128x1o": {"channels": 128, "l_max": 1, **MATCHED_SHAPE},
    "molequi-quickstart": {},  # ModelConfig defaults = `molequi train` without --config
}
MATCHED = {"mace-64x0e": "molequi-64x0e", "mace-128x1o": "molequi-128x1o"}


# ---------------------------------------------------------------- shared helpers (both environments)
def drug_like():
    """Methylprednisolone (57 atoms), embedded by RDKit (ETKDG, fixed seed) and MMFF-relaxed."""
    from ase import Atoms
    from rdkit import Chem
    from rdkit.Chem import AllChem

    molecule = Chem.AddHs(Chem.MolFromSmiles(DRUG_LIKE))
    AllChem.EmbedMolecule(molecule, randomSeed=0)
    AllChem.MMFFOptimizeMolecule(molecule)
    numbers = [atom.GetAtomicNum() for atom in molecule.GetAtoms()]
    return Atoms(numbers=numbers, positions=molecule.GetConformer().GetPositions())


def aspirin():
    from ase import Atoms

    data = np.load(ASPIRIN)
    return Atoms(numbers=data["nuclear_charges"], positions=data["coords"][0])


def copies(atoms, count: int):
    """``count`` copies of ``atoms`` on a cubic grid ``SPACING`` Å apart (one open structure)."""
    from ase import Atoms

    side = int(np.ceil(count ** (1 / 3)))
    grid = np.array([(i, j, k) for i in range(side) for j in range(side) for k in range(side)][:count], float)
    positions = (atoms.positions[None] + SPACING * grid[:, None]).reshape(-1, 3)
    return Atoms(numbers=np.tile(atoms.numbers, count), positions=positions)


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def rate(step, device: str, seconds: float, warmup: int = 3, min_steps: int = 3, max_steps: int = 100_000) -> float:
    """Calls of ``step()`` per second, after ``warmup`` calls, for about ``seconds``."""
    for _ in range(warmup):
        step()
    sync(device)
    clock = CLOCK["clock"]
    start, count = clock(), 0
    while count < min_steps or (clock() - start < seconds and count < max_steps):
        step()
        count += 1
        if count % 10 == 0 or count < 10:
            sync(device)
    sync(device)
    return count / (clock() - start)


def peak_memory(device: str) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 1e9 if device.startswith("cuda") else None


def reset_memory(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def ase_rate(atoms, calculator, device: str, seconds: float, dt_fs: float = 0.5, **kwargs) -> float:
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    atoms = atoms.copy()
    atoms.calc = calculator
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    dynamics = VelocityVerlet(atoms, timestep=dt_fs * units.fs)
    return rate(lambda: dynamics.run(1), device, seconds, **kwargs)


def call_rate(atoms, calculator, device: str, seconds: float) -> float:
    """ASE force calls per second on ``atoms``, each after a small back-and-forth move (±1e-4 Å:
    a new structure for the calculator, no drift; random weights would tear a molecule apart in MD)."""
    atoms = atoms.copy()
    atoms.calc = calculator
    sign = [1.0]

    def call() -> None:
        sign[0] = -sign[0]
        atoms.positions[0, 0] += sign[0] * 1e-4
        atoms.get_forces()

    return rate(call, device, seconds)


# ---------------------------------------------------------------- MACE (runs inside .venv-mace)
def mace_worker(args) -> None:
    import torch
    from e3nn import o3
    from mace import modules
    from mace.calculators import MACECalculator

    results = []
    for name in args.mace_models:
        spec = MACE_CONFIGS[name]
        for dtype in args.dtypes:
            torch.manual_seed(0)
            torch.set_default_dtype(getattr(torch, dtype))
            block = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
            model = modules.ScaleShiftMACE(
                r_max=5.0, num_bessel=8, num_polynomial_cutoff=5, max_ell=3,
                interaction_cls=block, interaction_cls_first=block, num_interactions=2, num_elements=3,
                hidden_irreps=o3.Irreps(f"{spec['channels']}x0e" + (f" + {spec['channels']}x1o" if spec["L"] else "")),
                MLP_irreps=o3.Irreps("16x0e"), atomic_energies=np.zeros(3), avg_num_neighbors=12.0,
                atomic_numbers=[1, 6, 8], correlation=3, gate=torch.nn.functional.silu,
                atomic_inter_scale=1.0, atomic_inter_shift=0.0,
            )
            path = Path(args.out) / f"{name}-{dtype}.model"
            torch.save(model.to(getattr(torch, dtype)), path)
            calculator = MACECalculator(model_paths=str(path), device=args.device, default_dtype=dtype)
            row = {"model": name, "dtype": dtype}
            reset_memory(args.device)
            row["ase_aspirin_steps_per_s"] = ase_rate(aspirin(), calculator, args.device, args.seconds)
            for count in args.copies:
                reset_memory(args.device)
                try:
                    big = copies(aspirin(), count)
                    steps = ase_rate(big, calculator, args.device, args.seconds, warmup=1, min_steps=2)
                    row[f"ase_{count}_atom_steps_per_s"] = steps * len(big)
                    row[f"ase_{count}_peak_gb"] = peak_memory(args.device)
                except torch.cuda.OutOfMemoryError:
                    row[f"ase_{count}_atom_steps_per_s"] = "out of memory"
            print(json.dumps(row), flush=True)
            results.append(row)
    (Path(args.out) / "mace.json").write_text(json.dumps(results, indent=1))


def run_mace(args) -> list[dict]:
    python = ROOT / ".venv-mace" / "bin" / "python"
    if not python.exists():
        print(f"MACE skipped: {python} missing (run scripts/mace_env.sh)", file=sys.stderr)
        return []
    command = [str(python), __file__, "--mace-worker", "--device", args.device, "--seconds", str(args.seconds),
               "--out", args.out, "--dtypes", *args.dtypes, "--copies", *map(str, args.copies),
               "--mace-models", *args.mace_models, "--threads", str(args.threads)]
    print("MACE:", " ".join(command), file=sys.stderr)
    # e3nn 0.4.4 (MACE's pin) torch.load()s its own constants file, which torch ≥ 2.6 refuses under
    # its weights_only default; the files loaded there are e3nn's and the MACE models saved just above.
    env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    completed = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, text=True, env=env)
    if completed.returncode:
        print(f"MACE worker failed with exit code {completed.returncode}", file=sys.stderr)
    return [json.loads(line) for line in completed.stdout.splitlines() if line.startswith("{")]


# ---------------------------------------------------------------- molequi (this environment)
def molequi_model(name: str, dtype: str, device: str):
    import torch

    from molequi.models import ModelConfig, build_model

    torch.manual_seed(0)
    config = ModelConfig(species=[1, 6, 8], avg_num_neighbors=12.0, **MOLEQUI_CONFIGS[name])
    return build_model(config, getattr(torch, dtype)).to(device).eval()


def calculator_overhead(model, device: str, seconds: float, compile: bool = False) -> dict:
    """ms per ASE step spent outside the model call (positions in, results out, neighbor check)."""
    from molequi.calculators import MolequiCalculator

    calculator = MolequiCalculator(model, device=device, compile=compile)
    atoms = aspirin()
    calculator.get_forces(atoms)
    graph = calculator._graph
    model_only = rate(lambda: calculator.potential(graph), device, seconds)
    full = ase_rate(atoms, calculator, device, seconds)
    return {"model_call_ms": 1e3 / model_only, "ase_step_ms": 1e3 / full, "overhead_ms": 1e3 / full - 1e3 / model_only}


def molequi_rows(args) -> list[dict]:
    import torch

    from molequi.calculators import MolequiCalculator
    from molequi.md import BatchedMD, Potential, load_models, state_from_atoms

    from molequi.nn import compiled

    rows = []
    for name, dtype, mode in itertools.product(args.molequi_models, args.dtypes, args.modes):
        if mode == "graphs" and not args.device.startswith("cuda"):
            continue  # CUDA graphs replay on a GPU only
        model = molequi_model(name, dtype, args.device)
        compile = mode in ("compiled", "graphs")
        row = {"model": name, "dtype": dtype, "mode": mode}
        reset_memory(args.device)
        if mode != "graphs":
            calculator = MolequiCalculator(model, device=args.device, compile=compile)
            row["ase_aspirin_steps_per_s"] = ase_rate(aspirin(), calculator, args.device, args.seconds)
            row["ase_drug_like_steps_per_s"] = call_rate(drug_like(), calculator, args.device, args.seconds)
            row.update(calculator_overhead(model, args.device, min(args.seconds, 2.0), compile))
        members = load_models(model, device=args.device)
        potential = Potential([m.compile() for m in members] if compile else members)
        for count in [1, *args.copies]:
            reset_memory(args.device)
            try:
                state = state_from_atoms([aspirin()] * count, temperature=300.0, seed=0)
                # random weights: keep every system running (the safety checks still run and cost their time)
                engine = BatchedMD(potential, state, dt=0.5, ensemble="nve", max_temperature=float("inf"), min_distance=0.0,
                                   cuda_graphs=mode == "graphs")
                steps = rate(engine.step, args.device, args.seconds, warmup=2, min_steps=2)
                key = "batched_aspirin_steps_per_s" if count == 1 else f"batched_{count}_atom_steps_per_s"
                row[key] = steps if count == 1 else steps * 21 * count
                row[f"batched_{count}_peak_gb"] = peak_memory(args.device)
            except torch.cuda.OutOfMemoryError:
                row[f"batched_{count}_atom_steps_per_s"] = "out of memory"
            finally:
                engine = state = None
        row["fell_back"] = compile and not compiled.SHARED.active
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def compiled_table(args, info: dict, rows: list[dict], command: str) -> str:
    """Eager against compiled (and CUDA graphs): ms per step and atom·steps/s, for the docs."""
    clock = "CPU" if CLOCK["clock"] is time.process_time else "wall"
    load = os.getloadavg()
    lines = [
        f"Machine: {info['cpu']}, {info['cpu_count']} cores" + (f", GPU {info['gpu']}" if info.get("gpu") else "")
        + f"; {info['torch_threads']} torch thread(s); torch {info['torch']}; device `{args.device}`; {clock} seconds; "
        f"load average {load[0]:.1f} at the end (the machine is shared). Random weights; steps of 0.5 fs. "
        f"Command: `{command}`",
        "",
        "| model | dtype | mode | ASE MD step, aspirin 21 atoms (ms) | ASE call, methylprednisolone 57 atoms (ms) | "
        "batched step, 1 aspirin (ms) |" + "".join(f" batched, {c} aspirins (atom·steps/s) |" for c in args.copies),
        "|---|---|---|---|---|---|" + "---|" * len(args.copies),
    ]
    for row in rows:
        def ms(key):
            value = row.get(key)
            return f"{1e3 / value:.2f}" if isinstance(value, (int, float)) and value else "–"

        mode = row.get("mode", "eager") + (" (fell back to eager)" if row.get("fell_back") else "")
        line = f"| {row['model']} | {row['dtype']} | {mode} | {ms('ase_aspirin_steps_per_s')} | {ms('ase_drug_like_steps_per_s')} |"
        line += f" {ms('batched_aspirin_steps_per_s')} |"
        line += "".join(f" {fmt(row.get(f'batched_{c}_atom_steps_per_s'))} |" for c in args.copies)
        lines.append(line)
    lines += ["", "compiled: `torch.compile` (inductor, dynamic shapes) of energy and forces, the first call's compilation "
              "not timed; graphs: compiled and replayed as a CUDA graph with fixed-capacity neighbor buffers (GPU only)."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- report
def fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    return f"{value:,.3g}" if value < 1000 else f"{value:,.0f}"


def ratio(a, b) -> str:
    return f"{a / b:.2f}×" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else "–"


def report(args, info: dict, molequi: list[dict], mace: list[dict], command: str) -> str:
    lines = [
        "# molequi MD benchmark",
        "",
        f"Machine: {info['cpu']}, {info['cpu_count']} cores (torch threads {info['torch_threads']})"
        + (f", GPU {info['gpu']}" if info.get('gpu') else "") + f"; torch {info['torch']}; device `{args.device}`.",
        f"Command: `{command}`",
        "",
        "Aspirin (21 atoms, rMD17 test frame 0); copies placed 25 Å apart. Random weights. Steps of 0.5 fs.",
        "",
    ]
    head = "| model | dtype | mode | ASE calc, aspirin (steps/s) | batched, aspirin (steps/s) |"
    sep = "|---|---|---|---|---|"
    for count in args.copies:
        head += f" {count} copies (atom·steps/s) |"
        sep += "---|"
    head += " calc overhead (ms/step) |"
    sep += "---|"
    lines += ["### molequi", "", head, sep]
    for row in molequi:
        line = f"| {row['model']} | {row['dtype']} | {row.get('mode', 'eager')} | {fmt(row.get('ase_aspirin_steps_per_s'))} | {fmt(row['batched_aspirin_steps_per_s'])} |"
        for count in args.copies:
            peak = row.get(f"batched_{count}_peak_gb")
            line += f" {fmt(row.get(f'batched_{count}_atom_steps_per_s'))}" + (f" ({peak:.1f} GB)" if peak else "") + " |"
        line += f" {row['overhead_ms']:.2f} of {row['ase_step_ms']:.1f} |" if "overhead_ms" in row else " – |"
        lines.append(line)
    if mace:
        lines += ["", "### MACE 0.3.16 (ASE calculator) and ratios molequi/MACE", ""]
        head = "| MACE model | dtype | ASE, aspirin (steps/s) |"
        sep = "|---|---|---|"
        for count in args.copies:
            head += f" {count} copies (atom·steps/s) |"
            sep += "---|"
        head += " ratio ASE calc (matched) | ratio ASE calc (quickstart) | ratio batched aspirin (matched) |"
        sep += "---|---|---|"
        for count in args.copies:
            head += f" ratio {count} copies batched (matched) |"
            sep += "---|"
        lines += [head, sep]
        by_key = {(r["model"], r["dtype"]): r for r in molequi if r.get("mode", "eager") == "eager"}
        for row in mace:
            matched = by_key.get((MATCHED[row["model"]], row["dtype"]), {})
            quick = by_key.get(("molequi-quickstart", row["dtype"]), {})
            line = f"| {row['model']} | {row['dtype']} | {fmt(row['ase_aspirin_steps_per_s'])} |"
            for count in args.copies:
                peak = row.get(f"ase_{count}_peak_gb")
                line += f" {fmt(row.get(f'ase_{count}_atom_steps_per_s'))}" + (f" ({peak:.1f} GB)" if peak else "") + " |"
            base = row["ase_aspirin_steps_per_s"]
            line += f" {ratio(matched.get('ase_aspirin_steps_per_s'), base)} | {ratio(quick.get('ase_aspirin_steps_per_s'), base)} |"
            line += f" {ratio(matched.get('batched_aspirin_steps_per_s'), base)} |"
            for count in args.copies:
                line += f" {ratio(matched.get(f'batched_{count}_atom_steps_per_s'), row.get(f'ase_{count}_atom_steps_per_s'))} |"
            lines.append(line)
    lines += ["", "Matched sizes: molequi-64x0e ↔ MACE 64x0e, molequi-128x1o ↔ MACE 128x0e+128x1o "
              "(both 2 layers, correlation 3, 5 Å cutoff). molequi-quickstart = molequi's default ModelConfig."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    parser.add_argument("--copies", nargs="*", type=int, default=[128, 1024], help="aspirin copies for the scale runs")
    parser.add_argument("--seconds", type=float, default=5.0, help="time per measurement, s")
    parser.add_argument("--molequi-models", nargs="*", default=list(MOLEQUI_CONFIGS), choices=list(MOLEQUI_CONFIGS))
    parser.add_argument("--mace-models", nargs="*", default=list(MACE_CONFIGS), choices=list(MACE_CONFIGS))
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", default="bench_md", help="output folder")
    parser.add_argument("--modes", nargs="+", default=["eager"], choices=["eager", "compiled", "graphs"],
                        help="molequi evaluation: eager, compiled (torch.compile), graphs (compiled + CUDA graphs, GPU)")
    parser.add_argument("--cpu-time", action="store_true", help="time in CPU seconds of this process (one thread)")
    parser.add_argument("--readme", action="store_true",
                        help="write the eager-vs-compiled table into docs/benchmarks.md (block 'compiled-md')")
    parser.add_argument("--mace-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.mace_worker:
        mace_worker(args)
        return
    if args.cpu_time:
        CLOCK["clock"] = time.process_time
    command = "python scripts/bench_md.py " + " ".join(sys.argv[1:])
    from molequi.utils import machine_info  # here: the MACE venv runs this file without molequi

    info = machine_info(args.device)
    molequi = molequi_rows(args) if args.molequi_models else []
    mace = run_mace(args) if args.mace_models else []
    result = {"machine": info, "command": command, "molequi": molequi, "mace": mace}
    (Path(args.out) / "bench_md.json").write_text(json.dumps(result, indent=1))
    table = report(args, info, molequi, mace, command)
    (Path(args.out) / "bench_md.md").write_text(table)
    print(table)
    if args.readme:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from readme_section import update_readme_section

        update_readme_section("compiled-md", compiled_table(args, info, molequi, command))


if __name__ == "__main__":
    main()
