"""Checkpoints that resume a run exactly and load without unpickling arbitrary objects.

A checkpoint is a ``torch.save`` of a dict holding only tensors and plain Python values (the
RNG states of Python and NumPy are converted to lists), read back with
``torch.load(..., weights_only=True)``: a crafted pickle cannot execute code, it is refused.
Checkpoints are written atomically (temporary file, then rename) and checksummed (sha256 of the
state's bytes, verified on load). They record the content hashes of the training data
(:func:`data_identity`), so a resume on other data is refused.
"""

from __future__ import annotations

import hashlib
import io
import random
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from molequi.errors import ModelFileError
from molequi.utils import atomic_write

CHECKPOINT_FORMAT = "molequi-checkpoint"
CHECKPOINT_VERSION = 2
"""2: the state is stored as the bytes of its own ``torch.save`` (``payload``) with their sha256
(``content_sha256``), so a corrupted checkpoint is refused instead of resuming from garbage."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` (tensors and plain values only) atomically to ``path``, checksummed."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    wrapped = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "content_sha256": hashlib.sha256(payload).hexdigest(),
        "payload": torch.frombuffer(bytearray(payload), dtype=torch.uint8),
    }
    return atomic_write(path, lambda temporary: torch.save(wrapped, temporary))


def data_identity(paths: Sequence[str | Path]) -> list[str]:
    """Content hashes of a run's data: sha256 of each file's bytes, or of the spec itself for a
    named dataset (``qm9:train?n=1000``), so a resume is tied to the data, not to their names."""
    import json

    from molequi.data.qm9 import is_qm9_spec, parse_qm9_spec, qm9pack_version
    from molequi.utils import file_digest, text_digest

    identity = []
    for spec in paths:
        path = Path(str(spec))
        if path.is_file():
            identity.append(file_digest(path))
        elif is_qm9_spec(str(spec)):  # resolved: qm9?n=5 and qm9:train?seed=0&n=5 are the same data
            try:
                version = qm9pack_version()
            except Exception:  # noqa: BLE001 - identity only: a missing qm9pack fails later, with its own message
                version = "?"
            resolved = {**parse_qm9_spec(str(spec)), "qm9pack": version}
            identity.append(text_digest("qm9:" + json.dumps(resolved, sort_keys=True)))
        else:
            identity.append(text_digest(f"spec:{str(spec).strip()}"))
    return identity


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` with ``weights_only=True``.

    Raises:
        ModelFileError: missing, corrupt, foreign, or containing objects other than tensors and
            plain values (such a file is refused without running any of its code).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means "refuse this file"
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelFileError(
            f"{path}: not a loadable molequi checkpoint; it was refused by the safe (weights-only) loader "
            f"and none of its code was run ({type(error).__name__}: {first_line[:200]})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ModelFileError(f"{path}: not a molequi checkpoint")
    version = state.get("format_version", 0)
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise ModelFileError(f"{path}: checkpoint format {version!r} is newer than this molequi reads")
    if version < 2:
        warnings.warn(f"{path}: checkpoint without a checksum (written by an older molequi); its integrity "
                      "cannot be verified", stacklevel=2)
        return state
    payload = state.get("payload")
    if not isinstance(payload, torch.Tensor) or payload.dtype != torch.uint8:
        raise ModelFileError(f"{path}: corrupt checkpoint (no payload)")
    data = payload.numpy().tobytes()
    if hashlib.sha256(data).hexdigest() != state.get("content_sha256"):
        raise ModelFileError(f"{path}: checksum mismatch: the checkpoint was corrupted or altered after it was "
                             "written; refusing to resume from it")
    try:
        inner = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - as above: refuse, never run it
        raise ModelFileError(f"{path}: corrupt checkpoint payload ({type(error).__name__})") from None
    if not isinstance(inner, dict):
        raise ModelFileError(f"{path}: corrupt checkpoint payload")
    return {"format": CHECKPOINT_FORMAT, "format_version": version, **inner}


def rng_state(shuffle: torch.Generator | None = None) -> dict[str, Any]:
    """RNG states of torch (CPU and CUDA), NumPy, Python and the shuffling generator, as
    tensors and lists."""
    numpy_state = np.random.get_state()
    python_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [numpy_state[0], numpy_state[1].tolist(), int(numpy_state[2]), int(numpy_state[3]), float(numpy_state[4])],
        "python": [python_state[0], list(python_state[1]), python_state[2]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if shuffle is not None:
        state["shuffle"] = shuffle.get_state()
    return state


def set_rng_state(state: dict[str, Any], shuffle: torch.Generator | None = None) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if shuffle is not None and "shuffle" in state:
        shuffle.set_state(state["shuffle"])
