"""The one place where a user's device name (``auto``, ``cpu``, ``cuda``, ``cuda:N``) becomes a
:class:`torch.device`, so that every command and API answers a bad or absent device alike."""

from __future__ import annotations

import torch

from molequi.errors import DeviceError


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/None -> CUDA if available else CPU; a device that does not exist here
    (``cuda`` without a GPU, ``cuda:3`` on a one-GPU machine, an unknown name) -> :class:`DeviceError`."""
    if device is None or str(device).strip().lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device.strip() if isinstance(device, str) else device)
    except (RuntimeError, TypeError, ValueError):
        raise DeviceError(f"unknown device {str(device)!r}: use auto, cpu, cuda or cuda:N") from None
    if resolved.type not in ("cpu", "cuda"):
        raise DeviceError(f"device must be auto, cpu, cuda or cuda:N, got {str(device)!r}")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device '{resolved}' requested but no CUDA GPU is available to torch "
                f"(torch {torch.__version__}, torch.cuda.is_available() is False); use --device cpu")
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise DeviceError(f"device '{resolved}' requested but this machine has {count} CUDA GPU(s) "
                              f"(cuda:0 .. cuda:{count - 1})")
    return resolved
