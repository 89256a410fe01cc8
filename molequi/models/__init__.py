"""Model configuration, assembly from nn blocks, and model files."""

from molequi.models.config import ModelConfig
from molequi.models.io import build_model, load_model, model_config, read_header, save_model
from molequi.models.potential import MolequiPotential
from molequi.models.predict import predict
from molequi.models.uncertainty import Calibration

__all__ = [
    "Calibration",
    "ModelConfig",
    "MolequiPotential",
    "build_model",
    "load_model",
    "model_config",
    "predict",
    "read_header",
    "save_model",
]
