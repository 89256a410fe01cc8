#!/usr/bin/env python
"""Throughput of the molequi screening pipeline, stage by stage and end to end.

Measures molecules/s on a sample of MOSES SMILES for: read+standardise,
filters, 3D (ETKDGv3 + MMFF), scoring (a synthetic torch committee, or trained
models with --model) and the whole ``screen()`` with 1 and N Dask workers.
Writes a JSON file and a Markdown table (naming the machine and the command)
beside it, and prints the table.

    python scripts/bench_screen.py --n 2000                       # runs/bench_screen/bench_screen.{json,md}
    python scripts/bench_screen.py --n 2000 --device cuda --model runs/quickstart/gap_model/model.molequi \
        --out runs/bench_screen_gpu/bench_screen.json

Targets: filters >= 300 mol/s per core, end to end (with 3D) >= 20 mol/s per core.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from molequi.utils import machine_info


class TorchCommittee:
    """Synthetic committee scorer: a smooth function of interatomic distances, run in torch.

    Costs roughly like a small model (all-pairs distances per molecule, padded
    batch) so that the CPU/GPU scoring path and batching are exercised.
    Predicts ``gap`` (eV) and ``energy`` (eV); ``members`` perturbed copies.
    """

    name = "bench-torch-committee"
    properties = ["gap", "energy"]
    species = None

    def __init__(self, device: str = "cpu", members: int = 4):
        import torch

        self.torch, self.device, self.members = torch, torch.device(device), members
        self.scale = torch.linspace(0.9, 1.1, members, device=self.device)

    def predict(self, atoms):
        torch = self.torch
        n_max = max(len(a) for a in atoms)
        pos = torch.zeros(len(atoms), n_max, 3, dtype=torch.float64)
        z = torch.zeros(len(atoms), n_max, dtype=torch.float64)
        for i, a in enumerate(atoms):
            pos[i, : len(a)] = torch.from_numpy(a.positions)
            z[i, : len(a)] = torch.from_numpy(a.numbers.astype(np.float64))
        pos, z = pos.to(self.device), z.to(self.device)
        r = torch.cdist(pos, pos) + torch.eye(n_max, device=self.device) * 1e3
        pair = (z[:, :, None] * z[:, None, :]) * torch.exp(-r[None] * self.scale[:, None, None, None])
        energy = -pair.sum(dim=(2, 3)) / 2.0
        gap = 10.0 / (1.0 + 0.01 * pair.sum(dim=(2, 3)) ** 0.5)
        return {"gap": gap.cpu().numpy(), "energy": energy.cpu().numpy()}


def sample_smiles(pool: str, n: int, path: Path) -> Path:
    """First ``n`` SMILES of a built-in pool written to a .smi file (MOSES files are shuffled)."""
    from molequi.search.io import CandidateSource

    with open(path, "w") as handle:
        for c in itertools.islice(CandidateSource(pool), n):
            handle.write(f"{c.smiles} {c.id}\n")
    return path


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("nan")


def bench_stages(path: Path, device: str, model_paths: list[str], batch_size: int) -> tuple[dict, dict]:
    """Single-core throughput of each stage (in this process)."""
    from molequi.search.config import StageConfig
    from molequi.search.conformers import embed_molecule, mol_to_atoms
    from molequi.search.filters import filter_values
    from molequi.search.io import CandidateSource
    from molequi.search.score import score_atoms
    from molequi.search.standardize import standardize

    scorers = load_scorers(model_paths, device)
    species = getattr(scorers[0], "species", None)  # as screen() does: only elements the model knows
    cfg = StageConfig(allowed_elements=frozenset(species) if species else None)
    filter_values(standardize("CCO").mol, cfg)  # load SA table and alert catalogues once
    results: dict[str, dict] = {}

    t, c = time.perf_counter(), time.process_time()
    std = [standardize(cand.smiles) for cand in CandidateSource(str(path))]
    results["read+standardise"] = {"n": len(std), "s": time.perf_counter() - t, "cpu_s": time.process_time() - c}
    mols = [s.mol for s in std if s.mol is not None]
    smiles = [s.smiles for s in std if s.mol is not None]

    results["filters (cascade, median of 3)"], passed = time_filters(smiles, cfg)
    results["filters (--all-values, median of 3)"], _ = time_filters(
        smiles, dataclasses.replace(cfg, all_values=True))

    results.update(filter_breakdown(smiles, cfg))

    t, c = time.perf_counter(), time.process_time()
    embedded = [embed_molecule(m) for m in passed]
    results["3D (ETKDGv3+MMFF)"] = {"n": len(passed), "s": time.perf_counter() - t, "cpu_s": time.process_time() - c,
                                   "failed": sum(e.mol is None for e in embedded)}
    atoms = [mol_to_atoms(e.mol) for e in embedded if e.mol is not None]

    import torch

    score_atoms(scorers, atoms[:batch_size], batch_size)  # warm-up (CUDA context, JIT)
    t, c = time.perf_counter(), time.process_time()
    score_atoms(scorers, atoms, batch_size)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    name = scorers[0].name if hasattr(scorers[0], "name") else "model"
    results[f"scoring ({name}, {device})"] = {
        "n": len(atoms), "s": time.perf_counter() - t, "cpu_s": time.process_time() - c,
        "where": f"{torch.get_num_threads()} torch threads" if device == "cpu" else device}
    for r in results.values():
        r["mol_per_s"] = rate(r["n"], r["s"])
        r["mol_per_cpu_s"] = rate(r["n"], r["cpu_s"])
    return results, {"n_standardised": len(mols), "n_passed_filters": len(passed), "n_3d": len(atoms)}


def time_filters(smiles: list[str], cfg) -> tuple[dict, list]:
    """Median of 3 timings of the filter stage on freshly parsed molecules, and the ones that pass.

    The stage is short (seconds): the median keeps a neighbour's burst on a shared machine out
    of it.  Molecules are parsed again for every run because RDKit caches logP & co. on them.
    """
    from rdkit import Chem

    from molequi.search.filters import screen_values

    runs = []
    for _ in range(3):
        fresh = [Chem.MolFromSmiles(s) for s in smiles]
        t, c = time.perf_counter(), time.process_time()
        passed = [m for m in fresh if not screen_values(m, cfg)[1]]
        runs.append({"n": len(fresh), "s": time.perf_counter() - t, "cpu_s": time.process_time() - c})
    return sorted(runs, key=lambda r: r["s"])[1], passed


def filter_breakdown(smiles: list[str], cfg) -> dict[str, dict]:
    """CPU time of each expensive piece of the filter stage, one at a time (where the time goes)."""
    from rdkit import Chem
    from rdkit.Chem import QED
    from rdkit.Chem.MolStandardize import rdMolStandardize

    from molequi.search.alerts import alert_catalog, structural_alerts
    from molequi.search.filters import qed, sa_score

    # each piece timed on every molecule, alone: what it would cost if the cascade did not skip it
    pieces = {"  piece: SA score": sa_score, "  piece: QED (molequi)": qed, "  piece: QED (RDKit QED.qed)": QED.qed}
    pieces |= {f"  piece: alerts '{name}'": (lambda m, n=name: structural_alerts(m, (n,))) for name in cfg.alerts}
    if "pains" in cfg.alerts:  # what the fingerprint prescreen saves
        pieces["  piece: PAINS through FilterCatalog (not used)"] = alert_catalog("pains").GetMatches
    pieces |= {"  standardise: Cleanup": rdMolStandardize.Cleanup, "  standardise: InChIKey": Chem.MolToInchiKey}
    results = {}
    for name, function in pieces.items():
        runs = []
        for _ in range(3):  # median of 3, each on freshly parsed molecules (RDKit caches on them)
            fresh = [Chem.MolFromSmiles(s) for s in smiles]
            c = time.process_time()
            for mol in fresh:
                function(mol)
            runs.append(time.process_time() - c)
        cpu = sorted(runs)[1]
        results[name] = {"n": len(smiles), "s": cpu, "cpu_s": cpu, "ms_per_mol": 1e3 * cpu / max(len(smiles), 1)}
    return results


def load_scorers(model_paths: list[str], device: str) -> list:
    """Real models through the core's factory when given, else the synthetic committee."""
    if model_paths:
        from molequi.search.models import load_scorers as factory

        return factory(model_paths, device)
    return [TorchCommittee(device)]


