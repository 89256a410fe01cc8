#!/usr/bin/env python
"""What the pull towards the pretrained weights (``--anchor W``) does to a fine-tuned model (CPU).

The learning loop from a pretrained model (``molequi learn --init organic-xtb``) labels a few
frames near where its MD runs. Fine-tuning on them can fix the forces there while changing the
energies elsewhere. This benchmark holds the labels fixed and varies the anchor: for each molecule,
seed and way the loop's MD starts (``start``: the start structure; ``rotamers``: random rotamers
of it), the labels of the loop's last round (``scripts/bench_learning.py``'s loop from
``--pretrained``, unanchored, reused from its ``--out``) are fine-tuned from ``--pretrained``
once per anchor W (as ``molequi train --init NAME --anchor W``, the loop's epochs, learning rate
and seed), the reference energies refitted on the labels as the loop does, and scored on
``bench_learning``'s shifted test (MD frames at 300, 600 and 1000 K, torsion scans, stretched
bonds). "refit only" is the pretrained model itself with that refit: no weight moved.

    python scripts/bench_anchor.py --molecules ethanol aspirin --readme   # ~15 s per fine-tune, 1 core

Force errors per component (meV/Å), energy MAE (meV) over the union of the test frames.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import bench_learning as learning  # noqa: E402  (the loop runs, test sets and training settings)


def loop_labels(molecule: str, files, profile: dict, args, seed: int, md_from: str) -> Path:
    """The training file of the last round of the unanchored loop from ``--pretrained`` (run, or
    reused from ``--out``, by ``bench_learning``)."""
    from molequi.learn.settings import DEFAULT_MAX_STD

    committees, _ = learning.loop_committees(molecule, files, profile, args, seed, DEFAULT_MAX_STD,
                                             init=args.pretrained, md_from=md_from, anchor=0.0)
    last = committees[max(profile["labels"])][0]  # round_NNN/member_0/model.molequi
    return last.parent.parent / "train.extxyz"


def fine_tuned(labels: Path, profile: dict, args, seed: int, anchor: float | None) -> Path:
    """``--pretrained`` fine-tuned on ``labels`` with the pull ``anchor`` (None: not trained,
    the pretrained weights), its reference energies refitted on them as the loop refits; cached."""
    from ase.io import read

    from molequi.learn.energies import refit_reference_energies
    from molequi.training import train
    from molequi.training.finetune import resolve_model

    name = "refit_only" if anchor is None else f"anchor_{anchor:g}"
    out = labels.parent / "bench_anchor" / name
    model = out / "model.molequi"
    if model.exists():
        return model
    if out.exists():
        shutil.rmtree(out)
    if anchor is None:
        out.mkdir(parents=True)
        shutil.copy(resolve_model(args.pretrained), model)
    else:
        config = learning.training_config(profile, 1000 * seed, init=args.pretrained, anchor=anchor)
        train(config, str(labels), out, log=lambda message: None)
    refit_reference_energies(model, read(labels, ":"))
    return model


def run(args) -> dict:
    profile = dict(learning.PROFILES["reduced"])
    profile["labels"] = tuple(args.labels)
    results: dict = {}
    for molecule in args.molecules:
        files = learning.molecule_data(molecule, profile, args)
        tests = learning.test_sets(files)
        data = learning.content_digest(path for key, path in sorted(files.items()) if key != "pool")
        for seed in range(args.seeds):
            for md_from in args.md_from:
                labels = loop_labels(molecule, files, profile, args, seed, md_from)
                for anchor in [None, *args.anchors]:
                    started = time.monotonic()
                    model = fine_tuned(labels, profile, args, seed, anchor)
                    row = learning.cached(args, f"{molecule}/anchor/{md_from}/{seed}/{max(args.labels)}/{anchor}",
                                          [model], lambda: learning.shifted_test([model], tests), data)
                    results.setdefault(molecule, {}).setdefault(md_from, {}).setdefault(
                        "refit only" if anchor is None else f"{anchor:g}", []).append(row)
                    learning.log(f"{molecule} seed {seed} MD from {md_from}, anchor {anchor}: energy "
                                 f"{row['energy_mae_meV']:.0f} meV, force mean {row['mean']:.0f}, p99 {row['p99']:.0f} "
                                 f"meV/Å ({time.monotonic() - started:.0f} s)")
    return results


def markdown(results: dict, args, argv) -> str:
    lines = [learning.provenance(argv).replace("bench_learning.py", "bench_anchor.py"), "",
             f"Labels: the last round of the unanchored loop from {args.pretrained} at {max(args.labels)} labels "
             f"(`bench_learning`'s reduced settings), {args.seeds} seed(s); mean ± sd over seeds. Errors on the "
             "shifted test (energy MAE meV; force per component meV/Å).", "",
             "| molecule | loop's MD from | anchor W | energy MAE | force mean | force p99 | 300 K force mean |",
             "|---|---|---|---|---|---|---|"]
    for molecule, by_start in results.items():
        for md_from, by_anchor in by_start.items():
            for anchor, rows in by_anchor.items():
                cells = [learning.cell([row[key] for row in rows]) for key in ("energy_mae_meV", "mean", "p99",
                                                                               "mean_300K")]
                lines.append(f"| {molecule} | {md_from} | {anchor} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--molecules", nargs="+", default=["ethanol", "aspirin"], help="rMD17 molecules")
    parser.add_argument("--seeds", type=int, default=2, help="loop seeds (default 2)")
    parser.add_argument("--labels", type=int, nargs="+", default=[10, 20], metavar="N",
                        help="the loop's label counts (the last is fine-tuned on; default 10 20)")
    parser.add_argument("--anchors", type=float, nargs="+", default=[0.0, 20.0, 200.0], metavar="W",
                        help="anchor weights (default 0 20 200)")
    parser.add_argument("--md-from", nargs="+", default=["start", "rotamers"], choices=("start", "rotamers"),
                        help="the loops' MD starts (default both)")
    parser.add_argument("--pretrained", default="organic-xtb", metavar="NAME", help="the pretrained model")
    parser.add_argument("--data-dir", type=Path, default=learning.DEFAULT_DATA, help="rMD17 .npz directory")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench_learning",
                        help="bench_learning's output folder (its loops and data are reused)")
    parser.add_argument("--readme", action="store_true", help="write the table into docs/benchmarks.md (block anchor)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results = run(args)
    text = markdown(results, args, sys.argv[1:] if argv is None else argv)
    (args.out / "anchor.json").write_text(json.dumps(results, indent=1))
    (args.out / "anchor.md").write_text(text)
    print(text)
    if args.readme:
        from readme_section import update_readme_section

        update_readme_section("anchor", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
