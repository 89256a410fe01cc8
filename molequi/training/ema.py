"""Exponential moving average of a model's weights (evaluated and exported instead of the raw weights)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch


class ExponentialMovingAverage:
    """An exponential moving average of a model's parameters (buffers are copied).

    ``factory`` builds an empty model of the same architecture to hold the average (preferred
    over ``copy.deepcopy``, which changes the state_dict keys of e3nn's compiled modules).

    ``decay_n = min(decay, (1 + n) / (10 + n))`` after n updates, so the average follows the
    fast early changes of the weights instead of lagging behind the random initialisation.
    """

    def __init__(self, model: torch.nn.Module, decay: float, factory: Callable[[], torch.nn.Module] | None = None) -> None:
        self.decay = decay
        self.num_updates = 0
        if factory is None:
            self.module = copy.deepcopy(model)
        else:  # a fresh build: e3nn's compiled modules gain extra buffers when deep-copied
            self.module = factory()
            self.module.load_state_dict(model.state_dict())
        self.module.eval()
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.num_updates += 1
        decay = min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))
        # matched by name: a deep copy of e3nn modules need not list parameters in the same order
        parameters = dict(model.named_parameters())
        for name, average in self.module.named_parameters():
            average.lerp_(parameters[name].detach(), 1.0 - decay)
        buffers = dict(model.named_buffers())
        for name, average in self.module.named_buffers():
            if name in buffers:
                average.copy_(buffers[name])

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "num_updates": self.num_updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.num_updates = int(state["num_updates"])
