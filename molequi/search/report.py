"""Outputs of the merge: ``top.sdf`` and a self-contained ``report.html``.

The HTML report embeds everything: 2D depictions as inline SVG
(``rdMolDraw2D.MolDraw2DSVG``), histograms as a base64 PNG drawn by matplotlib
without pyplot (no display needed), and a few lines of JavaScript that sort the
table of hits.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Sequence

import numpy as np
from rdkit import Chem
from rdkit.Chem import rdDepictor
from rdkit.Chem.Draw import rdMolDraw2D

from molequi.utils import atomic_path, atomic_write_text

from .conformers import molblock_to_mol
from .result import ScreenResult

#: Columns copied to SD properties of top hits (when present and non-empty).
SDF_PROPERTIES: tuple[str, ...] = (
    "id", "rank", "objective", "pareto_rank", "smiles", "inchikey", "sa_score", "qed", "mw",
    "logp", "tpsa", "mmff_energy", "out_of_domain",
)
_MAX_DEPICTIONS = 48
_MAX_TABLE_ROWS = 500


def write_top_sdf(path: Path, top_rows: Sequence[dict[str, str]], properties: Sequence[str]) -> None:
    """Top hits in rank order: 3D coordinates (or 2D with ``--no-3d``) and scores as SD tags."""
    with atomic_path(path) as tmp:
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


def depict_svg(smiles: str, size: tuple[int, int] = (260, 200), legend: str = "") -> str:
    """2D depiction of a SMILES as an SVG string (no XML header, to inline in HTML)."""
    mol = Chem.MolFromSmiles(smiles)
    drawer = rdMolDraw2D.MolDraw2DSVG(*size)
    if mol is not None:
        drawer.DrawMolecule(mol, legend=legend)
    drawer.FinishDrawing()
    svg = drawer.GetDrawingText()
    return svg[svg.find("<svg"):]


#: Label and unit of each numeric filter/3D column (report and histograms).
COLUMN_INFO: dict[str, tuple[str, str]] = {
    "heavy_atoms": ("heavy atoms", "count"),
    "mw": ("molecular weight", "g/mol"),
    "logp": ("Crippen logP", "unitless"),
    "hbd": ("H-bond donors", "count"),
    "hba": ("H-bond acceptors", "count"),
    "lipinski_violations": ("Lipinski violations", "count"),
    "rotatable_bonds": ("rotatable bonds", "count"),
    "tpsa": ("TPSA", "Å²"),
    "max_ring_size": ("largest ring", "atoms"),
    "sa_score": ("SA score", "1 easy … 10 hard"),
    "qed": ("QED", "0 … 1"),
    "embed_attempts": ("3D embedding attempts", "count"),
    "mmff_energy": ("MMFF94 energy", "kcal/mol"),
}
_INTEGER_COLUMNS = {"heavy_atoms", "hbd", "hba", "lipinski_violations", "rotatable_bonds", "max_ring_size", "embed_attempts"}
#: Which molecules carry a column's value: the filters run as a cascade (see filters.screen_values).
_COVERS = {"sa_score": "passed the rules", "qed": "passed every filter", "embed_attempts": "passed every filter",
           "mmff_energy": "embedded in 3D"}


def percent(part: float, whole: float) -> str:
    """``part`` as a percentage of ``whole`` that never rounds a non-zero share to "0.0 %"
    (two significant digits below 1 %, e.g. "0.0053 %")."""
    if whole <= 0:
        return "–"
    value = 100.0 * part / whole
    if value == 0 or value >= 1:
        return f"{value:.1f} %" if value < 100 or part == whole else f"{value:.2f} %"
    return f"{value:.2g} %"


def column_label(name: str, units: dict[str, str] | None = None) -> str:
    """``"molecular weight, g/mol"``, ``"gap_mean, eV"`` (predictions take ``units`` of the property)."""
    if name in COLUMN_INFO:
        label, unit = COLUMN_INFO[name]
    else:
        prop = name.rsplit("_", 1)[0] if name.endswith(("_mean", "_std")) else name
        label, unit = name.replace("_mean", " (mean)").replace("_std", " (committee std)"), (units or {}).get(prop, "")
    return f"{label}, {unit}" if unit else label


def coverage_note(name: str, n: int, n_read: int, settings: dict | None = None) -> str:
    """``"n = 812 of 1,000 (passed the rules)"``: how many molecules a histogram covers, and which."""
    covers = _COVERS.get(name)
    if name == "sa_score" and (settings or {}).get("stage", {}).get("all_values"):
        covers = None
    if name.endswith(("_mean", "_std")):
        covers = "scored"
    return f"n = {n:,} of {n_read:,}" + (f" ({covers})" if covers else "")


def histograms_figure(samples: dict[str, Sequence[float]], coverage: dict[str, int] | None = None,
                      n_read: int = 0, units: dict[str, str] | None = None, settings: dict | None = None,
                      columns: int = 4):
    """Histograms of several columns in one grid figure (a matplotlib ``Figure``, no pyplot).

    Each panel: x labelled with the column's unit, y "molecules", and a title saying how
    many molecules carry the value (the cascade leaves slow-filter values empty for
    molecules a rule already rejected). Constant columns (a single model's committee std, a
    ring-size rule every molecule meets) are left out: see :func:`constant_columns`.
    """
    from matplotlib.figure import Figure

    names = [n for n, v in samples.items() if len(v) and min(v) != max(v)]  # constant columns: a note instead
    rows = max(1, -(-len(names) // columns))
    figure = Figure(figsize=(3.3 * columns, 2.5 * rows), dpi=80, layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for axis, name in zip(axes, names):
        values = np.asarray(samples[name], dtype=float)
        if name in _INTEGER_COLUMNS:
            low, high = int(values.min()), int(values.max())
            step = max(1, (high - low + 1) // 40)
            bins = np.arange(low - 0.5, high + step + 0.5, step)
        else:
            bins = 40
        axis.hist(values, bins=bins, color="#4c72b0", rwidth=0.85 if name in _INTEGER_COLUMNS else None)
        n = (coverage or {}).get(name, len(values))
        axis.set_title(coverage_note(name, n, n_read or n, settings), fontsize=8)
        axis.set_xlabel(column_label(name, units), fontsize=8)
        axis.set_ylabel("molecules" + (f" (sample of {len(values):,})" if len(values) < n else ""), fontsize=8)
        axis.tick_params(labelsize=7)
    for axis in axes[len(names):]:
        axis.set_visible(False)
    return figure


def constant_columns(samples: dict[str, Sequence[float]]) -> dict[str, float]:
    """Columns whose every sampled value is the same: ``{name: value}``."""
    return {n: float(v[0]) for n, v in samples.items() if len(v) and min(v) == max(v)}


def histograms_png(samples: dict[str, Sequence[float]], coverage: dict[str, int] | None = None,
                   n_read: int = 0, units: dict[str, str] | None = None, settings: dict | None = None) -> str:
    """:func:`histograms_figure` as a base64 PNG (one figure: each ``savefig`` costs ~0.3 s)."""
    figure = histograms_figure(samples, coverage, n_read, units, settings)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _stage_table(counts: dict[str, int]) -> str:
    n_read = max(counts.get("read", 0), 1)
    rows, previous = [], None
    for stage, n in counts.items():
        step = "" if previous is None else percent(n, previous)
        rows.append(f"<tr><td class='l'>{stage}</td><td>{n:,}</td><td>{percent(n, n_read)}</td><td>{step}</td></tr>")
        previous = n
    return ("<table><tr><th>stage</th><th>molecules left</th><th>of read</th><th>of previous stage</th></tr>"
            + "".join(rows) + "</table>")


def _rejection_table(rejections: dict[str, dict[str, int]], n_read: int) -> str:
    if not rejections:
        return "<p>No molecule was rejected.</p>"
    rows = []
    for stage, reasons in rejections.items():
        for reason, n in sorted(reasons.items(), key=lambda item: -item[1]):
            rows.append(f"<tr><td class='l'>{html.escape(stage)}</td><td class='l'>{html.escape(reason)}</td>"
                        f"<td>{n:,}</td><td>{percent(n, n_read)}</td></tr>")
    return ("<p>A molecule that fails several filters counts once under each. The filters run as a cascade: "
            "the SA score, structural alerts and purchasability are computed only for molecules the cheap rules "
            "(elements, size, Lipinski, Veber, ring size) keep, unless <code>--all-values</code> is given.</p>"
            "<table><tr><th>stage</th><th>reason</th><th>molecules</th><th>of read</th></tr>"
            + "".join(rows) + "</table>")


_SORT_SCRIPT = """<script>
// click a column header to sort the table of hits (again: reverse)
document.querySelectorAll('table.sortable th').forEach(function (th, column) {
  th.addEventListener('click', function () {
    var body = th.closest('table').tBodies[0], rows = Array.from(body.rows);
    var up = th.dataset.order !== 'up'; th.dataset.order = up ? 'up' : 'down';
    function key(row) { var c = row.cells[column], v = c.dataset.v !== undefined ? c.dataset.v : c.textContent;
      var x = parseFloat(v); return isNaN(x) ? v : x; }
    rows.sort(function (a, b) { var x = key(a), y = key(b);
      var d = (typeof x === 'number' && typeof y === 'number') ? x - y : String(x).localeCompare(String(y));
      return up ? d : -d; });
    rows.forEach(function (row) { body.appendChild(row); });
  });
});
</script>"""

_HIT_COLUMNS = ("qed", "sa_score", "mw", "logp", "tpsa", "heavy_atoms", "mmff_energy")


def _number_cell(text: str, digits: str = ".4g") -> str:
    if text in ("", None):
        return "<td data-v=''></td>"
    return f"<td data-v='{html.escape(text)}'>{float(text):{digits}}</td>"


def _hits_table(result: ScreenResult, properties: list[str]) -> str:
    units = result.units
    header = ["rank", "structure", "id", "SMILES", "objective"]
    header += [column_label(f"{p}_mean", units).replace(" (mean)", " (mean ± std)" if any(
        row.get(f"{p}_std", "") != "" for row in result.top) else " (mean)") for p in properties]
    extra = [c for c in _HIT_COLUMNS if any(row.get(c) for row in result.top)]
    header += [column_label(c) for c in extra]
    if properties:
        header.append("out of domain")
    rows = []
    for k, row in enumerate(result.top[:_MAX_TABLE_ROWS]):
        picture = depict_svg(row["smiles"], size=(150, 100)) if k < _MAX_DEPICTIONS else ""
        cells = [f"<td data-v='{int(row['rank'])}'>{row['rank']}</td>", f"<td class='mol'>{picture}</td>",
                 f"<td class='l'>{html.escape(row['id'])}</td>", f"<td class='l smiles'>{html.escape(row['smiles'])}</td>",
                 _number_cell(row.get("objective", ""))]
        for prop in properties:
            mean, std = row.get(f"{prop}_mean", ""), row.get(f"{prop}_std", "")
            text = "" if mean == "" else f"{float(mean):.4g}" + (f" ± {float(std):.2g}" if std not in ("",) else "")
            cells.append(f"<td data-v='{html.escape(mean)}'>{text}</td>")
        cells += [_number_cell(row.get(c, "")) for c in extra]
        if properties:
            cells.append(f"<td>{html.escape(row.get('out_of_domain', ''))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    notes = []
    if len(result.top) > _MAX_DEPICTIONS:
        notes.append(f"structures drawn for the first {_MAX_DEPICTIONS}")
    if len(result.top) > _MAX_TABLE_ROWS:
        notes.append(f"{len(result.top) - _MAX_TABLE_ROWS} more hits in top.sdf and scored.csv")
    note = f"<p>{'; '.join(notes)}.</p>" if notes else ""
    return ("<p>Click a column header to sort.</p><table class='sortable'><thead><tr>"
            + "".join(_header_cell(h) for h in header) + "</tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>" + note)


def _header_cell(label: str) -> str:
    """A column header with its unit on a second, smaller line."""
    name, _, unit = label.partition(", ")
    return f"<th>{html.escape(name)}" + (f"<br><small>{html.escape(unit)}</small>" if unit else "") + "</th>"


def _flatten(settings: dict, prefix: str = "") -> list[tuple[str, str]]:
    items = []
    for key in sorted(settings):
        value = settings[key]
        if isinstance(value, dict) and value and all(isinstance(k, str) for k in value) and key == "stage":
            items += _flatten(value, f"{prefix}{key}.")
        else:
            if key == "allowed_elements" and value:
                text = " ".join(Chem.GetPeriodicTable().GetElementSymbol(int(z)) for z in value)
            elif key == "heavy_atoms" and value:
                text = f"{value[0]} … {value[1]}"
            elif isinstance(value, (list, tuple)):
                text = ", ".join(str(v) for v in value) if value else "(none)"
            elif value is None:
                text = "none"
            elif isinstance(value, dict):
                text = ", ".join(f"{k}: {v}" for k, v in value.items())
            else:
                text = str(value)
            items.append((prefix + key, text))
    return items


def _settings_table(settings: dict) -> str:
    rows = "".join(f"<tr><td class='l'>{html.escape(k)}</td><td class='l'>{html.escape(v)}</td></tr>"
                   for k, v in _flatten(settings))
    return f"<table><tr><th>setting</th><th>value</th></tr>{rows}</table>"


def _constant_note(result: ScreenResult) -> str:
    constant = constant_columns(result.samples)
    if not constant:
        return ""
    items = ", ".join(f"{column_label(n, result.units)} = {v:.4g}" for n, v in constant.items())
    return f" The same for every molecule (not drawn): {html.escape(items)}."


def uncertainty_note(result: ScreenResult, properties: Sequence[str]) -> str:
    """One sentence on the predictions' uncertainty: none available (one model), or what the
    stds are (a committee's or an ensemble's spread, calibrated or not) and the domain rule."""
    if not properties:
        return ""
    has_std = any(row.get(f"{p}_std", "") != "" for row in result.top for p in properties) or \
        any(result.samples.get(f"{p}_std") for p in properties)
    if not has_std:
        return ("<p><b>No uncertainty is available</b>: a single model without ensemble heads gives no std, so the "
                "std columns are empty and <code>out_of_domain</code> is <code>unknown</code>. Screen with a "
                "committee (several <code>--model</code>) or a model trained with <code>--ensemble-heads K</code> "
                "for an error bar and an out-of-domain flag.</p>")
    threshold = result.settings.get("std_threshold")
    rule = ("no std threshold is set, so no molecule is flagged out of domain" if threshold in (None, {}) else
            f"a molecule is out of domain when a std exceeds its threshold ({html.escape(str(threshold))})")
    return ("<p>Uncertainty: ± is the unbiased std over the committee members / ensemble heads (calibrated when "
            f"<code>--calibration</code> was given); {rule}.</p>")


def write_report(path: Path, result: ScreenResult) -> None:
    """Write the self-contained HTML report of a run."""
    properties = sorted({c[:-5] for c in result.columns if c.endswith("_mean")})
    plots = (f"<img alt='histograms' src='data:image/png;base64,"
             f"{histograms_png(result.samples, result.coverage, result.n_read, result.units, result.settings)}'/>"
             if result.settings.get("plots", True) and any(result.samples.values())
             else "<p>Histograms not drawn (no values, or plots=False).</p>")
    n_selected = len(result.top)
    units = ", ".join(f"{p}: {result.units.get(p) or 'unit unknown'}" for p in properties)
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>molequi screening report</title>
<style>body{{font-family:sans-serif;margin:1.5em;max-width:1400px}} table{{border-collapse:collapse;margin:6px 0}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right;vertical-align:middle}} td.l{{text-align:left}}
th{{background:#f0f0f0}} table.sortable th{{cursor:pointer}} table.sortable th:hover{{background:#e0e6f0}}
td.smiles{{font-family:monospace;font-size:11px;min-width:180px;max-width:300px;word-break:break-all}}
small{{font-weight:normal;color:#555}} td.mol svg{{display:block}}
img{{margin:2px;max-width:100%}}</style></head><body>
<h1>molequi screening report</h1>
<p>{result.n_read:,} molecules read, {result.n_passed:,} passed every stage ({percent(result.n_passed, result.n_read)}),
{n_selected:,} selected ({percent(n_selected, result.n_read)}).
Full table: <code>scored.csv</code>; hits with {"3D" if result.settings.get("stage", {}).get("embed_3d", True) else "2D"} coordinates: <code>top.sdf</code>.{f" Units of the predictions: {html.escape(units)}." if units else ""}</p>
<h2>Molecules left after each stage</h2>{_stage_table(result.stage_counts)}
<h2>Why molecules were rejected</h2>{_rejection_table(result.rejections, result.n_read)}
<h2>Top hits</h2>{uncertainty_note(result, properties)}{_hits_table(result, properties) if result.top else '<p>No molecule passed.</p>'}
<h2>Distributions</h2><p>Each panel says how many molecules carry the value.{_constant_note(result)}</p><div>{plots}</div>
<h2>Settings</h2>{_settings_table(result.settings)}
{_SORT_SCRIPT}
</body></html>
"""
    atomic_write_text(path, page)
