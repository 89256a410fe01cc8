"""Exceptions that carry a one-line, user-facing message.

``molequi.cli.main.main`` is the one place that turns a :class:`MolequiError` into one line
``error: <message>`` on stderr and exit code 2, so a user mistake never surfaces as a traceback
from deep inside torch. Any other exception is a bug: it keeps its traceback (exit code 1).
Library code (the search package included) raises these classes for anything a user can get
wrong; each also derives from the matching built-in (``ValueError``, ``FileNotFoundError``,
``OSError``) so that ``except ValueError`` in user code keeps working.
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


class InputFileError(MolequiError, FileNotFoundError):
    """A file or folder named as an input does not exist or is not a readable file."""


class OutputPathError(MolequiError, OSError):
    """An output path cannot be written: a file where a folder is expected (or the reverse),
    a read-only folder, a full disk. Nothing is left half-written."""


class ResumeMismatchError(ConfigError):
    """A run folder holds results made with other settings or other inputs (identified by
    content), so resuming into it would mix results; the message names what changed."""


class DeviceError(ConfigError):
    """The requested torch device does not exist here (``cuda`` without a GPU, a bad name)."""
