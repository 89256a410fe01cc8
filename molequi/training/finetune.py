"""Fine-tuning: a run that starts from a trained model (``molequi train --init MODEL``).

What a fine-tuning run keeps and what it changes, and why:

- The architecture and the normalisation (energy scale, mean neighbour count) are the initial
  model's: its weights mean something only with them. The training data's own statistics are not
  recomputed (recomputing them is the usual way a fine-tuned model breaks).
- The per-element reference energies are refitted by least squares on the new data: a new level
  of theory (DFT instead of GFN2-xTB) shifts every atom's energy by an element-wise constant that
  the network should not have to learn. The fit is on ``label − initial model``, so only the
  offset moves, not the learned interactions.
- Optionally the body is frozen (only the readout heads train) and a fraction of the pretraining
  data is replayed, with its energies moved by the same reference shift, against forgetting.
- Optionally the weights are anchored to the initial model's (``anchor``: a Gaussian prior on
  their change, L2-SP). A few labels in one corner of a molecule's configurations fix its forces
  there but say nothing of the energies between corners they never visit; unanchored, the
  network may trade those away (measured on aspirin from ``organic-xtb``: the test energy error
  of conformers no label visited doubled; anchored it stayed at the initial model's). Where the
  labels do cover the use, the pull holds on to the initial model's errors instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch_geometric.data import Data

from molequi.errors import ConfigError, UnknownElementError
from molequi.models.config import ModelConfig

if TYPE_CHECKING:
    from molequi.training.config import TrainingConfig
    from molequi.training.data import PreparedData

FINE_TUNE_LEARNING_RATE = 3e-3
"""Default learning rate of a run started with ``--init`` (a tenth of a fresh run's): large steps
would first undo what the initial model learned."""

ARCHITECTURE_FIELDS = ("cutoff", "channels", "l_max", "edge_l_max", "num_layers", "num_radial", "cutoff_p",
                       "radial_hidden", "correlation", "species_product", "readout_hidden", "trainable_radial",
                       "ensemble_heads", "charge_input", "properties")
"""Model settings a fine-tuning run takes from the initial model (the weights' shapes depend on them)."""


def initial_model_config(path: str | Path) -> ModelConfig:
    """The configuration stored in the model file ``path`` (read without building the model)."""
    from molequi.models.io import read_config

    return read_config(path)


def fine_tune_overrides(overrides: dict, config_path: str | Path | None = None) -> dict:
    """Training ``overrides`` (dotted keys, ``init`` among them) of a fine-tuning run, checked and
    completed: architecture settings must match the initial model's (:class:`ConfigError`
    otherwise) and, unless the overrides or the YAML file ``config_path`` set one, the learning
    rate is :data:`FINE_TUNE_LEARNING_RATE`."""
    initial = initial_model_config(resolve_model(overrides["init"]))
    check_architecture_overrides(initial, {k: v for k, v in overrides.items() if k.startswith("model.")},
                                 overrides["init"])
    in_file = False
    if config_path is not None:
        import yaml

        try:
            in_file = "learning_rate" in (yaml.safe_load(Path(config_path).read_text()) or {})
        except (OSError, yaml.YAMLError, TypeError):
            in_file = False  # load_config reports an unreadable file
    if "learning_rate" not in overrides and not in_file:
        overrides = {**overrides, "learning_rate": FINE_TUNE_LEARNING_RATE}
    return overrides


def check_architecture_overrides(initial: ModelConfig, overrides: dict, source: str) -> None:
    """Refuse architecture settings given beside ``--init`` that differ from the initial model's.

    Args:
        initial: the initial model's configuration.
        overrides: dotted ``model.KEY`` settings the user gave (flags or config file).
        source: how to name the initial model in the message.

    Raises:
        ConfigError: naming each differing setting and both values.
    """
    differing = []
    for key, value in overrides.items():
        name = key.removeprefix("model.")
        if name in ARCHITECTURE_FIELDS and getattr(initial, name) != value:
            differing.append(f"{name} {value!r} (the model has {getattr(initial, name)!r})")
    if differing:
        raise ConfigError(f"cannot fine-tune {source} with another architecture: {'; '.join(differing)}; "
                          "drop these settings (the architecture comes from the initial model)")


def fine_tune_architecture(requested: ModelConfig, initial: ModelConfig) -> ModelConfig:
    """The architecture of a fine-tuning run: the initial model's, with ``requested``'s baseline
    (Δ-learning on top of a pretrained model composes) and its ensemble heads kept."""
    return dataclasses.replace(initial, baseline=requested.baseline)


def check_fine_tune_species(data_species: Sequence[int], initial: ModelConfig, source: str) -> None:
    """Raise :class:`UnknownElementError` when the data hold an element the initial model never saw."""
    unknown = sorted(set(data_species) - set(initial.species))
    if unknown:
        from ase.data import chemical_symbols

        raise UnknownElementError(
            f"cannot fine-tune {source}: the data contain {', '.join(chemical_symbols[z] for z in unknown)}, which "
            f"it was never trained on (it knows {', '.join(chemical_symbols[z] for z in initial.species)}); "
            "train from scratch instead")


@torch.no_grad()
def predicted_energies(model: torch.nn.Module, graphs: Sequence[Data], batch_size: int = 64) -> np.ndarray:
    """[G] total energies (eV) the model predicts for ``graphs`` (no forces: only the offset is fitted)."""
    from torch_geometric.data import Batch

    from torch_geometric.utils import scatter

    from molequi.data.batch import GraphBatch

    potential = model.model
    device = next(potential.parameters()).device
    energies = []
    for start in range(0, len(graphs), batch_size):
        chunk = [graphs[k] for k in range(start, min(start + batch_size, len(graphs)))]  # a list or a streamed set
        batch = GraphBatch.of(Batch.from_data_list(chunk).to(device))
        out = potential(batch)
        per_atom = out["residual_energies"].double() + out["reference_energies"]
        energies.append(scatter(per_atom, batch.batch, dim=0, dim_size=batch.num_graphs, reduce="sum").cpu().numpy())
    return np.concatenate(energies) if energies else np.zeros(0)


@dataclasses.dataclass(frozen=True)
class ReferenceShift:
    """How a fine-tuning run moved the initial model's reference energies: per element (eV per
    atom) and, for a model given the total charge, the charge reference a·Q + b·Q² (``[a, b]``,
    eV per e and per e²; see :attr:`ModelConfig.charge_energies`)."""

    elements: dict[int, float] = dataclasses.field(default_factory=dict)
    charge: tuple[float, float] = (0.0, 0.0)

    def energy_of(self, numbers: Sequence[int], charge: float = 0.0) -> float:
        """The shift (eV) of a structure of atomic ``numbers`` and total ``charge`` (e)."""
        return (sum(self.elements.get(int(z), 0.0) for z in numbers)
                + self.charge[0] * charge + self.charge[1] * charge * charge)


def reference_shift(model: torch.nn.Module, graphs: Sequence[Data], species: Sequence[int],
                    charge_terms: bool = False) -> ReferenceShift:
    """Reference-energy shifts (eV) that best map the model's energies onto the labels of ``graphs``.

    The median of ``E_label − E_model`` per composition (and total charge, with
    ``charge_terms``), fitted over the element counts (and the charge columns Q, Q²) by least
    squares (:func:`molequi.models.references.composition_offsets`); where the data do not
    determine every element's shift (one molecule: only the total of its composition), the
    minimum-norm solution spreads it. Elements absent from ``graphs`` keep their reference
    energy (shift 0).
    """
    from molequi.data.statistics import charge_columns, graph_charge
    from molequi.models.references import composition_counts, composition_offsets

    present = sorted({int(z) for graph in graphs for z in graph.numbers.tolist()})
    counts = np.array([composition_counts(graph.numbers.numpy(), present) for graph in graphs])
    if charge_terms:
        counts = np.hstack([counts, charge_columns([graph_charge(graph) for graph in graphs])])
    labels = np.array([float(graph.energy) for graph in graphs])
    delta = composition_offsets(labels - predicted_energies(model, graphs), counts)
    elements = dict.fromkeys(species, 0.0)
    elements.update({z: float(change) for z, change in zip(present, delta)})
    charge = (float(delta[len(present)]), float(delta[len(present) + 1])) if charge_terms else (0.0, 0.0)
    return ReferenceShift(elements, charge)


def refitted_config(initial: ModelConfig, shift: ReferenceShift) -> ModelConfig:
    """``initial`` with its reference energies moved by ``shift`` (eV)."""
    from molequi.models.references import shifted_charge_energies, shifted_e0s

    charge_energies = initial.charge_energies
    if initial.charge_input:
        charge_energies = shifted_charge_energies(initial.charge_energies, shift.charge)
    return dataclasses.replace(initial, e0s=shifted_e0s(initial.e0s, shift.elements), charge_energies=charge_energies)


def shift_energies(graphs: Sequence[Data], shift: ReferenceShift) -> list[Data]:
    """Copies of ``graphs`` whose energy labels (eV) are moved by ``shift``: the pretraining data
    replayed at the new level of theory's reference energies."""
    from molequi.data.statistics import graph_charge

    moved = []
    for graph in graphs:
        copy = graph.clone()
        if "energy" in copy:
            copy.energy = copy.energy + shift.energy_of(graph.numbers.tolist(), graph_charge(graph))
        moved.append(copy)
    return moved


def replay_sample(graphs: Sequence[Data], fraction: float, n_train: int, seed: int) -> list[Data]:
    """``round(fraction · n_train)`` structures of the pretraining data, drawn with ``seed``
    (without replacement; all of them when there are fewer)."""
    if not 0 < fraction <= 1:
        raise ConfigError(f"replay must be a fraction in (0, 1], got {fraction}")
    count = min(len(graphs), max(1, round(fraction * n_train)))
    order = np.random.default_rng(seed).permutation(len(graphs))[:count]
    return [graphs[k] for k in sorted(order)]


def learns_a_correction(config: TrainingConfig) -> bool:
    """Whether a fine-tuning run learns ``label − baseline`` (``--baseline``) from a model that
    learned whole energies: its energy readouts then predict the wrong quantity."""
    if config.init is None or config.model.baseline is None:
        return False
    return initial_model_config(resolve_model(config.init)).baseline is None


@torch.no_grad()
def zero_energy_readouts(model: torch.nn.Module) -> None:
    """Set the output layer of every energy readout to zero, keeping the body and the hidden
    readout layers: a model that learned whole energies then starts a Δ-learning run predicting
    no correction (the baseline alone), with the features it learned, instead of first unlearning
    an energy the baseline already supplies. The heads of a shallow ensemble stay distinct through
    their own hidden units."""
    for readout in model.model.readouts:
        if hasattr(readout, "out_weight"):  # K heads with a hidden layer each
            readout.out_weight.zero_()
            readout.out_bias.zero_()
            continue
        last = readout.net[-1] if isinstance(readout.net, torch.nn.Sequential) else readout.net
        last.weight.zero_()
        last.bias.zero_()


def freeze_body(model: torch.nn.Module) -> int:
    """Stop gradients to everything but the readout heads (energy and property heads).

    Returns:
        the number of parameters left trainable.
    """
    trainable = 0
    for name, parameter in model.named_parameters():
        head = ".readouts." in f".{name}" or ".property_heads." in f".{name}"
        parameter.requires_grad_(head)
        trainable += parameter.numel() if head else 0
    if trainable == 0:
        raise ConfigError("--freeze left no trainable parameter (the model has no readout heads)")
    return trainable


@dataclasses.dataclass
class WeightAnchor:
    """The pull of a fine-tuning run towards the initial weights: ``scale · Σ (θ − θ₀)²`` over
    the trained parameters (``scale`` = ``anchor`` / training structures, per the loss's units)."""

    reference: dict[str, torch.Tensor]
    scale: float

    def penalty(self, model: torch.nn.Module) -> torch.Tensor:
        """The anchor's term of the loss for ``model``'s current weights (a 0-d tensor)."""
        terms = [(parameter - self.reference[name]).square().sum() for name, parameter in model.named_parameters()
                 if parameter.requires_grad and name in self.reference]
        return self.scale * torch.stack(terms).sum() if terms else torch.zeros(())


def resolve_model(spec: str | Path) -> Path:
    """The model file of ``spec``: a pretrained model's name (said once on stderr) or a path.

    Raises:
        ConfigError: ``spec`` is neither a shipped name nor an existing file.
    """
    from molequi import pretrained

    path = Path(pretrained.file_of(spec))
    if not path.is_file():
        raise ConfigError(f"--init {spec}: no such model file, and no pretrained model of that name "
                          f"(shipped: {', '.join(pretrained.names())})")
    return path


def with_initial_architecture(config: TrainingConfig) -> TrainingConfig:
    """``config`` (a :class:`~molequi.training.config.TrainingConfig` with ``init``) with the
    initial model's architecture (see :func:`fine_tune_architecture`)."""
    initial = initial_model_config(resolve_model(config.init))
    return dataclasses.replace(config, model=fine_tune_architecture(config.model, initial))


def fine_tuned_config(config: TrainingConfig, prepared: PreparedData,
                      outputs_trained: Sequence[str]) -> tuple[ModelConfig, ReferenceShift]:
    """The model configuration of a fine-tuning run and the reference shift it applied.

    The initial model's architecture and normalisation with its reference energies refitted on
    ``prepared.train`` (see :func:`reference_shift`), unless the run trains no energy.

    Raises:
        UnknownElementError: the data hold an element the initial model never saw.
    """
    from molequi.models.io import load_model

    path = resolve_model(config.init)
    initial = initial_model_config(path)
    check_fine_tune_species(prepared.model_config.species, initial, str(config.init))
    tuned = dataclasses.replace(initial, baseline=config.model.baseline,
                                trained_outputs=prepared.model_config.trained_outputs)
    shift = ReferenceShift()
    if "energy" in outputs_trained:
        # the network alone (no baseline): with --baseline the labels are already relative to it
        model = load_model(path, dtype=config.dtype)
        shift = reference_shift(model, prepared.train, initial.species, charge_terms=initial.charge_input)
        tuned = refitted_config(tuned, shift)
    return tuned, shift


def add_replay(config: TrainingConfig, prepared: PreparedData, shift: ReferenceShift, species: Sequence[int]) -> int:
    """Append ``config.replay`` × (training-set size) pretraining structures from
    ``config.replay_data`` to ``prepared.train``, their energies moved by ``shift`` (eV).

    Returns:
        how many structures were added.
    """
    from molequi.training.data import load_graphs

    replayed = load_graphs([config.replay_data], config.model.cutoff, keys=config.label_keys,
                           baseline=config.model.baseline)
    unknown = sorted({int(z) for graph in replayed for z in graph.numbers.tolist()} - set(species))
    if unknown:
        raise UnknownElementError(f"--replay-data {config.replay_data} holds atomic numbers {unknown} that the "
                                  "initial model does not know")
    sample = shift_energies(replay_sample(replayed, config.replay, len(prepared.train), config.seed), shift)
    prepared.train.extend(sample)
    return len(sample)


def applied_shift(config: TrainingConfig, tuned: ModelConfig) -> ReferenceShift:
    """The reference shift (eV) a fine-tuning run applied: its reference energies minus the
    initial model's (read again on resume, so the replayed energies move the same way)."""
    initial = initial_model_config(resolve_model(config.init))
    elements = {int(z): float(tuned.e0s.get(str(z), 0.0)) - float(initial.e0s.get(str(z), 0.0))
                for z in initial.species}
    before, after = initial.charge_energies or (0.0, 0.0), tuned.charge_energies or (0.0, 0.0)
    return ReferenceShift(elements, (after[0] - before[0], after[1] - before[1]))
