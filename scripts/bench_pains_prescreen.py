#!/usr/bin/env python
"""Exploration, not used by molequi: can a pattern-fingerprint prescreen speed up PAINS?

Times RDKit's PAINS ``FilterCatalog`` against the 480 SMARTS of
``rdkit/Data/Pains/wehi_pains.csv`` matched one by one, with and without a
``Chem.PatternFingerprint`` prescreen, on a sample of a built-in pool, and counts the molecules
on which the three disagree. The wehi SMARTS carry explicit ``[#1]`` atoms that RDKit's catalog
handles in its own way, so agreement on a PAINS-free pool (MOSES) proves nothing: run it on
PAINS positives before trusting the prescreen.

    python scripts/bench_pains_prescreen.py --pool moses:test --n 2000
"""

from __future__ import annotations

import argparse
import csv
import gzip
import itertools
import time
from pathlib import Path

from rdkit import Chem, DataStructs, RDConfig

from molequi.search.filters import _alert_catalog
from molequi.search.io import builtin_pool_files


def sample(pool: str, n: int) -> list[Chem.Mol]:
    path = builtin_pool_files(pool)[0]
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as handle:
        next(handle)
        smiles = [line.strip().split(",")[0] for line in itertools.islice(handle, n)]
    return [mol for mol in map(Chem.MolFromSmiles, smiles) if mol is not None]


def per_molecule_ms(function, mols: list[Chem.Mol]) -> tuple[float, list[bool]]:
    start = time.process_time()
    hits = [bool(function(mol)) for mol in mols]
    return 1e3 * (time.process_time() - start) / max(len(mols), 1), hits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", default="moses:test")
    parser.add_argument("--n", type=int, default=2000)
    args = parser.parse_args()
    mols = sample(args.pool, args.n)
    rows = list(csv.reader(open(Path(RDConfig.RDDataDir) / "Pains" / "wehi_pains.csv")))
    queries = [Chem.MolFromSmarts(row[0]) for row in rows]
    query_fps = [Chem.PatternFingerprint(query) for query in queries]
    catalog = _alert_catalog("pains")

    def prescreened(mol: Chem.Mol) -> bool:
        fp = Chem.PatternFingerprint(mol)
        return any(DataStructs.AllProbeBitsMatch(qfp, fp) and mol.HasSubstructMatch(q) for qfp, q in zip(query_fps, queries))

    results = {
        "FilterCatalog PAINS": per_molecule_ms(catalog.HasMatch, mols),
        "wehi SMARTS one by one": per_molecule_ms(lambda m: any(m.HasSubstructMatch(q) for q in queries), mols),
        "wehi SMARTS + PatternFingerprint prescreen": per_molecule_ms(prescreened, mols),
    }
    reference = results["FilterCatalog PAINS"][1]
    print(f"{len(mols)} molecules from {args.pool}; {len(queries)} wehi SMARTS")
    print("| method | ms/molecule (CPU) | molecules with a hit | disagreements with FilterCatalog |")
    print("|---|---:|---:|---:|")
    for name, (ms, hits) in results.items():
        print(f"| {name} | {ms:.2f} | {sum(hits)} | {sum(a != b for a, b in zip(hits, reference))} |")


if __name__ == "__main__":
    main()
