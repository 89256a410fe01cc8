"""The screening pipeline: read -> standardise -> filter -> 3D -> score -> rank -> report.

Per-chunk work (standardise, filters, 3D) runs in-process or on Dask; each
finished chunk is scored in this process (where the model lives) and written
atomically.  The merge then reads the chunk files in input order -- twice,
so that nothing scales with the input size except one small record per
passing molecule -- de-duplicates by InChIKey (first occurrence wins), flags
out-of-domain predictions, ranks, and writes the outputs.  Because the merge
only reads chunk files, a resumed run gives byte-identical ``scored.csv``.
"""

from __future__ import annotations

import dataclasses
import math
import random
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from molequi.errors import ConfigError
from molequi.utils import json_digest

from .config import ScreenConfig, StageConfig
from .conformers import mol_to_atoms, molblock_to_mol
from .filters import FILTER_COLUMNS
from .io import CandidateSource, chunked
from .parallel import chunk_runner
from .rank import diverse_pick, rank_rows
from .report import write_report, write_top_sdf
from .result import ScreenResult
from .score import (
    Scorer,
    calibrate_std_threshold,
    check_scorers,
    common_species,
    prediction_units,
    score_atoms,
    scorer_identity,
)
from .stage import BASE_COLUMNS, EMBED_COLUMNS
from .store import (
    chunk_path,
    finished_chunks,
    locked_out_dir,
    prepare_out_dir,
    read_csv_rows,
    write_csv_atomic,
)

#: Numeric filter/3D columns usable as objectives and shown as histograms.
NUMERIC_COLUMNS: tuple[str, ...] = tuple(
    c for c in FILTER_COLUMNS + EMBED_COLUMNS
    if c not in ("elements", "alerts", "purchasable", "mmff_converged"))
RANK_COLUMNS: tuple[str, ...] = ("out_of_domain", "objective", "pareto_rank", "rank", "selected")
STAGES: tuple[str, ...] = ("read", "standardized", "unique", "filters", "3d", "scored", "in_domain", "selected")
_SAMPLE = 50_000  # values kept per column for the report's histograms


_STAGE_FIELDS = {f.name for f in dataclasses.fields(StageConfig)}
_SCREEN_FIELDS = {f.name for f in dataclasses.fields(ScreenConfig)} - {"stage"}


def build_config(**settings) -> ScreenConfig:
    """``ScreenConfig`` from flat keyword settings (stage and run settings mixed)."""
    unknown = set(settings) - _STAGE_FIELDS - _SCREEN_FIELDS
    if unknown:
        raise ConfigError(f"unknown screen setting(s): {sorted(unknown)}")
    stage = StageConfig(**{k: v for k, v in settings.items() if k in _STAGE_FIELDS})
    return ScreenConfig(stage=stage, **{k: v for k, v in settings.items() if k in _SCREEN_FIELDS})


def _with_model_elements(cfg: ScreenConfig, scorers: Sequence[Scorer]) -> ScreenConfig:
    """Restrict allowed elements to those every scorer knows."""
    species = common_species(scorers)
    if species is None:
        return cfg
    allowed = species if cfg.stage.allowed_elements is None else species & cfg.stage.allowed_elements
    return dataclasses.replace(cfg, stage=dataclasses.replace(cfg.stage, allowed_elements=frozenset(allowed)))


def _check_objectives(cfg: ScreenConfig, properties: list[str]) -> None:
    known = set(properties) | set(NUMERIC_COLUMNS)
    for obj in cfg.objectives():
        if obj.name not in known:
            raise ConfigError(f"objective {obj} refers to unknown column {obj.name!r}; "
                             f"use a predicted property {properties} or one of {sorted(NUMERIC_COLUMNS)}")


