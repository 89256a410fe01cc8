"""Start-up time of the ``molequi`` command: the median wall time (s) of ``molequi --help`` and of
each ``molequi COMMAND --help`` over several runs, each in a fresh interpreter, and the machine.

    python scripts/bench_cli_start.py                 # this checkout
    python scripts/bench_cli_start.py --root /other/checkout --runs 5

``--help`` parses no data and runs nothing, so its time is the cost of the imports the CLI makes
before it can answer: the figure a user waits for on every typo.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMANDS = ("train", "evaluate", "calibrate", "md", "screen", "learn", "export")


def wall_seconds(argv: list[str], root: Path, python: str) -> float:
    """Wall time (s) of ``python -m molequi.cli.main ARGV`` with ``root`` first on the path."""
    env = dict(os.environ, PYTHONPATH=str(root))
    start = time.perf_counter()
    subprocess.run([python, "-m", "molequi.cli.main", *argv], env=env, cwd=root, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def machine() -> str:
    """Platform, CPU model and the CPUs this process may use."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{platform.platform()}, Python {platform.python_version()}, {cpu}, {usable} usable CPU(s) of {os.cpu_count()}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=REPO, help="checkout whose molequi is timed")
    parser.add_argument("--python", default=sys.executable, help="interpreter (with molequi's dependencies)")
    parser.add_argument("--runs", type=int, default=5, help="runs per command line (the median is reported)")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print(f"checkout: {args.root.resolve()}; median of {args.runs} runs, wall seconds")
    for argv in (["--help"], *([command, "--help"] for command in COMMANDS)):
        times = [wall_seconds(argv, args.root, args.python) for _ in range(args.runs)]
        print(f"  molequi {' '.join(argv):<18} {statistics.median(times):6.2f} s "
              f"(min {min(times):.2f} s, max {max(times):.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
