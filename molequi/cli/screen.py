"""``molequi screen``: filter, embed, score and rank candidate molecules (the ``search`` extra).

``scorer_factory(paths, device) -> list[Scorer]`` turns ``--model`` paths into scorers
(default :func:`molequi.search.models.load_scorers`). Without ``--model`` the run does
filters/3D only and ranks by a filter value (default ``qed:max``).

Exit codes: 0 success, 1 every molecule failed (the outputs are written and say why), 2 a
user's mistake (a :class:`~molequi.errors.MolequiError` raised here and printed as one line by
:func:`molequi.cli.main.main`, the one place that maps exceptions to exit codes).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
import warnings
from typing import Callable, Sequence

# molequi.search.config is plain Python (no RDKit): the parser's alert-set names come from it
from molequi.cli.options import add_model_option, model_paths
from molequi.search.config import ALERT_SETS, parse_alerts

HELP = (
    "Screen candidate molecules: standardise, de-duplicate, filter (SA score, structural alerts, "
    "rules), build 3D conformers, score with trained models (committee mean ± std), rank, report."
)

REQUIRED = ("rdkit",)
"""Modules the command cannot run without (Dask is needed only for parallel screening)."""

INSTALL_HINT = "molequi screen needs RDKit (the search extra): pip install 'molequi[search]'"


def missing_dependencies() -> str | None:
    """The install hint when a required module is absent, else None (found without importing)."""
    for name in REQUIRED:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            return INSTALL_HINT
    return None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_screen_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return run_screen(args)


ScorerFactory = Callable[[Sequence[str], str], list]
log = logging.getLogger("molequi.search")


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


def _range(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition("..")
    return int(lo), int(hi)


def add_screen_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``screen`` options to ``parser`` (a sub-command parser)."""
    parser.add_argument("candidates", help="SMILES/CSV/TSV/SDF file (optionally .gz) or a built-in "
                        "pool: moses:train, moses:test, moses:test_scaffolds, qm9")
    add_model_option(parser)
    parser.add_argument("--device", default="auto", help="device for the models: auto (CUDA if available), cpu, cuda or cuda:N")
    parser.add_argument("--objective", action="append", default=None, metavar="OBJ",
                        help="name:max, name:min or name:target=LO..HI; repeat for several "
                             "(default qed:max without a model)")
    parser.add_argument("--weights", type=_floats, default=None, help="comma-separated objective weights")
    parser.add_argument("--multi", choices=("desirability", "pareto"), default="desirability",
                        help="how several objectives are combined")
    parser.add_argument("--kappa", type=float, default=0.0,
                        help="uncertainty weight: rank by mean ± kappa·std (default 0)")
    parser.add_argument("--optimistic", action="store_true",
                        help="mean + kappa·std towards the objective (default: pessimistic)")
    parser.add_argument("--std-threshold", type=float, default=None,
                        help="flag molecules whose committee std exceeds this (property units)")
    parser.add_argument("--calibration", metavar="JSON", default=None,
                        help="std calibration from 'molequi calibrate': stds (and so --kappa ranking) are "
                             "calibrated, and without --std-threshold a molecule is out of domain when a "
                             "calibrated std exceeds the 95th percentile seen on the calibration data")
    parser.add_argument("--drop-out-of-domain", action="store_true",
                        help="reject (not only flag) out-of-domain molecules")
    parser.add_argument("--sa-max", type=float, default=4.5,
                        help="max SA score (unitless, 1..10; <=0 disables)")
    parser.add_argument("--alerts", type=parse_alerts, default=("pains", "brenk"),
                        help=f"comma-separated alert sets from {','.join(ALERT_SETS)}, or 'none' (default: pains,brenk)")
    parser.add_argument("--lipinski-max-violations", type=int, default=1,
                        help="Lipinski violations allowed (<0 disables)")
    parser.add_argument("--no-veber", action="store_true", help="disable the Veber rule")
    parser.add_argument("--max-ring-size", type=int, default=8, help="largest ring allowed (<=0 disables)")
    parser.add_argument("--heavy-atoms", type=_range, default=(1, 100), metavar="LO..HI",
                        help="allowed heavy-atom count range (default: 1..100)")
    parser.add_argument("--purchasable", action="store_true",
                        help="keep only molecules probably in ZINC in-stock (molbloom, bundled filter)")
    parser.add_argument("--all-values", action="store_true",
                        help="compute SA score, alerts and purchasability also for molecules a "
                             "cheap rule (elements, Lipinski, Veber, ring size, size) already "
                             "rejected (slower; by default those columns stay empty for them)")
    parser.add_argument("--tautomers", action="store_true",
                        help="canonicalise tautomers before de-duplication (may drop stereo)")
    parser.add_argument("--no-3d", action="store_true", help="skip 3D embedding (no model scoring)")
    parser.add_argument("--top", type=int, default=100, help="number of hits to keep")
    parser.add_argument("--diverse", action="store_true", help="MaxMin diversity pick of the top hits")
    parser.add_argument("--workers", type=int, default=1, help="Dask worker processes (1 = in-process)")
    parser.add_argument("--scheduler", default=None,
                        help="Dask scheduler address tcp://HOST:PORT, or 'synchronous'")
    parser.add_argument("--chunk-size", type=int, default=1000, help="molecules per chunk")
    parser.add_argument("--batch-size", type=int, default=64, help="molecules per model call")
    parser.add_argument("--smiles-column", default=None, help="SMILES column of a CSV/TSV input")
    parser.add_argument("--id-column", default=None, help="id column of a CSV/TSV input")
    parser.add_argument("--out", default="screen_out", help="output folder")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a run with other settings in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--no-plots", action="store_true", help="no histograms in report.html (faster)")
    return parser