def bench_end_to_end(path: Path, workers: int, device: str, model_paths: list[str],
                     chunk_size: int, objective: str) -> dict:
    """Whole ``screen()`` run (incl. report) with ``workers`` Dask workers (1 = in-process)."""
    from molequi.search import screen

    out = Path(tempfile.mkdtemp(prefix=f"bench_screen_w{workers}_"))
    try:
        scorers = load_scorers(model_paths, device)
        t = time.perf_counter()
        result = screen(path, scorers=scorers, objective=objective, workers=workers,
                        chunk_size=chunk_size, out=out, progress=False)
        seconds = time.perf_counter() - t
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return {"workers": workers, "n": result.n_read, "s": seconds, "mol_per_s": rate(result.n_read, seconds),
            "n_passed": result.n_passed}


def cluster_startup(workers: int) -> float:
    """Seconds to start and stop a LocalCluster with ``workers`` processes (fixed cost per run)."""
    from molequi.search.parallel import dask_client

    t = time.perf_counter()
    with dask_client(workers, None) as client:
        client.submit(len, [1]).result()  # workers up and importing
        client.run(lambda: __import__("molequi.search.stage"))  # what a chunk needs
    return time.perf_counter() - t


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cpu_count']} CPUs, GPU: {m['gpu'] or 'none'} "
             f"(scoring device {report['device']}); load average at start {m['loadavg_1min']}; "
             f"sample: {report['n']} SMILES from {report['pool']}.",
             f"Command: `{report.get('command', 'python scripts/bench_screen.py')}`",
             "", "| stage | molecules | wall s | molecules/s (wall) | molecules/CPU-s |",
             "|---|---:|---:|---:|---:|"]
    for name, r in report["stages"].items():
        lines.append(f"| {name} ({r.get('where', '1 core')}) | {r['n']} | {r['s']:.2f} | {r['mol_per_s']:.1f} | {r['mol_per_cpu_s']:.1f} |")
    for r in report["end_to_end"]:
        lines.append(f"| end to end, {r['workers']} worker(s) | {r['n']} | {r['s']:.2f} | {r['mol_per_s']:.1f} | |")
    if report.get("speedup") is not None:
        lines += ["", f"Speed-up 1 -> {report['end_to_end'][-1]['workers']} Dask workers: "
                  f"{report['speedup']:.2f}x end to end; LocalCluster start-up "
                  f"{report['cluster_startup_s']:.1f} s; without start-up {report['speedup_no_startup']:.2f}x."]
    lines += ["", "Targets: filters >= 300 mol/s per core; end to end incl. 3D >= 20 mol/s per core."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="number of SMILES in the sample")
    parser.add_argument("--pool", default="moses:test", help="built-in pool to sample from")
    parser.add_argument("--workers", type=int, default=2, help="Dask workers for the speed-up run")
    parser.add_argument("--device", default="cpu", help="scoring device: cpu or cuda")
    parser.add_argument("--model", action="append", default=[], help="real model(s) instead of the synthetic scorer")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--chunk-size", type=int, default=250)
    parser.add_argument("--objective", default="gap:max")
    parser.add_argument("--skip-e2e", action="store_true", help="stage timings only")
    parser.add_argument("--out", default="runs/bench_screen/bench_screen.json",
                        help="JSON output; the Markdown table is written beside it (.md)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = sample_smiles(args.pool, args.n, Path(tmp) / "sample.smi")
        stages, counts = bench_stages(path, args.device, args.model, args.batch_size)
        report = {"machine": machine_info(args.device), "device": args.device, "pool": args.pool, "n": args.n,
                  "stages": stages, "counts": counts, "end_to_end": [], "speedup": None}
        if not args.skip_e2e:
            for workers in (1, args.workers):
                report["end_to_end"].append(bench_end_to_end(
                    path, workers, args.device, args.model, args.chunk_size, args.objective))
            one, many = report["end_to_end"]
            report["cluster_startup_s"] = cluster_startup(args.workers)
            report["speedup"] = one["s"] / many["s"]
            report["speedup_no_startup"] = one["s"] / max(many["s"] - report["cluster_startup_s"], 1e-9)
    report["command"] = "python " + " ".join(shlex.quote(arg) for arg in sys.argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    out.with_suffix(".md").write_text(markdown(report) + "\n")
    print(markdown(report))


if __name__ == "__main__":
    main()
