"""Model files: one safetensors file whose header carries the JSON hyper-parameters.

Layout of ``model.molequi`` (a valid ``.safetensors`` file):

* tensors: the model's ``state_dict`` (weights and buffers),
* ``__metadata__`` (string -> string, part of the safetensors JSON header):
  ``format`` = ``"molequi-model"``, ``format_version``, ``molequi_version``, ``dtype``,
  ``config`` (JSON of :class:`~molequi.models.config.ModelConfig`: architecture, species, E0s in
  eV, scale/shift), ``units`` (JSON) and ``extra`` (JSON: training provenance, free-form).

Loading parses JSON and raw little-endian tensors only: nothing is unpickled, so a model file
cannot execute code. The header also holds ``content_sha256``, a checksum of the tensors and
the other header entries (:func:`molequi.utils.tensors_digest`): a flipped byte is refused on
load rather than predicting garbage. Files from before the checksum load with a warning. The
header's values are checked (:meth:`ModelConfig.validate`) and its architecture compared with
the size of the stored tensors before the model is built.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from molequi.errors import ConfigError, ModelFileError
from molequi.models.config import ModelConfig
from molequi.models.potential import MolequiPotential
from molequi.nn.forces import ForceOutput
from molequi.utils import DIGEST_KEY, atomic_write, tensors_digest

FORMAT_NAME = "molequi-model"
FORMAT_VERSION = 1
UNITS = {"length": "Å", "energy": "eV", "forces": "eV/Å", "stress": "eV/Å³", "dipole": "e·Å"}
DTYPES = {"float32": torch.float32, "float64": torch.float64}


SETTINGS_ADDED_LATER = {"species_product": False, "edge_l_max": None}
"""Architecture settings that files written before them do not name, with the value that
rebuilds those files' models (a new default must not change an old model)."""


def build_model(config: ModelConfig, dtype: torch.dtype = torch.float64) -> ForceOutput:
    """A freshly initialised potential with forces: ``ForceOutput(MolequiPotential(config))``."""
    return ForceOutput(MolequiPotential(config)).to(dtype)


def model_config(model: ForceOutput) -> ModelConfig:
    """The :class:`ModelConfig` of a model built by :func:`build_model` (unwrapping DDP/EMA)."""
    inner = getattr(model, "module", model)
    return inner.model.config


def model_digest(model: ForceOutput) -> str:
    """sha256 of a model's content: weights and buffers (in its dtype) and its configuration."""
    from molequi.utils import tensors_digest

    inner = getattr(model, "module", model)
    return tensors_digest(inner.state_dict(), {"config": json.dumps(model_config(inner).identity_dict(), sort_keys=True)})


def content_digest(model: ForceOutput) -> str:
    """:func:`model_digest` of a model as it was loaded (at the precision of its file, whatever
    ``dtype`` it was loaded in), else of the model as it is now."""
    return getattr(model, "content_digest", None) or model_digest(model)


def save_model(model: ForceOutput, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` to ``path`` atomically (temporary file, then rename)."""
    from molequi.version import __version__

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
    metadata[DIGEST_KEY] = tensors_digest(tensors, metadata)
    return atomic_write(path, lambda temporary: save_file(tensors, str(temporary), metadata=metadata))


def minimum_parameters(config: ModelConfig) -> int:
    """A lower bound on the parameter count of the model ``config`` describes, from the sizes
    alone: every layer holds a channels × channels linear map and the radial MLP.

    Compared with the tensors a file holds before anything is built, it refuses a header whose
    architecture was altered (5,000 layers, 2·10⁵ channels) instead of allocating for it.
    """
    sizes = [config.num_radial, *config.radial_hidden]
    radial = sum(a * b for a, b in zip(sizes, sizes[1:]))
    return config.num_layers * (config.channels * config.channels + radial)


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
    if not isinstance(header["config"], dict):
        raise ModelFileError(f"{path}: corrupt molequi header (config is not a mapping)")
    if metadata.get("dtype") not in DTYPES:
        raise ModelFileError(f"{path}: corrupt molequi header (dtype {metadata.get('dtype')!r} is not one of "
                             f"{', '.join(DTYPES)})")
    header.update(format_version=version, molequi_version=metadata.get("molequi_version"), dtype=metadata.get("dtype"),
                  content_sha256=metadata.get(DIGEST_KEY), metadata=metadata)
    return header


def check_weights(path: Path, tensors: dict[str, torch.Tensor], header: dict[str, Any]) -> None:
    """Verify the checksum of a model file's tensors and header, and that its weights are finite.

    Files written before checksums existed (no ``content_sha256`` in the header) load with a
    warning: their integrity cannot be verified, but refusing them would strand trained models.
    """
    stored = header.get("content_sha256")
    if stored is None:
        warnings.warn(f"{path}: model file without a checksum (written by an older molequi); "
                      "its integrity cannot be verified", stacklevel=3)
    elif stored != tensors_digest(tensors, header["metadata"]):
        raise ModelFileError(f"{path}: checksum mismatch: the weights or the header were corrupted or altered "
                             "after the file was written; refusing to load it")
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ModelFileError(f"{path}: weight '{name}' holds NaN or inf values")


def read_config(path: str | Path, header: dict[str, Any] | None = None) -> ModelConfig:
    """The :class:`ModelConfig` of a model file (architecture and normalisation), without its weights.

    Raises:
        ModelFileError: the file is missing, corrupt or foreign, or its configuration is invalid.
    """
    header = read_header(path) if header is None else header
    try:
        return ModelConfig.from_dict({**SETTINGS_ADDED_LATER, **header["config"]})
    except (ConfigError, TypeError, ValueError) as error:
        raise ModelFileError(f"{path}: corrupt model configuration ({error})") from None


def load_model(path: str | Path, device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None) -> ForceOutput:
    """Load a model file written by :func:`save_model`, in evaluation mode.

    Args:
        path: the ``.molequi`` file.
        device: where to put the model (``"cpu"``, ``"cuda"``…).
        dtype: ``"float32"``/``"float64"`` to override the stored precision.

    Raises:
        ModelFileError: the file is missing, corrupt, truncated, foreign or too new.
    """
    from molequi.devices import resolve_device

    device = resolve_device(device)
    if isinstance(dtype, str) and dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    path = Path(path)
    header = read_header(path)
    config = read_config(path, header)
    stored_dtype = DTYPES[header["dtype"]]
    try:
        with safe_open(str(path), framework="pt") as handle:
            stored = sum(math.prod(handle.get_slice(name).get_shape()) for name in handle.keys())
            if minimum_parameters(config) > stored:
                raise ModelFileError(
                    f"{path}: the header's architecture ({config.num_layers} layers of {config.channels} channels) "
                    f"needs at least {minimum_parameters(config):,} parameters but the file holds {stored:,}: "
                    "corrupt or altered header")
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, RuntimeError, OSError) as error:
        raise ModelFileError(f"{path}: unreadable weights ({str(error).splitlines()[0]})") from None
    check_weights(path, tensors, header)
    model = build_model(config, stored_dtype)
    try:
        model.load_state_dict(tensors, strict=True)
    except (RuntimeError, ValueError) as error:
        raise ModelFileError(f"{path}: weights do not match the stored architecture ({str(error).splitlines()[0]})") from None
    digest = model_digest(model)  # before any change of precision: one identity per file content
    if dtype is not None:
        model = model.to(DTYPES[dtype] if isinstance(dtype, str) else dtype)
    model.content_digest = digest
    from molequi.models.baseline import make_baseline

    model.baseline = make_baseline(config.baseline)  # Δ-learning: added back at run time
    return model.to(device).eval()
