"""The pictures of README and docs/, from a small run of each command (CPU, a few minutes, fixed seeds).

    python scripts/make_figures.py [--rmd17 DIR] [--out scripts/figures] [--epochs 40]

1. trains a small model on 400 rMD17 ethanol structures (``molequi.training.train``):
   ``learning_curve.png``, and ``parity.png`` on 1000 test structures (``evaluate_model``);
2. runs 16 NVE replicas of ethanol with that model for 1 ps (``BatchedMD`` + ``MDOutput``):
   ``md_energy.png``;
3. screens 2,000 MOSES test molecules without a model (filters and QED, no 3D):
   ``screen_histograms.png``, the histograms of ``report.html``.

The pictures are small PNGs (about 100 dpi) committed under ``scripts/figures/``, with
``figures.json`` naming the machine and the settings. Work files go to ``runs/figures``.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RMD17 = ROOT.parent / "shared" / "data" / "rmd17"


def train_and_evaluate(rmd17: Path, work: Path, out: Path, epochs: int) -> Path:
    from molequi.data import read_structures
    from molequi.models import load_model
    from molequi.training import load_config, train
    from molequi.training.evaluate import evaluate_model

    train_file, test_file = rmd17 / "rmd17_ethanol_train_01.npz", rmd17 / "rmd17_ethanol_test_01.npz"
    for path in (train_file, test_file):
        if not path.is_file():
            sys.exit(f"make_figures: needs {path} (rMD17 ethanol; pass --rmd17 DIR)")
    import ase.io

    subset = work / "ethanol_train_400.extxyz"
    ase.io.write(subset, read_structures(str(train_file))[:400])
    config = load_config(None, {
        "max_epochs": epochs, "device": "cpu", "dtype": "float32", "seed": 0, "batch_size": 8, "validation": 50,
        "learning_rate": 0.01, "progress": False, "model.channels": 16, "model.l_max": 1, "model.num_layers": 2,
        "model.correlation": 2, "model.cutoff": 4.5, "model.edge_l_max": None,
    })
    shutil.rmtree(work / "train", ignore_errors=True)  # a fresh run each time
    result = train(config, str(subset), work / "train", log=lambda message: print("  " + message))
    shutil.copyfile(result.files["learning_curve"], out / "learning_curve.png")
    model = load_model(result.model_path, device="cpu")
    evaluate_model(model, read_structures(str(test_file)), batch_size=32, device="cpu", plot=out / "parity.png",
                   source=str(test_file))
    return result.model_path


def molecular_dynamics(model_path: Path, rmd17: Path, work: Path, out: Path) -> None:
    from molequi.data import read_structures
    from molequi.md import BatchedMD, MDOutput, Potential, load_models, state_from_atoms

    start = read_structures(str(rmd17 / "rmd17_ethanol_test_01.npz"))[0]
    start.calc = None
    state = state_from_atoms([start.copy() for _ in range(16)], temperature=300.0, seed=0)
    engine = BatchedMD(Potential(load_models([str(model_path)], dtype="float64")), state, dt=0.5, ensemble="nve")
    folder = work / "md"
    shutil.rmtree(folder, ignore_errors=True)
    output = MDOutput(folder, 16, traj_every=0, log_every=20, restart_every=0)
    output(engine)
    engine.run(2000, [output])
    output.close()
    shutil.copyfile(folder / "energy.png", out / "md_energy.png")


def screening(work: Path, out: Path, n: int) -> None:
    from molequi.search import screen
    from molequi.search.io import builtin_pool_files
    from molequi.search.report import histograms_figure
    from molequi.training.plots import save_figure

    source = builtin_pool_files("moses:test")[0]
    candidates = work / f"moses_test_{n}.csv"
    with gzip.open(source, "rt") as handle:
        candidates.write_text("".join(itertools.islice(handle, n + 1)))
    result = screen(candidates, objective="qed:max", embed_3d=False, top=50, out=work / "screen", overwrite=True,
                    progress=False)
    figure = histograms_figure(result.samples, result.coverage, result.n_read, result.units, result.settings,
                               columns=4)
    save_figure(figure, out / "screen_histograms.png")


def shrink_png(path: Path, colours: int = 128) -> None:
    """Quantise a PNG to a palette of ``colours`` (a third of the bytes for line plots, no
    visible change), so that the committed pictures stay small."""
    from PIL import Image

    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=colours, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rmd17", type=Path, default=RMD17, help="folder of the rMD17 .npz files")
    parser.add_argument("--out", type=Path, default=ROOT / "scripts" / "figures")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "figures")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--molecules", type=int, default=2000)
    args = parser.parse_args()

    import torch

    from molequi.utils import machine_info

    torch.set_num_threads(1)
    torch.manual_seed(0)
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print("training and evaluating ...")
    model = train_and_evaluate(args.rmd17, args.work, args.out, args.epochs)
    print("molecular dynamics ...")
    molecular_dynamics(model, args.rmd17, args.work, args.out)
    print("screening ...")
    screening(args.work, args.out, args.molecules)
    record = {
        "command": "python scripts/make_figures.py " + " ".join(sys.argv[1:]),
        "settings": {"epochs": args.epochs, "train_structures": 400, "md_replicas": 16, "md_steps": 2000,
                     "md_dt_fs": 0.5, "screen_molecules": args.molecules},
        "wall_s": round(time.perf_counter() - started, 1),
        "machine": machine_info("cpu"),
    }
    (args.out / "figures.json").write_text(json.dumps(record, indent=2) + "\n")
    for path in sorted(args.out.glob("*.png")):
        shrink_png(path)
        print(f"{path.relative_to(ROOT)}: {path.stat().st_size / 1024:.0f} kB")


if __name__ == "__main__":
    main()