def _score_chunk(rows: list[dict[str, object]], scorers: Sequence[Scorer], properties: list[str],
                 batch_size: int) -> None:
    """Add ``<prop>_mean``/``<prop>_std`` to the passing rows of one chunk (in place)."""
    todo = [r for r in rows if r["status"] == "pass" and r.get("molblock")]
    if not scorers or not todo:
        return
    atoms = [mol_to_atoms(molblock_to_mol(str(r["molblock"]))) for r in todo]
    scores = score_atoms(scorers, atoms, batch_size)
    undetermined = [""] * len(todo)
    if "energy" in properties:  # a total energy whose reference the model could not determine ranks nothing
        for scorer in scorers:
            check = getattr(scorer, "energy_undetermined", None)
            if check is not None:
                undetermined = [mine or theirs for mine, theirs in zip(undetermined, check(atoms))]
    if any(undetermined):
        warnings.warn("some molecules have a total energy that rests on per-element reference energies the "
                      "model's training data did not determine (one composition's data fix only its own sum): they "
                      "are not ranked (reason energy_reference_undetermined:FORMULA in scored.csv); train on more "
                      "compositions to rank them")
    for i, row in enumerate(todo):
        if undetermined[i]:
            row.update(status="fail", failed_stage="score", reason=f"energy_reference_undetermined:{undetermined[i]}")
            continue
        bad = []
        for prop in properties:
            mean, std = scores[prop][0][i], scores[prop][1][i]
            # NaN std of a single model: no estimate, an empty cell (never a 0)
            row[f"{prop}_mean"], row[f"{prop}_std"] = float(mean), ("" if math.isnan(std) else float(std))
            if not (math.isfinite(mean) and (math.isnan(std) or math.isfinite(std))):
                bad.append(prop)
        if bad:
            row.update(status="fail", failed_stage="score", reason="score_failed:nan:" + ",".join(bad))


def _chunk_columns(properties: list[str]) -> list[str]:
    preds = [f"{p}_{s}" for p in properties for s in ("mean", "std")]
    return list(BASE_COLUMNS + FILTER_COLUMNS + EMBED_COLUMNS) + preds + ["molblock"]


def _thresholds(cfg: ScreenConfig, properties: list[str]) -> dict[str, float]:
    t = cfg.std_threshold
    if t is None:
        return {}
    if isinstance(t, dict):
        unknown = set(t) - set(properties)
        if unknown:
            raise ConfigError(f"std_threshold given for unknown properties {sorted(unknown)}")
        return {k: float(v) for k, v in t.items()}
    return {p: float(t) for p in properties}


def _domain_status(row: dict[str, str], thresholds: dict[str, float], properties: Sequence[str]) -> tuple[str, list[str]]:
    """``out_of_domain`` of a passing row: ``"true"`` with the violations when a std exceeds its
    threshold, ``"unknown"`` when a predicted property has no std (one model: no estimate),
    else ``"false"``."""
    violations = _domain_violations(row, thresholds)
    if violations:
        return "true", violations
    if any(row.get(f"{prop}_std", "") == "" for prop in properties):
        return "unknown", []
    return "false", []


def _domain_violations(row: dict[str, str], thresholds: dict[str, float]) -> list[str]:
    out = []
    for prop, limit in thresholds.items():
        value = row.get(f"{prop}_std", "")
        if value != "" and float(value) > limit:
            out.append(f"{prop}_std={float(value):.3g}>{limit:.3g}")
    return out


def _iter_chunk_rows(out: Path, n_chunks: int) -> Iterator[dict[str, str]]:
    for k in range(n_chunks):
        yield from read_csv_rows(chunk_path(out, k))


class _Merge:
    """Global de-dup, domain flags and stage counts over the chunk files (pass 1 and 2)."""

    def __init__(self, thresholds: dict[str, float], drop_ood: bool, properties: Sequence[str] = ()):
        self.thresholds, self.drop_ood, self.properties = thresholds, drop_ood, list(properties)
        self.first: dict[str, tuple[str, str]] = {}  # key -> (index, id) of first occurrence

    def finalize(self, row: dict[str, str]) -> dict[str, str]:
        """Apply de-dup (input order) and the domain check to one chunk row."""
        key = row["inchikey"]
        if key:
            first_index, first_id = self.first.setdefault(key, (row["index"], row["id"]))
            if first_index != row["index"]:
                row.update(status="fail", failed_stage="duplicate", reason=f"duplicate_of:{first_id}")
        if row["status"] == "pass":
            row["out_of_domain"], violations = _domain_status(row, self.thresholds, self.properties)
        else:
            row["out_of_domain"], violations = "", []
        if violations and self.drop_ood:
            row.update(status="fail", failed_stage="domain", reason="out_of_domain:" + ",".join(violations))
        return row


def _stage_counts(rows_failed_at: dict[str, int], n_read: int, n_selected: int, scored: bool,
                  embed: bool, n_ood: int, n_unknown: int = 0) -> dict[str, int]:
    """Molecules left after each stage (cumulative). ``in_domain`` only when every scored
    molecule has a std (a single model has no estimate: no in-domain count at all)."""
    left = n_read
    counts = {"read": n_read}
    for stage, failed in (("standardized", ("read", "standardize", "error")), ("unique", ("duplicate",)),
                          ("filters", ("filters",)), ("3d", ("3d",)), ("scored", ("score",))):
        left -= sum(rows_failed_at.get(s, 0) for s in failed)
        if (stage == "3d" and not embed) or (stage == "scored" and not scored):
            continue
        counts[stage] = left
    if scored and not n_unknown:
        counts["in_domain"] = left - n_ood  # flagged rows, whether dropped or kept
    counts["selected"] = n_selected
    return counts


