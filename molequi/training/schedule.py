"""A learning-rate schedule that fits the run's budget.

``ReduceLROnPlateau`` reacts to the validation loss and ``CosineAnnealingLR`` counts epochs;
neither knows a wall-clock budget, so a run stopped by ``max_minutes`` ends at whatever learning
rate it had reached. :class:`BudgetCosine` sets the learning rate before every optimizer step
from the fraction of the budget already spent — epochs over ``max_epochs``, or seconds over
``max_minutes``, whichever is further along: the rate stays at ``learning_rate`` and then decays
along a cosine over the last ``decay_fraction`` of the budget, so it reaches
``min_learning_rate`` exactly when the run ends, however fast the machine is. With an EMA of the
weights a constant high rate learns fastest; the final decay then settles the weights.
"""

from __future__ import annotations

import math
import time

import torch


class BudgetCosine:
    """``learning_rate`` until the last ``decay_fraction`` of the run's budget, then a cosine
    decay to ``min_learning_rate`` (``decay_fraction`` 1: a cosine over the whole budget).

    The schedule is a pure function of the progress it is given and of settings that the run's
    config holds, so it checkpoints nothing: a resumed run continues the epoch part where it
    stopped, while the time part counts the new invocation's ``max_minutes`` afresh (like the
    deadline itself, the budget belongs to one invocation).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, learning_rate: float, min_learning_rate: float,
                 max_epochs: int, budget_seconds: float | None, decay_fraction: float = 1.0) -> None:
        self.optimizer = optimizer
        self.learning_rate = float(learning_rate)
        self.min_learning_rate = float(min_learning_rate)
        self.max_epochs = int(max_epochs)
        self.budget_seconds = budget_seconds
        self.decay_fraction = float(decay_fraction)
        self.started = time.monotonic()  # this invocation's start: its max_minutes count from here

    def seconds_spent(self) -> float:
        """Wall seconds since this invocation's schedule was made."""
        return time.monotonic() - self.started

    def fraction(self, epochs_done: float, seconds_spent: float) -> float:
        """The spent fraction of the budget in [0, 1]: ``epochs_done`` (fractional epochs) of
        ``max_epochs`` or ``seconds_spent`` of this invocation's budget, whichever is larger."""
        spent = epochs_done / self.max_epochs
        if self.budget_seconds:
            spent = max(spent, seconds_spent / self.budget_seconds)
        return min(max(spent, 0.0), 1.0)

    def learning_rate_at(self, fraction: float) -> float:
        """The learning rate after ``fraction`` of the budget."""
        start = 1.0 - self.decay_fraction
        if fraction <= start:
            return self.learning_rate
        fraction = (fraction - start) / self.decay_fraction
        return self.min_learning_rate + 0.5 * (self.learning_rate - self.min_learning_rate) * (1.0 + math.cos(math.pi * fraction))

    def update(self, epochs_done: float, seconds_spent: float) -> float:
        """Set every parameter group's learning rate for the next step; returns it."""
        rate = self.learning_rate_at(self.fraction(epochs_done, seconds_spent))
        for group in self.optimizer.param_groups:
            group["lr"] = rate
        return rate

    def state_dict(self) -> dict:
        return {}  # everything comes from the config (checked unchanged on resume) and the progress

    def load_state_dict(self, state: dict) -> None:
        pass
