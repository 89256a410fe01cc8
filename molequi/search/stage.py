"""Per-chunk work: standardise -> filter -> 3D, for one list of candidates.

:func:`process_chunk` is a plain, picklable function of plain data so that it
runs the same in-process and on Dask workers.  Its rows are dicts of
JSON/CSV-friendly values; 3D structures travel as molblocks (text).
"""

from __future__ import annotations

from rdkit import Chem, rdBase

from .config import StageConfig
from .conformers import embed_molecule
from .filters import FILTER_COLUMNS, screen_values
from .io import Candidate
from .standardize import standardize

#: Leading columns of every row, in output order.
BASE_COLUMNS: tuple[str, ...] = (
    "index", "id", "input_smiles", "smiles", "inchikey", "status", "failed_stage", "reason",
)
#: Columns of the 3D stage.
EMBED_COLUMNS: tuple[str, ...] = ("embed_attempts", "mmff_energy", "mmff_converged")


def _empty_row(candidate: Candidate) -> dict[str, object]:
    row: dict[str, object] = dict.fromkeys(BASE_COLUMNS + FILTER_COLUMNS + EMBED_COLUMNS)
    row.update(index=candidate.index, id=candidate.id, input_smiles=candidate.smiles,
               smiles="", inchikey="", status="fail", failed_stage="", reason="", molblock="")
    return row


def _fail(row: dict[str, object], stage: str, reason: str) -> dict[str, object]:
    row.update(status="fail", failed_stage=stage, reason=reason or f"{stage}_failed")
    return row


def process_candidate(candidate: Candidate, cfg: StageConfig,
                      seen: dict[str, str] | None = None) -> dict[str, object]:
    """Run standardise/filters/3D on one candidate; never raises.

    ``seen`` maps de-dup keys already met in this chunk to their id, so that
    duplicates skip the costly 3D step (the global de-dup is redone at merge).
    """
    row = _empty_row(candidate)
    if candidate.error:
        return _fail(row, "read", candidate.error)
    try:
        std = standardize(candidate.smiles, cfg.tautomers)
        if std.mol is None:
            return _fail(row, "standardize", std.reason)
        row.update(smiles=std.smiles, inchikey=std.key)
        values, reasons = screen_values(std.mol, cfg)
        row.update(values)
        if seen is not None:
            if std.key in seen:
                return _fail(row, "duplicate", f"duplicate_of:{seen[std.key]}")
            seen[std.key] = candidate.id
        if reasons:
            return _fail(row, "filters", ";".join(reasons))
        if cfg.embed_3d:
            embedded = embed_molecule(std.mol, cfg.embed_seed, cfg.embed_timeout,
                                      cfg.embed_retries, cfg.mmff_max_iters)
            row.update(embed_attempts=embedded.attempts, mmff_energy=embedded.mmff_energy,
                       mmff_converged=embedded.mmff_converged)
            if embedded.mol is None:
                return _fail(row, "3d", embedded.reason)
            row["molblock"] = Chem.MolToMolBlock(embedded.mol)
        row["status"] = "pass"
        return row
    except Exception as exc:  # a bug or an RDKit corner case must not kill the chunk
        return _fail(row, "error", f"error:{type(exc).__name__}:{str(exc)[:80]}".replace(";", ","))


def process_chunk(candidates: list[Candidate], cfg: StageConfig) -> list[dict[str, object]]:
    """Process one chunk of candidates (in order); one row per candidate."""
    seen: dict[str, str] = {}
    with rdBase.BlockLogs():  # per-molecule failures are recorded, not logged
        return [process_candidate(Candidate(*c), cfg, seen) for c in candidates]
