#!/usr/bin/env python
"""Training-recipe and architecture variants of ``molequi train`` on one rMD17 molecule, at the
same wall-clock budget (or the same number of epochs): which change moves the test errors.

Each variant is ``NAME=KEY:VALUE,KEY:VALUE`` of training-config keys (``model.`` prefix for
architecture keys), applied over the defaults; ``defaults`` is always run. Variants run
``--parallel`` at a time (default: all at once, one thread each) so that they share the same
machine load: on a shared machine that is fairer than one after the other, and the CPU seconds
of each run are recorded beside it. Every run trains on the same 950 + 50 structures of
``rmd17_<mol>_train_01.npz`` and is tested on the 1000 structures of ``rmd17_<mol>_test_01.npz``.

    python scripts/bench_recipe.py --molecule ethanol --minutes 5 \\
        --variant species_product=model.species_product:true --variant l_max2=model.l_max:2 \\
        --variant correlation3=model.correlation:3 --readme

Writes ``OUT/<molecule>_<budget>.json`` and ``.md``; ``--readme`` puts every result file of OUT
into the docs/benchmarks.md block ``--block`` (default ``recipe``; one block per OUT folder keeps the
screens of different defaults apart).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "rmd17"


def parse_variant(text: str) -> tuple[str, dict]:
    """``NAME=KEY:VALUE,...`` -> (name, nested config overrides); values are read as YAML."""
    name, _, settings = text.partition("=")
    if not name or not settings:
        raise SystemExit(f"error: a variant is NAME=KEY:VALUE[,KEY:VALUE...], got {text!r}")
    config: dict = {}
    for item in settings.split(","):
        key, _, value = item.partition(":")
        target = config
        *parents, leaf = key.strip().split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = yaml.safe_load(value)
    return name, config


def start(name: str, overrides: dict, args, out: Path) -> tuple[subprocess.Popen, dict]:
    run_dir = out / name
    run_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "molequi.cli.main", "train", "--data", str(args.train_file), "--test-data",
               str(args.test_file), "--out", str(run_dir / "run"), "--overwrite", "--validation", "50", "--device", "cpu",
               "--no-progress"]
    command += ["--max-minutes", str(args.minutes)] if args.minutes else ["--max-epochs", str(args.epochs)]
    if overrides:
        config = run_dir / "variant.yaml"
        config.write_text(yaml.safe_dump(overrides))
        command += ["--config", str(config)]
    # a wrapper measures each run's own CPU seconds (the runs overlap, so RUSAGE_CHILDREN cannot)
    wrapped = [sys.executable, __file__, "--measure", str(run_dir / "cpu.json"), "--", *command]
    log = open(run_dir / "train.log", "w")
    process = subprocess.Popen(wrapped, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    return process, {"name": name, "overrides": overrides, "command": shlex.join(command), "load_before": os.getloadavg()[0]}


def measure(cpu_file: str, command: list[str]) -> int:
    """(Wrapper.) Run ``command``; write its wall and CPU seconds to ``cpu_file``."""
    started = time.monotonic()
    code = subprocess.run(command).returncode
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    Path(cpu_file).write_text(json.dumps({"wall_s": round(time.monotonic() - started, 1),
                                          "cpu_s": round(usage.ru_utime + usage.ru_stime, 1), "returncode": code}))
    return code


def finish(process: subprocess.Popen, record: dict, out: Path) -> dict:
    process.wait()
    run_dir = out / record["name"]
    record.update(json.loads((run_dir / "cpu.json").read_text()), load_after=os.getloadavg()[0])
    if record["returncode"]:
        record["error"] = f"molequi train exited with {record['returncode']} (see {run_dir / 'train.log'})"
        return record
    from molequi.models import read_header

    metrics = json.loads((run_dir / "run" / "test_metrics.json").read_text())
    record.update(forces_mae_meV_per_A=metrics["forces_mae_meV_per_A"], energy_mae_meV=metrics["energy_mae_meV"],
                  epochs=read_header(run_dir / "run" / "model.molequi")["extra"].get("epochs"))
    return record


def markdown(reports: list[dict]) -> str:
    lines = ["Variants of `molequi train` over its defaults (`KEY: VALUE` of the training config; `model.` keys are "
             "architecture), trained side by side at the same load on rMD17 split 01 (950 + 50 structures), tested "
             "on the 1000 test structures. F: force MAE per component, meV/Å; E: energy MAE, meV; ratios to the "
             "defaults of the same batch.", "",
             "| molecule | budget | variant | F | E | F ratio | E ratio | epochs | CPU s | load |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for report in reports:
        base = next(r for r in report["runs"] if r["name"] == "defaults")
        for run in report["runs"]:
            if "error" in run:
                lines.append(f"| {report['molecule']} | {report['budget']} | {run['name']} | failed | | | | | | |")
                continue
            label = "defaults" if not run["overrides"] else ", ".join(
                f"{k}: {v}" for k, v in _flatten(run["overrides"]).items())
            lines.append(
                f"| {report['molecule']} | {report['budget']} | {label} | {run['forces_mae_meV_per_A']:.1f} | "
                f"{run['energy_mae_meV']:.1f} | {run['forces_mae_meV_per_A'] / base['forces_mae_meV_per_A']:.2f} | "
                f"{run['energy_mae_meV'] / base['energy_mae_meV']:.2f} | {run['epochs']} | {run['cpu_s']:.0f} | "
                f"{run['load_before']:.1f}–{run['load_after']:.1f} |")
    machines = sorted({r["machine"]["cpu"] for r in reports})
    lines += ["", f"Machine: {', '.join(machines)}, one torch thread per run. Commands: "
              + "; ".join(f"`{r['command']}`" for r in reports)]
    return "\n".join(lines) + "\n"


def _flatten(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--measure":
        return measure(argv[1], argv[3:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--molecule", default="ethanol")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, default=None, help="wall-clock budget of every run (default: 5)")
    budget.add_argument("--epochs", type=int, default=None, help="the same number of epochs for every run instead")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=KEY:VALUE,...")
    parser.add_argument("--parallel", type=int, default=0, help="runs at once (0 = all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-dir", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_recipe")
    parser.add_argument("--readme", action="store_true", help="write the table of every result in OUT into docs/benchmarks.md")
    parser.add_argument("--block", default="recipe", help="the docs/benchmarks.md block --readme writes (one per OUT folder)")
    parser.add_argument("--render", action="store_true", help="only rewrite the table (and docs/benchmarks.md) from OUT's JSON files")
    args = parser.parse_args(argv)
    if not args.render:
        if args.minutes is None and args.epochs is None:
            args.minutes = 5.0
        run(args, shlex.join(["python", "scripts/bench_recipe.py", *[a for a in argv if a != "--readme"]]))
    reports = [json.loads(p.read_text()) for p in sorted(args.out.glob("*.json"))]
    text = markdown(reports)
    print(text)
    if args.readme:
        sys.path.insert(0, str(ROOT / "scripts"))
        from readme_section import update_readme_section

        update_readme_section(args.block, text)
    return 0


def run(args, command: str) -> None:
    from molequi.utils import machine_info

    args.train_file = args.data_dir / f"rmd17_{args.molecule}_train_01.npz"
    args.test_file = args.data_dir / f"rmd17_{args.molecule}_test_01.npz"
    if not args.train_file.is_file():
        raise SystemExit(f"error: {args.train_file} not found (rMD17 split 01 files are expected in --data-dir)")
    variants = [("defaults", {})] + [parse_variant(v) for v in args.variant]
    budget = f"{args.minutes:g} min" if args.minutes else f"{args.epochs} epochs"
    out = args.out / f"{args.molecule}_{budget.replace(' ', '')}"
    width = args.parallel or len(variants)
    records = []
    for first in range(0, len(variants), width):
        running = [start(name, overrides, args, out) for name, overrides in variants[first:first + width]]
        records += [finish(process, record, out) for process, record in running]
        for record in records[-len(running):]:
            print(json.dumps(record), flush=True)
    report = {"molecule": args.molecule, "budget": budget, "command": command, "machine": machine_info("cpu"), "runs": records}
    (args.out / f"{args.molecule}_{budget.replace(' ', '')}.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
