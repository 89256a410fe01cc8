"""Exceptions that carry a one-line, user-facing message.

The CLI turns any :class:`MolequiError` into ``error: <message>`` and a non-zero exit code, so
a user mistake never surfaces as a traceback from deep inside torch.
"""

from __future__ import annotations


class MolequiError(Exception):
    """Base class for errors caused by user input (data, config, model files)."""


class InvalidStructureError(MolequiError, ValueError):
    """A structure cannot be used: NaN coordinates, overlapping atoms, empty, bad shapes."""


class DataFormatError(MolequiError, ValueError):
    """A data file is unreadable, lacks labels, or has inconsistent arrays."""


class ConfigError(MolequiError, ValueError):
    """A configuration key or value is invalid."""


class ModelFileError(MolequiError, ValueError):
    """A model file is corrupt, truncated, foreign or of an unsupported format version."""


class UnknownElementError(MolequiError, ValueError):
    """A structure contains elements the model was not trained on."""


class MissingDependencyError(MolequiError, ImportError):
    """An optional dependency (an extra such as ``molequi[search]``) is not installed."""
