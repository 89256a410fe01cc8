"""``--target NAME[:KIND]``: the outputs a run trains, as settings of its config."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from molequi.errors import ConfigError
from molequi.models.heads import HEADS, default_kind

ENERGY_TARGETS = ("energy", "u0")
"""Target names that mean the structures' energy label (QM9 calls it U0)."""


def parse_target(spec: str) -> tuple[str, str | None]:
    """``"NAME[:KIND]"`` -> (name, kind or None for the total energy).

    ``energy``/``U0`` (any case, no kind) mean the structures' energy label (QM9: U0, eV). Any
    other name is a property head reading ``atoms.info[NAME]``; its kind defaults to
    ``dipole`` for names starting with ``dipole`` and to ``intensive`` otherwise.
    """
    name, _, kind = str(spec).strip().partition(":")
    name, kind = name.strip(), kind.strip()
    if not name:
        raise ConfigError(f"--target needs a name (NAME or NAME:KIND), got '{spec}'")
    if name.lower() in ENERGY_TARGETS and not kind:
        return name, None
    if name == "energy":
        raise ConfigError("--target energy trains the energy label itself and takes no kind; drop ':" + kind + "'")
    if not kind:
        kind = default_kind(name)
    if kind not in HEADS:
        raise ConfigError(f"--target {spec}: unknown kind '{kind}'; choose one of {sorted(HEADS)}")
    return name, kind


def apply_targets(values: dict[str, Any], targets: Sequence[str]) -> dict[str, Any]:
    """Apply ``--target NAME[:KIND]`` specs to a config mapping in the YAML layout.

    * ``energy``/``U0``: train the energy label (QM9: U0, eV) without forces.
    * any other NAME: add a property head ``model.properties[NAME] = KIND`` with weight 1
      (unless ``property_weights`` already names it).

    ``energy_weight`` and ``forces_weight`` are set only where ``values`` does not set them:
    ``forces_weight`` 0, and ``energy_weight`` 1 if an energy target is given, else 0 (a pure
    property model).
    """
    merged = dict(values)
    model = dict(merged.get("model") or {})
    properties = dict(model.get("properties") or {})
    weights = dict(merged.get("property_weights") or {})
    train_energy = False
    for spec in targets:
        name, kind = parse_target(spec)
        if kind is None:
            train_energy = True
            continue
        if name in properties and properties[name] != kind:
            raise ConfigError(f"--target {spec}: model.properties already declares '{name}' as '{properties[name]}'")
        properties[name] = kind
        weights.setdefault(name, 1.0)
    if properties:
        model["properties"] = properties
        merged["model"] = model
    if weights:
        merged["property_weights"] = weights
    merged.setdefault("forces_weight", 0.0)
    merged.setdefault("energy_weight", 1.0 if train_energy else 0.0)
    return merged
