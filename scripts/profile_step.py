"""Where the milliseconds of one training step go (CPU, one torch thread by default).

Times are CPU seconds of this process (``time.process_time``), so a loaded machine slows the
run but not the breakdown (with one thread, CPU time is the work done). The operator table
is wall time from torch.profiler and is inflated by the machine's load.

Builds the default architecture (``molequi train`` without ``--config``) on rMD17 aspirin,
takes batches of the default size and times, per step:

* the phases: forward (energy), the force pass (``autograd.grad`` with ``create_graph``),
  the loss backward (the double backward through the force pass), the optimizer step + EMA;
* the forward time of each kind of block (module forward hooks; CPU ops are synchronous, so
  wall timers are exact): radial MLP on every edge, spherical harmonics, edge tensor product,
  scatter of messages, body-order product, linears, self-interaction, gate, readouts;
* the most expensive aten operators of the whole step (torch.profiler, self CPU time),
  forward and backward together.

Usage::

    OMP_NUM_THREADS=1 python scripts/profile_step.py [--molecule aspirin] [--steps 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import time
from pathlib import Path

import torch
from torch_geometric.loader import DataLoader

from molequi.models.io import build_model
from molequi.nn.forces import energy_outputs
from molequi.training.config import TrainingConfig
from molequi.training.data import prepare_data
from molequi.training.metrics import loss_terms, weighted_loss
from molequi.utils import machine_info

DATA = Path(os.environ.get("MOLEQUI_RMD17", Path(__file__).resolve().parents[2] / "shared" / "data" / "rmd17"))

# module class name -> label of the block it belongs to
BLOCKS = {
    "RadialEmbedding": "radial basis (Bessel × envelope)",
    "SphericalHarmonics": "spherical harmonics",
    "FullyConnectedNet": "radial MLP (every edge)",
    "TensorProduct": "edge tensor product (uvu)",
    "BodyOrderProduct": "body-order product (uuu + mixes)",
    "Linear": "e3nn linears",
    "FullyConnectedTensorProduct": "species self-interaction",
    "Gate": "gate nonlinearity",
    "Activation": "gate nonlinearity",
    "ScalarReadout": "readouts",
}


class BlockTimer:
    """Forward wall time per block kind, via pre/post forward hooks (outermost module only)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.totals: dict[str, float] = collections.defaultdict(float)
        self.active: list[tuple[str, float]] = []
        self.enabled = False
        for module in model.modules():
            label = BLOCKS.get(type(module).__name__)
            if label is None:
                continue
            module.register_forward_pre_hook(self._pre(label))
            module.register_forward_hook(self._post(label))

    def _pre(self, label):
        def hook(module, inputs):
            if self.enabled:
                self.active.append((label, time.process_time()))
        return hook

    def _post(self, label):
        def hook(module, inputs, output):
            if self.enabled and self.active:
                name, start = self.active.pop()
                if not self.active:  # count only outermost blocks (no double counting)
                    self.totals[name] += time.process_time() - start
        return hook


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--molecule", default="aspirin")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (after 3 warm-up steps)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="also write the breakdown here")
    parser.add_argument("--readme", action="store_true", help="write the breakdown into docs/benchmarks.md (block 'profile')")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = TrainingConfig()
    path = DATA / f"rmd17_{args.molecule}_train_01.npz"
    prepared = prepare_data([str(path)], config.model, config.validation, config.seed)
    dtype = {"float32": torch.float32, "float64": torch.float64}[config.dtype]
    model = build_model(prepared.model_config, dtype).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    weights = {"energy": config.energy_weight, "forces": config.forces_weight}
    loader = DataLoader(prepared.train, batch_size=config.batch_size, shuffle=True)
    batches = [batch for _, batch in zip(range(args.steps + 3), loader)]
    timer = BlockTimer(model)
    phases: dict[str, float] = collections.defaultdict(float)
    n_edges = 0

    def step(batch, timed: bool) -> None:
        nonlocal n_edges
        marks = [time.process_time()]
        timer.enabled = timed
        pos = batch.pos.to(torch.float64).requires_grad_(True)
        out = model.model(pos, batch.numbers, batch.edge_index, batch.shifts, batch.batch, batch.num_graphs)
        timer.enabled = False
        residual = out["residual_energies"]
        outputs = energy_outputs(residual, out["reference_energies"], batch.batch, batch.num_graphs)
        marks.append(time.process_time())
        (grad,) = torch.autograd.grad(residual.sum(), pos, create_graph=True)
        marks.append(time.process_time())
        outputs["forces"] = -grad.to(dtype)
        loss = weighted_loss(loss_terms(outputs, batch), weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        marks.append(time.process_time())
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        marks.append(time.process_time())
        if timed:
            n_edges += batch.edge_index.shape[1]
            for name, a, b in zip(("forward (energy)", "force pass (grad, create_graph)",
                                   "loss backward (double backward)", "clip + optimizer"), marks, marks[1:]):
                phases[name] += b - a

    for batch in batches[:3]:
        step(batch, timed=False)
    started = time.process_time()
    for batch in batches[3:]:
        step(batch, timed=True)
    total = time.process_time() - started

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        for batch in batches[3:8]:
            step(batch, timed=False)
    events = profiler.key_averages()
    ops = sorted(
        ((e.key, e.self_cpu_time_total / 1e3 / 5) for e in events if e.key.startswith("aten::") or "Backward" in e.key),
        key=lambda item: -item[1]
    )[:15]

    n = args.steps
    ms = lambda seconds: 1e3 * seconds / n  # noqa: E731
    forward = phases["forward (energy)"]
    report = {
        "machine": machine_info(),
        "load_average": os.getloadavg(),
        "molecule": args.molecule,
        "batch_size": config.batch_size,
        "threads": args.threads,
        "dtype": config.dtype,
        "architecture": {k: getattr(prepared.model_config, k) for k in ("channels", "l_max", "num_layers", "correlation", "radial_hidden")},
        "edges_per_step": n_edges / n,
        "step_ms": ms(total),
        "phases_ms": {k: ms(v) for k, v in phases.items()},
        "forward_blocks_ms": {k: ms(v) for k, v in sorted(timer.totals.items(), key=lambda kv: -kv[1])},
        "forward_other_ms": ms(forward - sum(timer.totals.values())),
        "top_ops_self_ms": dict(ops),
    }
    print(f"# one training step, {args.molecule}, batch {config.batch_size}, {args.threads} thread(s), {config.dtype}, "
          f"{report['edges_per_step']:.0f} edges; load {report['load_average'][0]:.1f}")
    print(f"step: {report['step_ms']:.1f} CPU ms")
    for name, value in report["phases_ms"].items():
        print(f"  {name:40s} {value:7.1f} ms  {100 * value / report['step_ms']:5.1f} %")
    print("forward by block:")
    for name, value in report["forward_blocks_ms"].items():
        print(f"  {name:40s} {value:7.1f} ms  {100 * value / ms(forward):5.1f} % of forward")
    print(f"  {'other (scatter, gathers, sums)':40s} {report['forward_other_ms']:7.1f} ms")
    print("top operators, whole step (self CPU ms per step):")
    for name, value in report["top_ops_self_ms"].items():
        print(f"  {name[:60]:60s} {value:7.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.readme:
        import sys

        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from readme_section import update_readme_section

        update_readme_section("profile", markdown(report, args))


def markdown(report: dict, args: argparse.Namespace) -> str:
    """The phases of a step and the blocks of its forward pass as a Markdown table."""
    step, forward = report["step_ms"], report["phases_ms"]["forward (energy)"]
    lines = [f"One default training step on rMD17 {report['molecule']} (batch {report['batch_size']}, "
             f"{report['edges_per_step']:.0f} edges, {report['dtype']}, {report['threads']} thread(s)): "
             f"**{step:.0f} CPU ms**, on {report['machine']['cpu']} (load {report['load_average'][0]:.1f}; CPU "
             "time, so the load slows the run but not the shares). Command: "
             f"`python scripts/profile_step.py --molecule {args.molecule} --steps {args.steps} --threads {args.threads}`",
             "", "| phase | CPU ms | share of the step |", "|---|---:|---:|"]
    lines += [f"| {name} | {value:.1f} | {100 * value / step:.0f} % |" for name, value in report["phases_ms"].items()]
    lines += ["", "| block of the forward pass | CPU ms | share of the forward |", "|---|---:|---:|"]
    lines += [f"| {name} | {value:.1f} | {100 * value / forward:.0f} % |" for name, value in report["forward_blocks_ms"].items()]
    lines.append(f"| other (scatter, gathers, sums) | {report['forward_other_ms']:.1f} | "
                 f"{100 * report['forward_other_ms'] / forward:.0f} % |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
