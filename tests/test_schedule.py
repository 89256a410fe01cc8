"""The budget learning-rate schedule: a cosine over epochs or minutes, whichever ends first."""

from __future__ import annotations

import math

import ase.io
import pytest
import torch

from molequi.training import load_checkpoint, load_config, train
from molequi.training.schedule import BudgetCosine

from test_training import TINY, make_structures


def schedule(max_epochs: int = 10, budget_seconds: float | None = 100.0) -> BudgetCosine:
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(3))], lr=0.5)
    return BudgetCosine(optimizer, 1e-2, 1e-5, max_epochs, budget_seconds)


def test_fraction_is_the_further_of_epochs_and_minutes():
    budget = schedule(max_epochs=10, budget_seconds=100.0)
    assert budget.fraction(2.0, 50.0) == pytest.approx(0.5)  # time is further along
    assert budget.fraction(8.0, 50.0) == pytest.approx(0.8)  # epochs are
    assert budget.fraction(20.0, 500.0) == 1.0  # clipped at the end
    assert schedule(budget_seconds=None).fraction(5.0, 1e9) == pytest.approx(0.5)  # no time budget


def test_rate_decays_from_the_initial_rate_to_the_floor_and_is_set_on_the_optimizer():
    budget = schedule()
    assert budget.learning_rate_at(0.0) == pytest.approx(1e-2)
    assert budget.learning_rate_at(1.0) == pytest.approx(1e-5)
    rates = [budget.learning_rate_at(f) for f in torch.linspace(0, 1, 21).tolist()]
    assert all(a > b for a, b in zip(rates, rates[1:]))
    assert budget.learning_rate_at(0.5) == pytest.approx(0.5 * (1e-2 + 1e-5))
    rate = budget.update(5.0, 0.0)
    assert budget.optimizer.param_groups[0]["lr"] == rate == pytest.approx(budget.learning_rate_at(0.5))


def test_rate_is_constant_until_the_final_decay():
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(3))], lr=0.5)
    budget = BudgetCosine(optimizer, 1e-2, 1e-5, 10, None, decay_fraction=0.2)
    assert budget.learning_rate_at(0.0) == budget.learning_rate_at(0.8) == 1e-2
    assert budget.learning_rate_at(0.9) == pytest.approx(0.5 * (1e-2 + 1e-5))
    assert budget.learning_rate_at(1.0) == pytest.approx(1e-5)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "ethanol_emt.extxyz"
    ase.io.write(path, make_structures(20))
    return path


def config(**overrides):
    return load_config(None, {**TINY, "scheduler": "budget", "decay_fraction": 1.0, **overrides})


@pytest.mark.slow
def test_training_ends_at_the_end_of_the_decay_and_resumes_exactly(data_file, tmp_path):
    quiet = {"log": lambda message: None}
    full = train(config(max_epochs=4), data_file, tmp_path / "full", **quiet)
    rates = [row["lr"] for row in full.history]
    assert all(a > b for a, b in zip(rates, rates[1:])), rates
    steps = math.ceil((20 - TINY["validation"]) / TINY["batch_size"])
    last_fraction = (3 + (steps - 1) / steps) / 4  # the rate is set before each step
    expected = 1e-5 + 0.5 * (0.01 - 1e-5) * (1 + math.cos(math.pi * last_fraction))
    assert rates[-1] == pytest.approx(expected, rel=1e-9)
    # the schedule depends on the progress only: interrupted after 2 epochs and resumed, the run is exact
    def interrupt_after_epoch_2(message: str) -> None:
        if message.startswith("epoch    2"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config(max_epochs=4), data_file, tmp_path / "split", log=interrupt_after_epoch_2)
    resumed = train(config(max_epochs=4), data_file, tmp_path / "split", resume=True, **quiet)
    assert [row["lr"] for row in resumed.history][2:] == pytest.approx(rates[2:], rel=1e-12)
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")["model"]
    for name, value in a.items():
        torch.testing.assert_close(value, b[name], rtol=1e-10, atol=1e-12)


def test_time_budget_drives_the_rate_when_it_ends_first(data_file, tmp_path, monkeypatch):
    clock = {"now": 1000.0}
    monkeypatch.setattr("molequi.training.schedule.time.monotonic", lambda: clock["now"])
    budget = schedule(max_epochs=1000, budget_seconds=60.0)
    clock["now"] += 45.0
    assert budget.fraction(1.0, budget.seconds_spent()) == pytest.approx(0.75)
