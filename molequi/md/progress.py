"""What an MD run shows while it runs and when it ends: progress and a summary of the systems.

On a terminal a tqdm bar (steps/s, ns/day); in a log file (stderr not a terminal) a whole
line every ``every_s`` seconds, with the ETA. At the end one summary of the energy drift for
many systems (replicas) instead of a line per system.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

import numpy as np

from molequi.progress import ProgressLines, is_terminal

PER_SYSTEM_LINES = 8
"""Up to this many systems the summary prints a line per system; above, one summary."""


class MDProgress:
    """Progress of ``total`` steps (of ``dt`` fs each); ``initial`` steps were done before a resume."""

    def __init__(self, total: int, dt: float, disable: bool = False, initial: int = 0, every_s: float = 30.0,
                 label: str = "md") -> None:
        self.dt, self.count, self.start, self.last = dt, 0, time.perf_counter(), 0.0
        self.bar = self.lines = None
        if disable:
            return
        if is_terminal():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, desc=label)
        else:
            self.lines = ProgressLines(label, total, "steps", every_s=every_s, initial=initial)

    def rate(self) -> str:
        """``"12.3 steps/s, 0.532 ns/day"`` (this session)."""
        return f"{self._steps_per_s():.1f} steps/s, {self.ns_per_day()}"

    def ns_per_day(self) -> str:
        return f"{self._steps_per_s() * self.dt * 86400 / 1e6:.3f} ns/day"

    def _steps_per_s(self) -> float:
        elapsed = time.perf_counter() - self.start
        return self.count / elapsed if elapsed > 0 else 0.0

    def __call__(self, n: int = 1) -> None:
        self.count += n
        if self.bar is not None:
            self.bar.update(n)
            now = time.perf_counter()
            if now - self.last > 1.0:
                self.bar.set_postfix_str(self.rate())
                self.last = now
        elif self.lines is not None:
            done = self.lines.initial + self.count
            if time.monotonic() - self.lines.last >= self.lines.every_s:
                self.lines.update(done, extra=self.ns_per_day())
            else:
                self.lines.done = done

    def write(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, file=sys.stderr if self.lines is not None else sys.stdout, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.lines is not None:
            self.lines.extra = self.ns_per_day()
            self.lines.close()


def drift_per_ps(record: dict) -> float:
    """Energy drift of a system's record, meV/atom/ps: (E_end − E_start) / (n_atoms · duration),
    positive when the total energy rose (NaN without a duration)."""
    duration_ps = (record.get("duration_fs") or 0.0) / 1000.0
    return 1000.0 * record["drift"] / record["n_atoms"] / duration_ps if duration_ps > 0 else float("nan")


DRIFT_CONVENTION = "(E_end − E_start)/(n_atoms · t), meV/atom/ps, + when the energy rose"
"""How the printed energy drift is defined (the same as energy.png's)."""


def drift_label(ensemble: str) -> str:
    """What the change of the total energy over a run is called in ``ensemble``."""
    from molequi.md.ensembles import ENSEMBLES

    thermostatted = ensemble in ENSEMBLES and ENSEMBLES[ensemble].thermostatted
    return "total-energy change (thermostatted, not a drift)" if thermostatted else "energy drift"


def summary_lines(summary: Sequence[dict], ensemble: str) -> list[str]:
    """The end-of-run report: one energy drift per system, :func:`drift_per_ps` (meV/atom/ps),
    and the largest |E − E_start|/n_atoms (meV/atom, the fluctuation); a line per system up to
    :data:`PER_SYSTEM_LINES` systems, else their mean ± std, extremes and the stopped systems."""
    label = drift_label(ensemble)
    running = [r for r in summary if "stopped" not in r]
    stopped = [r for r in summary if "stopped" in r]
    if len(summary) <= PER_SYSTEM_LINES:
        lines = [f"{label} per system, {DRIFT_CONVENTION}:"]
        for record in summary:
            if "stopped" in record:
                lines.append(f"  {record['stopped']}")
                continue
            n = record["n_atoms"]
            lines.append(f"  system {record['system']}: {label} {drift_per_ps(record):+.4g} meV/atom/ps over "
                         f"{(record.get('duration_fs') or 0.0) / 1000:g} ps (largest |E − E_start| "
                         f"{1000 * record['max_deviation'] / n:.4f} meV/atom)")
        return lines
    lines = [f"{len(summary)} systems, {len(running)} ran to the end, {len(stopped)} stopped early"]
    if running:
        drift = np.array([drift_per_ps(r) for r in running])
        worst = np.array([1000 * r["max_deviation"] / r["n_atoms"] for r in running])
        spread = f" ± {np.std(drift, ddof=1):.4g}" if len(drift) > 1 else ""
        lines.append(f"  {label}, {DRIFT_CONVENTION}: mean {np.mean(drift):+.4g}{spread} meV/atom/ps, "
                     f"range {drift.min():+.4g} … {drift.max():+.4g} meV/atom/ps")
        largest = running[int(np.argmax(worst))]["system"]
        lines.append(f"  largest |E − E_start|/n_atoms: median {np.median(worst):.4f} meV/atom, "
                     f"largest {worst.max():.4f} meV/atom (system {largest})")
    for record in stopped[:5]:
        lines.append(f"  {record['stopped']}")
    if len(stopped) > 5:
        lines.append(f"  … and {len(stopped) - 5} more stopped systems (see the logs)")
    return lines
