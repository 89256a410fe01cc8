#!/usr/bin/env python
"""Peak memory of training on files of growing size, streamed (``--stream``) and in memory.

Builds training files of each ``--sizes`` count by repeating the frames of ``--source`` (the
organic_xtb training set by default: a byte copy, no parsing), then runs ``molequi train`` on each
for ``--minutes`` of wall-clock time (the first epoch is cut short; memory is what is measured)
and records the child's peak resident memory (``ru_maxrss``) and the time to the first batch.
Writes ``OUT/stream.json`` and, with ``--readme``, the docs/benchmarks.md block ``stream``.

    python scripts/bench_stream.py --sizes 10000 100000 --memory-sizes 10000 --readme
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from molequi.utils import cpu_model

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))  # readme_section


def machine() -> str:
    """CPU model, core count and memory of this machine."""
    try:
        memory = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal")) / 1e6
    except (OSError, StopIteration):
        memory = float("nan")
    return f"{cpu_model()}, {os.cpu_count()} cores, {memory:.0f} GB RAM"


def build_file(source: Path, count: int, path: Path) -> Path:
    """``count`` frames: the frames of ``source`` repeated (byte copies) until there are enough."""
    from molequi.data.stream import frame_offsets

    offsets, _ = frame_offsets(source)
    data = source.read_bytes()
    ends = list(offsets[1:]) + [len(data)]
    with open(path, "wb") as out:
        written = 0
        while written < count:
            for start, end in zip(offsets, ends):
                if written == count:
                    break
                out.write(data[start:end])
                written += 1
    return path


def peak_rss_of(command: list[str]) -> tuple[float, float, int]:
    """Peak resident memory (GB) and wall seconds of a child process, and its exit code."""
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - started
    # ru_maxrss of RUSAGE_CHILDREN is the largest child so far (kB on Linux): run the sizes in ascending order
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6
    if done.returncode != 0:
        print(done.stderr[-2000:])
    return peak, wall, done.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=REPO / "data" / "organic_xtb" / "train.extxyz")
    parser.add_argument("--sizes", nargs="+", type=int, default=[10_000, 100_000])
    parser.add_argument("--minutes", type=float, default=1.0, help="training wall-clock budget per run")
    parser.add_argument("--memory-sizes", nargs="*", type=int, default=[10_000],
                        help="sizes also trained in memory, for comparison (each holds every graph in RAM)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench_stream")
    parser.add_argument("--readme", action="store_true")
    args = parser.parse_args()
    if not args.source.is_file():
        sys.exit(f"{args.source}: build it with python datasets/organic_xtb.py --out data/organic_xtb")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    # memory runs after stream runs: ru_maxrss only grows, and the in-memory runs are the larger
    for mode, sizes in (("stream", args.sizes), ("memory", args.memory_sizes)):
        for size in sorted(sizes):
            data = args.out / f"train_{size}.extxyz"
            if not data.is_file():
                build_file(args.source, size, data)
            command = ["molequi", "train", "--data", str(data), "--out", str(args.out / f"run_{mode}_{size}"),
                       "--overwrite", "--max-minutes", str(args.minutes), "--no-progress", "--allow-outliers",
                       "--channels", "32", "--l-max", "0", "--edge-l-max", "1", "--validation", "200"]
            if mode == "stream":
                command = [c for c in command if c != "--allow-outliers"] + ["--stream"]
            peak, wall, code = peak_rss_of(command)
            rows.append({"mode": mode, "structures": size, "file_MB": round(data.stat().st_size / 1e6),
                         "peak_rss_GB": round(peak, 2), "wall_s": round(wall, 1), "exit": code})
            print(rows[-1], flush=True)
    (args.out / "stream.json").write_text(json.dumps(rows, indent=1))
    lines = [f"Machine: {machine()}. Command: `python scripts/bench_stream.py {' '.join(sys.argv[1:])}`; peak resident memory of "
             f"`molequi train` ({args.minutes} min budget each, 32×0e), largest child so far.", "",
             "| mode | structures | file (MB) | peak RSS (GB) | wall (s) |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['mode']} | {r['structures']:,} | {r['file_MB']} | {r['peak_rss_GB']:.2f} | {r['wall_s']:.0f} |"
              for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.readme:
        from readme_section import update_readme_section

        update_readme_section("stream", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
