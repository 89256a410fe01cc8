"""Pretrained models shipped inside the package, by name.

``molequi.pretrained.load("organic-xtb")`` returns the shipped model; :func:`resolve` turns a
name or a path into the model file, so every ``--model``/``--init`` option and the calculator
take either. The files are ordinary ``.molequi`` files (safetensors weights, checked header),
so loading one executes no code; each has a card (``<file>.md``) with its data, level of theory,
training command and measured errors.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from molequi.errors import ModelFileError

if TYPE_CHECKING:
    import torch

    from molequi.models.potential import ForceOutput

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Pretrained:
    """A model that ships with molequi.

    Attributes:
        name: what users type (``"organic-xtb"``).
        file: the model file's name in this package.
        level_of_theory: the labels it learned, said whenever it runs unasked.
        summary: one line on its domain.
    """

    name: str
    file: str
    level_of_theory: str
    summary: str

    @property
    def path(self) -> Path:
        """The shipped ``.molequi`` file."""
        return HERE / self.file

    @property
    def calibration(self) -> Path | None:
        """The σ calibration fitted on the model's held-out test data (``molequi calibrate``), if shipped."""
        path = self.path.with_suffix(".calibration.json")
        return path if path.is_file() else None

    @property
    def card(self) -> Path:
        """The model card (Markdown) beside the file."""
        return self.path.with_suffix(".md")


PRETRAINED: dict[str, Pretrained] = {
    model.name: model
    for model in (
        Pretrained(
            name="organic-xtb",
            file="organic_xtb.molequi",
            level_of_theory="GFN2-xTB (tblite), gas phase",
            summary="neutral and charged organic molecules of H C N O F S Cl Br up to drug size",
        ),
    )
}
"""The shipped models by name."""

DEFAULT = "organic-xtb"
"""The model ``molequi md`` and ``MolequiCalculator()`` run when none is given."""


def names() -> list[str]:
    """The names :func:`load` and :func:`resolve` accept."""
    return sorted(PRETRAINED)


def get(name: str) -> Pretrained:
    """The shipped model of this name.

    Raises:
        ModelFileError: no shipped model has this name, or its file is missing from the install.
    """
    if name not in PRETRAINED:
        raise ModelFileError(f"no pretrained model named {name!r}; shipped: {', '.join(names())}")
    model = PRETRAINED[name]
    if not model.path.is_file():
        raise ModelFileError(
            f"pretrained model {name!r} is missing from this install ({model.path}); "
            "reinstall molequi, or rebuild it with the command in its card")
    return model


def is_name(spec: str | Path) -> bool:
    """Whether ``spec`` names a shipped model rather than a file."""
    return isinstance(spec, str) and spec in PRETRAINED


def resolve(spec: str | Path) -> Path:
    """The model file of a shipped model's name, or ``spec`` itself as a path.

    A path that does not exist is returned as given: the reader names it in its error.
    """
    return get(spec).path if is_name(spec) else Path(spec)


def file_of(spec):
    """The model file of ``spec``, saying so on stderr (once) when it names a shipped model; a
    path, or a loaded model, is returned as given."""
    if is_name(spec):
        announce(spec)
        return get(spec).path
    return spec


def calibration_of(spec) -> Path | None:
    """The σ calibration shipped with the model ``spec`` (a shipped name or the shipped file's
    path), or None for any other model."""
    if is_name(spec):
        return get(spec).calibration
    if isinstance(spec, (str, Path)):
        path = Path(spec).resolve()
        for model in PRETRAINED.values():
            if model.path == path:
                return model.calibration
    return None


_ANNOUNCED: set[str] = set()


def announce(name: str, stream=None) -> None:
    """Say once per process which shipped model runs, and at what level of theory (stderr)."""
    if name in _ANNOUNCED:
        return
    _ANNOUNCED.add(name)
    model = get(name)
    print(f"molequi: using the pretrained model '{name}' ({model.level_of_theory}; {model.summary}); "
          f"card: {model.card}", file=stream or sys.stderr)


def load(name: str = DEFAULT, device: "str | torch.device" = "cpu",
         dtype: "str | torch.dtype | None" = None) -> "ForceOutput":
    """Load a shipped model by name (``"organic-xtb"``), in evaluation mode.

    Raises:
        ModelFileError: unknown name, or the file is missing or corrupt.
    """
    from molequi.models.io import load_model

    model = load_model(get(name).path, device=device, dtype=dtype)
    announce(name)
    return model