def _sample(samples: dict[str, list[float]], seen: dict[str, int], rng: random.Random,
            name: str, text: str) -> None:
    """Reservoir sample (deterministic seed) of a numeric column for the report."""
    if text == "":
        return
    value = float(text)
    n = seen[name] = seen.get(name, 0) + 1
    bucket = samples.setdefault(name, [])
    if len(bucket) < _SAMPLE:
        bucket.append(value)
    elif (j := rng.randrange(n)) < _SAMPLE:
        bucket[j] = value


def reason_categories(reason: str) -> list[str]:
    """Short categories of a ``reason`` cell: ``"lipinski:2 violations;alert:pains:quinone_A(370)"``
    -> ``["lipinski", "alert (pains)"]``; ``"error:ValueError:..."`` -> ``["error (ValueError)"]``."""
    categories = []
    for part in reason.split(";"):
        words = part.split(":")
        if words[0] in ("alert", "error", "standardize_failed") and len(words) > 1 and words[1]:
            categories.append(f"{words[0]} ({words[1]})")
        elif words[0]:
            categories.append({"duplicate_of": "duplicate"}.get(words[0], words[0]))
    return categories


def _warn_if_kappa_has_no_std(cfg: ScreenConfig, candidates: list[dict[str, str]], properties: list[str]) -> None:
    """``kappa`` > 0 asks for ranking by mean ± kappa·std; with one plain model there is no std,
    so the ranking is by the mean alone: say so instead of ranking silently without it."""
    columns = [f"{o.name}_std" for o in cfg.objectives() if o.name in properties]
    if cfg.kappa > 0 and columns and candidates and not any(r.get(c) for r in candidates for c in columns):
        warnings.warn(f"kappa {cfg.kappa:g} has no effect: the model gives no uncertainty (one model without ensemble "
                      "heads), so molecules are ranked by the mean alone; for a std, screen with a committee (repeat "
                      "--model: --model a.molequi --model b.molequi) or with a model trained with "
                      "'molequi train --ensemble-heads 4'", stacklevel=3)


def _merge(out: Path, n_chunks: int, cfg: ScreenConfig, properties: list[str],
           units: dict[str, str] | None = None) -> ScreenResult:
    """Pass 1 ranks the unique passing molecules, pass 2 writes the outputs."""
    thresholds = _thresholds(cfg, properties)
    objective_columns = {c for o in cfg.objectives()
                         for c in ((f"{o.name}_mean", f"{o.name}_std") if o.name in properties else (o.name,))}
    merge = _Merge(thresholds, cfg.drop_out_of_domain, properties)
    candidates: list[dict[str, str]] = []  # one small record per passing molecule
    for row in _iter_chunk_rows(out, n_chunks):
        row = merge.finalize(row)
        if row["status"] == "pass":
            record = {c: row.get(c, "") for c in objective_columns}
            record.update(index=row["index"], smiles=row["smiles"])
            candidates.append(record)
    _warn_if_kappa_has_no_std(cfg, candidates, properties)
    ranking = rank_rows(candidates, cfg.objectives(), cfg.multi, cfg.kappa, cfg.uncertainty)
    order = np.argsort(ranking.rank, kind="stable")
    if cfg.diverse and len(order) > cfg.top:
        pool = order[: cfg.top * cfg.diversity_pool]
        chosen = pool[diverse_pick([candidates[i]["smiles"] for i in pool], cfg.top)]
    else:
        chosen = order[: cfg.top]
    by_index = {candidates[i]["index"]: i for i in range(len(candidates))}
    selected = {candidates[i]["index"] for i in chosen}
    del candidates

    pred_columns = [f"{p}_{s}" for p in properties for s in ("mean", "std")]
    rank_columns = [c for c in RANK_COLUMNS if c != "pareto_rank" or cfg.multi == "pareto"]
    columns = list(BASE_COLUMNS + FILTER_COLUMNS + EMBED_COLUMNS) + pred_columns + rank_columns
    merge = _Merge(thresholds, cfg.drop_out_of_domain, properties)
    top_rows: list[dict[str, str]] = []
    failed_at: dict[str, int] = {}
    rejections: dict[str, dict[str, int]] = {}
    samples: dict[str, list[float]] = {}
    seen: dict[str, int] = {}
    rng = random.Random(0)
    n_read = n_ood = n_unknown = 0

    def final_rows() -> Iterator[dict[str, str]]:
        nonlocal n_read, n_ood, n_unknown
        for row in _iter_chunk_rows(out, n_chunks):
            row = merge.finalize(row)
            n_read += 1
            failed_at[row["failed_stage"]] = failed_at.get(row["failed_stage"], 0) + 1
            if row["status"] != "pass":
                reasons = rejections.setdefault(row["failed_stage"] or "unknown", {})
                for category in reason_categories(row["reason"]):
                    reasons[category] = reasons.get(category, 0) + 1
            n_ood += row["out_of_domain"] == "true"
            n_unknown += row["out_of_domain"] == "unknown"
            i = by_index.get(row["index"]) if row["status"] == "pass" else None
            if i is not None:
                row["objective"] = format(float(ranking.score[i]), ".8g")
                row["rank"] = str(int(ranking.rank[i]))
                if ranking.pareto_rank is not None:
                    row["pareto_rank"] = str(int(ranking.pareto_rank[i]))
                row["selected"] = "true" if row["index"] in selected else "false"
                if row["index"] in selected:
                    top_rows.append(dict(row))
            for name in (*NUMERIC_COLUMNS, *pred_columns):
                _sample(samples, seen, rng, name, row.get(name, ""))
            yield row

    write_csv_atomic(out / "scored.csv", columns, final_rows())
    top_rows.sort(key=lambda r: int(r["rank"]))
    failed_at.pop("", None)
    counts = _stage_counts(failed_at, n_read, len(top_rows), bool(properties), cfg.stage.embed_3d, n_ood, n_unknown)
    n_passed = n_read - sum(failed_at.values())
    return ScreenResult(out, n_read, n_passed, counts, top_rows, columns, cfg.to_json(), samples,
                        coverage=seen, rejections=rejections, units=dict(units or {}))


