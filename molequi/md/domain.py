"""The domain watch of an MD run: warn once when a system leaves the domain of its committee's
calibration and, if asked, stop it there, writing its last frame.

A structure is out of the domain when its calibrated per-structure force std (the largest
calibrated per-atom spread, eV/Å) exceeds the threshold ``molequi calibrate`` stored (the 99th
percentile over held-out structures); see :meth:`~molequi.models.uncertainty.committee.Potential.domain_verdict`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from molequi.md.engine import StopEvent
from molequi.md.output import append_frames
from molequi.models.uncertainty import OutOfDomainWarning

OUT_OF_DOMAIN_FILE = "out_of_domain.extxyz"
"""Where a run stopped by the domain watch writes each stopped system's last frame."""


class DomainWatch:
    """An MD observer (call it after each step, after the output writer: the log then shows the
    step a system left the domain, with ``in_domain`` 0).

    Args:
        threshold: the in-domain threshold, eV/Å (None: no verdict, the watch does nothing).
        stop: take a system out of the run at its first out-of-domain step.
        folder: the run's output folder (``out_of_domain.extxyz`` goes there).
    """

    def __init__(self, threshold: float | None, stop: bool, folder: str | Path) -> None:
        self.threshold, self.stop = threshold, stop
        self.path = Path(folder) / OUT_OF_DOMAIN_FILE
        self.first_left: dict[int, int] = {}  # system -> first step out of the domain
        self.warned = False

    def __call__(self, engine) -> None:
        verdict = engine.outputs.get("in_domain")
        if self.threshold is None or verdict is None or engine.state.num_systems == 0:
            return
        out = verdict == 0.0  # NaN (unknown) is not out
        if not bool(out.any()):
            return
        state = engine.state
        sigma = engine.outputs["sigma_forces"]
        indices = torch.nonzero(out).flatten().tolist()
        for k in indices:
            self.first_left.setdefault(int(state.system_ids[k]), state.step)
        if not self.warned:
            self.warned = True
            k = indices[0]
            warnings.warn(
                f"system {int(state.system_ids[k])} left the domain at step {state.step} ({engine.time:g} fs): its "
                f"calibrated force std {float(sigma[k]):.3g} eV/Å exceeds the threshold {self.threshold:.3g} eV/Å "
                "(forces there are extrapolated; later departures are counted in the summary, not warned again)"
                + ("" if self.stop else "; --stop-out-of-domain stops such systems"),
                OutOfDomainWarning, stacklevel=2)
        if self.stop:
            self.write_frames(engine, indices)
            events = [StopEvent(int(state.system_ids[k]), state.step,
                                f"left the domain: calibrated force std {float(sigma[k]):.3g} eV/Å > "
                                f"{self.threshold:.3g} eV/Å (last frame in {OUT_OF_DOMAIN_FILE})") for k in indices]
            engine.stop_systems(out, events)

    def write_frames(self, engine, indices: list[int]) -> None:
        """Append the current frame of the systems ``indices`` to the file, with their calibrated
        force std (``info`` sigma_forces, eV/Å) and the threshold."""
        append_frames(engine, indices, self.path, {k: {"sigma_forces": float(engine.outputs["sigma_forces"][k]),
                                                       "threshold": self.threshold} for k in indices})
