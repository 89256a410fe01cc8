"""Training: settings, data preparation, the training loop, metrics and evaluation.

Quick use::

    from molequi.training import load_config, train
    config = load_config(None, {"max_minutes": 4})
    train(config, "data/xtb_ethanol.extxyz", "runs/ethanol")   # -> runs/ethanol/model.molequi
"""

from molequi.training.checkpoint import load_checkpoint, save_checkpoint
from molequi.training.config import (
    DEFAULT_YAML,
    TrainingConfig,
    load_config,
    save_config,
)
from molequi.training.data import PreparedData, load_graphs, prepare_data
from molequi.training.evaluate import evaluate_model, resolve_device
from molequi.training.metrics import METRIC_KEYS, MetricSums
from molequi.training.plots import learning_curve, parity_plot
from molequi.training.trainer import (
    ExponentialMovingAverage,
    TrainResult,
    resume_settings,
    train,
)
from molequi.training.uncertainty import evaluate_committee

__all__ = [
    "DEFAULT_YAML",
    "METRIC_KEYS",
    "ExponentialMovingAverage",
    "MetricSums",
    "PreparedData",
    "TrainResult",
    "TrainingConfig",
    "evaluate_committee",
    "evaluate_model",
    "learning_curve",
    "load_checkpoint",
    "load_config",
    "load_graphs",
    "parity_plot",
    "prepare_data",
    "resolve_device",
    "resume_settings",
    "save_checkpoint",
    "save_config",
    "train",
]