def _calibrated(cfg: ScreenConfig, scorers: Sequence[Scorer], validation_atoms, quantile: float) -> ScreenConfig:
    """Replace ``std_threshold`` by its calibration on validation molecules (if given), else by
    the thresholds a scorer's std calibration carries (``in_domain_std``: the 95th percentile
    of the calibrated std on the labelled structures ``molequi calibrate`` was fitted on)."""
    if cfg.std_threshold is not None:
        return cfg
    if validation_atoms is None:
        thresholds = {prop: float(limit) for scorer in scorers
                      for prop, limit in (getattr(scorer, "in_domain_std", None) or {}).items()}
        return dataclasses.replace(cfg, std_threshold=thresholds) if thresholds else cfg
    thresholds: dict[str, float] = {}
    for scorer in scorers:
        thresholds.update(calibrate_std_threshold(scorer, list(validation_atoms), quantile, cfg.batch_size))
    return dataclasses.replace(cfg, std_threshold=thresholds)


def screen(candidates: str | Path | CandidateSource, scorers: Sequence[Scorer] = (),
           objective: str | Sequence[str] | None = None, sa_max: float | None = 4.5,
           alerts: Sequence[str] = ("pains", "brenk"), top: int = 100, workers: int = 1,
           scheduler: str | None = None, out: str | Path = "screen_out", *,
           config: ScreenConfig | None = None, validation_atoms: Sequence | None = None,
           std_quantile: float = 0.95, **settings) -> ScreenResult:
    """Screen candidate molecules and write ``scored.csv``, ``top.sdf``, ``report.html`` to ``out``.

    ``candidates``: a file (SMILES/CSV/TSV/SDF, optionally .gz) or a built-in
    pool (``moses:train``, ``moses:test``, ``moses:test_scaffolds``, ``qm9``).
    ``scorers``: objects following :class:`~molequi.search.score.Scorer`; with
    none, molecules are ranked by a filter value (default ``qed:max``).
    ``objective``: ``"gap:max"``, ``"sa_score:min"``, ``"gap:target=3..5"`` or a
    list of them.  ``sa_max``: SA score cut-off (unitless, 1..10; None = off).
    ``validation_atoms``: molecules whose committee std calibrates the
    out-of-domain threshold at quantile ``std_quantile`` when
    ``std_threshold`` is not given.  Further settings (``chunk_size``,
    ``kappa``, ``tautomers``, ``embed_3d``, ``overwrite``...) are fields of
    :class:`ScreenConfig` / :class:`StageConfig`; or pass a whole ``config``.
    """
    scorers = list(scorers)
    properties = check_scorers(scorers)
    if config is None:
        if objective is None:
            if scorers:
                raise ConfigError(f"give an objective for the predicted properties {properties}, "
                                 f"e.g. '{properties[0]}:max'")
            objective = "qed:max"
        config = build_config(objective=objective, sa_max=sa_max, alerts=tuple(alerts), top=top,
                              workers=workers, scheduler=scheduler, **settings)
    elif settings:
        raise ConfigError("pass either config=... or individual settings, not both")
    if scorers and not config.stage.embed_3d:
        raise ConfigError("scorers need 3D structures: embed_3d must be on (drop --no-3d)")
    _check_objectives(config, properties)
    config = _calibrated(_with_model_elements(config, scorers), scorers, validation_atoms, std_quantile)
    _thresholds(config, properties)  # validate property names early

    source = candidates if isinstance(candidates, CandidateSource) else \
        CandidateSource(str(candidates), config.smiles_column, config.id_column)
    out = Path(out)
    with locked_out_dir(out):
        # inputs and models identified by content (SHA-256), not by path, size or name
        chunk_settings = {"stage": config.stage.to_json(), "chunk_size": config.chunk_size,
                          "input": source.identity(), "scorers": [scorer_identity(s) for s in scorers]}
        chunk_hash = json_digest(chunk_settings)[:16]
        manifest = {"chunk_hash": chunk_hash, "chunk_settings": chunk_settings, "input_files": source.describe(),
                    "settings": config.to_json()}
        prepare_out_dir(out, chunk_hash, manifest, config.overwrite)
        n_chunks = _run_chunks(source, config, scorers, properties, out)
        result = _merge(out, n_chunks, config, properties, prediction_units(scorers))

        write_top_sdf(out / "top.sdf", result.top, properties)
        write_report(out / "report.html", result)
    if result.n_passed == 0:
        warnings.warn(f"screening: all {result.n_read} molecules failed; see the 'reason' column of "
                      f"{out / 'scored.csv'}", RuntimeWarning, stacklevel=2)
    return result


