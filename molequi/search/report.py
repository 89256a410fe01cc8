"""Outputs of the merge: ``top.sdf`` and a self-contained ``report.html``.

The HTML report embeds everything: 2D depictions as inline SVG
(``rdMolDraw2D.MolDraw2DSVG``) and histograms as base64 PNGs drawn with
matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path
from typing import Sequence

from rdkit import Chem
from rdkit.Chem import rdDepictor
from rdkit.Chem.Draw import rdMolDraw2D

from .conformers import molblock_to_mol
from .result import ScreenResult

#: Columns copied to SD properties of top hits (when present and non-empty).
SDF_PROPERTIES: tuple[str, ...] = (
    "id", "rank", "objective", "pareto_rank", "smiles", "inchikey", "sa_score", "qed", "mw",
    "logp", "tpsa", "mmff_energy", "out_of_domain",
)
_MAX_DEPICTIONS = 48


def write_top_sdf(path: Path, top_rows: Sequence[dict[str, str]], properties: Sequence[str]) -> None:
    """Top hits in rank order: 3D coordinates (or 2D with ``--no-3d``) and scores as SD tags."""
    tmp = path.with_name(path.name + ".tmp")
    writer = Chem.SDWriter(str(tmp))
    try:
        for row in top_rows:
            if row.get("molblock"):
                mol = molblock_to_mol(row["molblock"])
            else:
                mol = Chem.MolFromSmiles(row["smiles"])
                rdDepictor.Compute2DCoords(mol)
            mol.SetProp("_Name", row["id"])
            names = list(SDF_PROPERTIES) + [f"{p}_{s}" for p in properties for s in ("mean", "std")]
            for name in names:
                if row.get(name, "") != "":
                    mol.SetProp(name, row[name])
            writer.write(mol)
    finally:
        writer.close()
    os.replace(tmp, path)


def depict_svg(smiles: str, size: tuple[int, int] = (260, 200), legend: str = "") -> str:
    """2D depiction of a SMILES as an SVG string (no XML header, to inline in HTML)."""
    mol = Chem.MolFromSmiles(smiles)
    drawer = rdMolDraw2D.MolDraw2DSVG(*size)
    if mol is not None:
        drawer.DrawMolecule(mol, legend=legend)
    drawer.FinishDrawing()
    svg = drawer.GetDrawingText()
    return svg[svg.find("<svg"):]


def histograms_png(samples: dict[str, Sequence[float]], columns: int = 4) -> str:
    """Histograms of several columns in one grid figure, as a base64 PNG (Agg backend).

    One figure for all columns: each matplotlib ``savefig`` costs ~0.3 s.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    names = [n for n, v in samples.items() if len(v)]
    rows = max(1, -(-len(names) // columns))
    fig = Figure(figsize=(3.0 * columns, 2.1 * rows), dpi=80)
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax, name in zip(axes, names):
        ax.hist(samples[name], bins=40, color="#4c72b0")
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    fig.subplots_adjust(hspace=0.55, wspace=0.3, left=0.04, right=0.98, top=0.94, bottom=0.06)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _stage_table(counts: dict[str, int]) -> str:
    n_read = max(counts.get("read", 0), 1)
    rows, previous = [], None
    for stage, n in counts.items():
        step = "" if previous is None else f"{100.0 * n / max(previous, 1):.1f} %"
        rows.append(f"<tr><td>{stage}</td><td>{n}</td><td>{100.0 * n / n_read:.1f} %</td><td>{step}</td></tr>")
        previous = n
    return ("<table><tr><th>stage</th><th>molecules left</th><th>of read</th><th>of previous</th></tr>"
            + "".join(rows) + "</table>")


def _top_grid(result: ScreenResult, properties: list[str]) -> str:
    cells = []
    for row in result.top[:_MAX_DEPICTIONS]:
        scores = [f"rank {row['rank']}", f"obj {float(row['objective']):.3g}"]
        scores += [f"{p} {float(row[p + '_mean']):.3g}±{float(row[p + '_std']):.2g}"
                   for p in properties if row.get(p + "_mean")]
        caption = html.escape(f"{row['id']} | " + ", ".join(scores))
        cells.append(f"<div class='cell'>{depict_svg(row['smiles'])}<div>{caption}</div></div>")
    more = "" if len(result.top) <= _MAX_DEPICTIONS else f"<p>… {len(result.top) - _MAX_DEPICTIONS} more in top.sdf</p>"
    return "<div class='grid'>" + "".join(cells) + "</div>" + more


def write_report(path: Path, result: ScreenResult) -> None:
    """Write the self-contained HTML report of a run."""
    properties = sorted({c[:-5] for c in result.columns if c.endswith("_mean")})
    plots = (f"<img alt='histograms' src='data:image/png;base64,{histograms_png(result.samples)}'/>"
             if result.settings.get("plots", True) and any(result.samples.values())
             else "<p>Histograms not drawn (no values, or plots=False).</p>")
    settings = html.escape(json.dumps(result.settings, indent=2, sort_keys=True, default=str))
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>molequi screening report</title>
<style>body{{font-family:sans-serif;margin:1.5em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}
.grid{{display:flex;flex-wrap:wrap}} .cell{{width:270px;margin:4px;font-size:11px}}
img{{margin:2px}} pre{{background:#f6f6f6;padding:8px}}</style></head><body>
<h1>molequi screening report</h1>
<p>{result.n_read} molecules read, {result.n_passed} passed every stage, {len(result.top)} selected.
Full table: <code>scored.csv</code>; 3D hits: <code>top.sdf</code>.</p>
<h2>Pass rate per stage</h2>{_stage_table(result.stage_counts)}
<h2>Top hits</h2>{_top_grid(result, properties) if result.top else '<p>No molecule passed.</p>'}
<h2>Distributions (all standardised molecules)</h2><div>{plots}</div>
<h2>Settings</h2><pre>{settings}</pre>
</body></html>
"""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)
