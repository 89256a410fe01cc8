"""Model files: one safetensors file whose header carries the JSON hyper-parameters.

Layout of ``model.molequi`` (a valid ``.safetensors`` file):

* tensors: the model's ``state_dict`` (weights and buffers),
* ``__metadata__`` (string -> string, part of the safetensors JSON header):
  ``format`` = ``"molequi-model"``, ``format_version``, ``molequi_version``, ``dtype``,
  ``config`` (JSON of :class:`~molequi.models.config.ModelConfig`: architecture, species, E0s in
  eV, scale/shift), ``units`` (JSON) and ``extra`` (JSON: training provenance, free-form).

Loading parses JSON and raw little-endian tensors only: nothing is unpickled, so a model file
cannot execute code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from molequi.errors import ConfigError, ModelFileError
from molequi.models.config import ModelConfig
from molequi.models.potential import MolequiPotential
from molequi.nn.forces import ForceOutput
from molequi.utils import atomic_write

FORMAT_NAME = "molequi-model"
FORMAT_VERSION = 1
UNITS = {"length": "Å", "energy": "eV", "forces": "eV/Å", "stress": "eV/Å³", "dipole": "e·Å"}
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def build_model(config: ModelConfig, dtype: torch.dtype = torch.float64) -> ForceOutput:
    """A freshly initialised potential with forces: ``ForceOutput(MolequiPotential(config))``."""
    return ForceOutput(MolequiPotential(config)).to(dtype)


def model_config(model: ForceOutput) -> ModelConfig:
    """The :class:`ModelConfig` of a model built by :func:`build_model` (unwrapping DDP/EMA)."""
    inner = getattr(model, "module", model)
    return inner.model.config


def save_model(model: ForceOutput, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` to ``path`` atomically (temporary file, then rename)."""
    from molequi import __version__

    inner = getattr(model, "module", model)
    # safetensors refuses tensors that share memory; clone so each entry owns its storage.
    tensors = {name: value.detach().cpu().contiguous().clone() for name, value in inner.state_dict().items()}
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "molequi_version": __version__,
        "dtype": str(inner.dtype).removeprefix("torch."),
        "config": json.dumps(model_config(inner).to_dict()),
        "units": json.dumps(UNITS),
        "extra": json.dumps(extra or {}),
    }
    return atomic_write(path, lambda temporary: save_file(tensors, str(temporary), metadata=metadata))


def read_header(path: str | Path) -> dict[str, Any]:
    """The decoded molequi header of a model file (config, dtype, versions, extra)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelFileError(f"{path}: not a molequi model file (unreadable safetensors container: {error})") from error
    if metadata.get("format") != FORMAT_NAME:
        raise ModelFileError(f"{path}: not a molequi model file (a safetensors file without a molequi header)")
    raw_version = metadata.get("format_version", "")
    if not raw_version.isdigit():
        raise ModelFileError(f"{path}: corrupt molequi header (format_version '{raw_version}' is not a whole number)")
    version = int(raw_version)
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: model format version {version} is newer than this molequi reads ({FORMAT_VERSION}); upgrade molequi"
        )
    try:
        header = {key: json.loads(metadata[key]) for key in ("config", "units", "extra")}
    except (KeyError, json.JSONDecodeError) as error:
        raise ModelFileError(f"{path}: corrupt molequi header ({error})") from error
    header.update(format_version=version, molequi_version=metadata.get("molequi_version"), dtype=metadata.get("dtype"))
    return header


def load_model(path: str | Path, device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None) -> ForceOutput:
    """Load a model file written by :func:`save_model`, in evaluation mode.

    Args:
        path: the ``.molequi`` file.
        device: where to put the model (``"cpu"``, ``"cuda"``…).
        dtype: ``"float32"``/``"float64"`` to override the stored precision.

    Raises:
        ModelFileError: the file is missing, corrupt, truncated, foreign or too new.
    """
    path = Path(path)
    header = read_header(path)
    try:
        config = ModelConfig.from_dict(header["config"])
    except (ConfigError, TypeError) as error:
        raise ModelFileError(f"{path}: corrupt model configuration ({error})") from error
    stored_dtype = DTYPES.get(header["dtype"], torch.float64)
    model = build_model(config, stored_dtype)
    try:
        with safe_open(str(path), framework="pt") as handle:
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        model.load_state_dict(tensors, strict=True)
    except (SafetensorError, RuntimeError, OSError) as error:
        raise ModelFileError(f"{path}: weights do not match the stored architecture ({str(error).splitlines()[0]})") from error
    if dtype is not None:
        model = model.to(DTYPES[dtype] if isinstance(dtype, str) else dtype)
    from molequi.models.baseline import make_baseline

    model.baseline = make_baseline(config.baseline)  # Δ-learning: added back at run time
    return model.to(device).eval()