def _run_chunks(source: CandidateSource, cfg: ScreenConfig, scorers: Sequence[Scorer],
                properties: list[str], out: Path) -> int:
    """Process and score every unfinished chunk; returns the number of chunks of the input."""
    done = finished_chunks(out)
    columns = _chunk_columns(properties)
    n_chunks = 0

    def todo() -> Iterator[tuple[int, list]]:
        nonlocal n_chunks
        for k, chunk in enumerate(chunked(iter(source), cfg.chunk_size)):
            n_chunks = k + 1
            if k not in done:
                yield k, chunk

    progress = _ScreenProgress(source, cfg, done, out) if cfg.progress else None
    with chunk_runner(cfg.stage, cfg.workers, cfg.scheduler) as run:
        try:
            for k, rows in run(todo()):
                _score_chunk(rows, scorers, properties, cfg.batch_size)
                write_csv_atomic(chunk_path(out, k), columns, rows)
                if progress is not None:
                    progress.update(rows)
        finally:
            if progress is not None:
                progress.close()
    return n_chunks


class _ScreenProgress:
    """A tqdm bar on a terminal, else a progress line every 30 s; both with the total (the
    records are counted first, without parsing them) and an ETA. Says when a run resumes."""

    def __init__(self, source: CandidateSource, cfg: ScreenConfig, done: set[int], out: Path):
        import sys

        from molequi.progress import ProgressLines, is_terminal

        self.total = source.count()
        size = cfg.chunk_size
        initial = sum(min(size, self.total - k * size) for k in done if k * size < self.total)
        if done:
            print(f"screen: resuming {out}: {len(done)} chunk(s), {initial:,} of {self.total:,} molecules "
                  "already screened", file=sys.stderr, flush=True)
        self.n_done = self.n_pass = 0
        if is_terminal():
            from tqdm.auto import tqdm

            self.bar, self.lines = tqdm(total=self.total, initial=initial, unit="mol", desc="screen",
                                        dynamic_ncols=True), None
        else:
            self.bar, self.lines = None, ProgressLines("screen", self.total, "mol", initial=initial)

    def update(self, rows: list[dict]) -> None:
        self.n_done += len(rows)
        self.n_pass += sum(r["status"] == "pass" for r in rows)
        passed = f"passed {self.n_pass / max(self.n_done, 1):.1%}"
        if self.bar is not None:
            self.bar.update(len(rows))
            self.bar.set_postfix_str(passed, refresh=False)
        else:
            self.lines.update(self.lines.initial + self.n_done, extra=passed)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        else:
            self.lines.close()