def _settings(args: argparse.Namespace) -> dict:
    """Keyword settings of :func:`molequi.search.screen` from parsed arguments."""
    return dict(
        objective=tuple(args.objective) if args.objective else None,
        weights=args.weights, multi=args.multi, kappa=args.kappa,
        uncertainty="optimistic" if args.optimistic else "pessimistic",
        std_threshold=args.std_threshold, drop_out_of_domain=args.drop_out_of_domain,
        sa_max=args.sa_max if args.sa_max > 0 else None, alerts=tuple(args.alerts),
        lipinski_max_violations=args.lipinski_max_violations if args.lipinski_max_violations >= 0 else None,
        veber=not args.no_veber,
        max_ring_size=args.max_ring_size if args.max_ring_size > 0 else None,
        heavy_atoms=args.heavy_atoms, purchasable=args.purchasable, all_values=args.all_values,
        tautomers=args.tautomers,
        embed_3d=not args.no_3d, top=args.top, diverse=args.diverse, workers=args.workers,
        scheduler=args.scheduler, chunk_size=args.chunk_size, batch_size=args.batch_size,
        smiles_column=args.smiles_column, id_column=args.id_column, out=args.out,
        overwrite=args.overwrite, progress=not args.no_progress, plots=not args.no_plots,
    )


def _default_factory() -> ScorerFactory:
    from molequi.search.models import load_scorers

    return load_scorers


def run_screen(args: argparse.Namespace, scorer_factory: ScorerFactory | None = None) -> int:
    """Run ``molequi screen``; returns the process exit code. Every warning of the run is printed
    (``warning: ...`` on stderr), bar the all-failed one, which the last line says."""
    from molequi.cli.paths import guard_outputs
    from molequi.devices import resolve_device
    from molequi.search.pipeline import screen
    from molequi.search.store import CHUNK_DIR, MANIFEST, OUTPUT_FILES

    paths = []
    if args.models:
        args.command = getattr(args, "command", "screen")
        paths = model_paths(args, getattr(args, "argv", None))
    guard_outputs({"CANDIDATES": args.candidates, "--model": paths, "--calibration": getattr(args, "calibration", None)},
                  folders=[("--out", args.out, (MANIFEST, CHUNK_DIR, *OUTPUT_FILES))])
    args.device = str(resolve_device(args.device))  # "auto" -> cuda or cpu; no GPU -> one line
    scorers = []
    if args.models:
        factory = scorer_factory or _default_factory()
        calibration = getattr(args, "calibration", None)
        scorers = (factory(paths, args.device, calibration=calibration) if calibration
                   else factory(paths, args.device))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = screen(args.candidates, scorers=scorers, **_settings(args))
    counts = ", ".join(f"{k} {v}" for k, v in result.stage_counts.items())
    print(f"screened {result.n_read} molecules: {counts}")
    print(f"outputs: {result.scored_csv}, {result.top_sdf}, {result.report_html}")
    _print_top(result.top, limit=10, units=result.units)
    for message in _shown_warnings(caught, all_failed=result.n_passed == 0):
        print(f"warning: {message}", file=sys.stderr)
    if result.n_passed == 0:
        print(f"molequi screen: every molecule failed; see the 'reason' column of {result.scored_csv}",
              file=sys.stderr)
        return 1
    return 0


def _shown_warnings(caught: Sequence[warnings.WarningMessage], all_failed: bool) -> list[str]:
    """The distinct messages of the caught warnings, in order; the all-failed RuntimeWarning is
    left out when ``all_failed`` (one line of its own says it, with the exit code)."""
    messages: list[str] = []
    for record in caught:
        message = " ".join(str(record.message).split())
        if all_failed and issubclass(record.category, RuntimeWarning) and "molecules failed" in message:
            continue
        if message not in messages:
            messages.append(message)
    return messages


def _print_top(rows: list[dict[str, str]], limit: int, units: dict[str, str] | None = None) -> None:
    """The first ``limit`` hits as an aligned table: rank, id, SMILES and predictions, each
    prediction column headed with its unit (``gap_mean (eV)``; QED and SA score are unitless)."""
    if not rows:
        return
    units = units or {}
    keys = [k for k in ("rank", "id", "smiles") if k in rows[0]]
    keys += [k for k in rows[0] if k.endswith(("_mean", "_std")) or k in ("qed", "sa_score")][:6]
    headers = [_with_unit(k, units) for k in keys]
    table = [headers] + [[str(row.get(k, ""))[:40] for k in keys] for row in rows[:limit]]
    widths = [max(len(r[c]) for r in table) for c in range(len(keys))]
    print(f"top {min(limit, len(rows))} of {len(rows)} hits:")
    for r in table:
        print("  " + "  ".join(v.ljust(w) for v, w in zip(r, widths)))


def _with_unit(column: str, units: dict[str, str]) -> str:
    """``gap_mean`` -> ``gap_mean (eV)`` when the property's unit is known, ``qed`` -> ``qed (unitless)``."""
    if column in ("qed", "sa_score"):
        return f"{column} (unitless)"
    prop = column.rsplit("_", 1)[0] if column.endswith(("_mean", "_std")) else column
    return f"{column} ({units[prop]})" if units.get(prop) else column
