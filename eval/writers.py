"""The table as text: Markdown (table.md, printed at the end of a run), CSV (table.csv) and LaTeX (table.tex).

The best merged method of each column is bold. A missing cell is "–" (empty in the CSV), never 0. Units: the
results store keeps fractions, the table shows % (accuracy-type), raw scores (MME) or nats (NLL), and
table.csv names each column's unit (`pm_mc_digits_pct`, `pm_mme_score`, `NLL_nats`).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

from eval.store import metric_unit
from eval.table import Cell, Table, short_name
from pivotmerge.model_id import PIVOT, kind_of

MISSING = "–"


def column_unit(table: Table, column: str) -> str:
    """Unit of a table column, named in table.csv's header: 'pct' (fractions x 100), 'score' or 'nats'."""
    if column in table.metrics:
        unit = metric_unit(table.metrics[column])
        return "pct" if unit == "fraction" else unit
    units = {"Average": "pct", "In-source": "pct", "Norm.": "pct", "% joint": "pct", "Retention": "pct", "NLL": "nats"}
    return units.get(column, "")


def format_cell(cell: Cell | None, plus_minus: str = " ±") -> str:
    """mean ± half-width of the 95 % interval; without per-item values, (sd x) over seeds."""
    if cell is None:
        return MISSING
    text = f"{cell.mean:.1f}"
    if cell.half_width is not None:
        text += f"{plus_minus}{cell.half_width:.1f}"
    elif cell.std is not None:
        text += f" (sd {cell.std:.1f})"
    return text


def format_p(value: float) -> str:
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"] + \
        ["| " + " | ".join(row) + " |" for row in rows]


def legend(table: Table) -> str:
    metrics = ", ".join(f"{short_name(b)}: {m}" for b, m in table.metrics.items() if b in table.benchmarks)
    seeds = f"{len(table.seeds)} seeds" if len(table.seeds) > 1 else "one seed"
    parts = [f"Metrics: {metrics}. Accuracy-type values in % ({seeds}); ±: half-width of the 95 % bootstrap "
             "interval over items" + (" and seeds" if len(table.seeds) > 1 else "") + "; (sd x): std over seeds "
             "where there are no per-item values"]
    if table.average:
        parts.append("Average: over the %-columns")
    if table.summaries.get("In-source"):
        parts.append("In-source: mean over sources of the in-source benchmark")
    if table.normalized:
        parts.append("Norm.: in-source accuracy relative to the source's expert (%)")
    if table.summaries.get("% joint"):
        parts.append("% joint: in-source accuracy relative to the joint projector of the same scenario (%)")
    if table.retention:
        parts.append("Retention: mean over sources of (model - pivot) / (expert - pivot) on the in-source "
                     "benchmark (%; 100 keeps every expert's gain, 0 none), over the sources whose expert beats "
                     "the pivot beyond the 95 % interval of the gain")
    if table.summaries.get("NLL"):
        parts.append("NLL: held-out caption NLL, nats per caption, mean over sources (lower is better)")
    parts.append(f"best merge in bold; {MISSING} = missing")
    return "; ".join(parts) + "."


def main_table(table: Table) -> list[str]:
    rows = []
    for model in table.models:
        cells = []
        for column in table.columns:
            text = format_cell(table.cell(model, column))
            if model in table.best.get(column, set()):
                text = f"**{text}**"
            cells.append(text)
        rows.append([model] + cells)
    return md_table(["Model"] + [short_name(c) for c in table.columns], rows)


def retention_section(table: Table) -> list[str]:
    lines = []
    if table.retention_by_source:
        sources = [s for s in table.in_source if any((m, s) in table.retention_by_source for m in table.models)]
        lines += ["", "Gain retention per source (%, 95 % interval):", ""]
        lines += md_table(["Model"] + sources, [[m] + [format_cell(table.retention_by_source.get((m, s)))
                                                       for s in sources] for m in table.models if m != str(PIVOT)])
    if table.undefined_retention:
        lines += ["", f"Retention n/a for {', '.join(table.undefined_retention)}: its expert does not beat the pivot "
                  "beyond the 95 % interval of the gain."]
    return lines


def nll_section(table: Table) -> list[str]:
    if not table.nll_benchmarks:
        return []
    sources = list(table.nll_benchmarks)
    return ["", "Held-out caption NLL per source (nats per caption, lower is better):", ""] + md_table(
        ["Model"] + sources, [[m] + [format_cell(table.cells.get((m, table.nll_benchmarks[s]))) for s in sources]
                              for m in table.models])


def comparison_section(table: Table) -> list[str]:
    if not table.comparisons:
        return []
    return ["", f"Paired comparison of {table.reference} with every other row on the same in-source items "
            "(difference in points, its paired-bootstrap 95 % interval, exact McNemar p-value):", ""] + md_table(
        ["vs", "difference", "95 % interval", "p", "items", "verdict"],
        [[c.model, f"{c.difference:+.1f}", f"[{c.lo:+.1f}, {c.hi:+.1f}]", format_p(c.p_value), str(c.n_items),
          c.verdict.replace("reference", table.reference)] for c in table.comparisons])


def to_markdown(table: Table) -> str:
    """The table, its legend, then per-source retention, per-source NLL and the paired comparisons."""
    lines = main_table(table) + ["", legend(table)]
    lines += retention_section(table) + nll_section(table) + comparison_section(table)
    return "\n".join(lines) + "\n"


def to_csv(table: Table) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    header = ["model"]
    for column in table.columns:
        unit = column_unit(table, column)
        name = f"{column}_{unit}" if unit else column     # the unit in the name: pm_mc_digits_pct, pm_mme_score
        header += [name, f"{name}_std", f"{name}_ci_lo", f"{name}_ci_hi", f"{column}_n"]
    writer.writerow(header)
    for model in table.models:
        row = [model]
        for column in table.columns:
            cell = table.cell(model, column)
            if cell is None:
                row += ["", "", "", "", ""]   # missing: empty (NaN for pandas), never 0
            else:
                row += [f"{cell.mean:.4f}", "" if cell.std is None else f"{cell.std:.4f}",
                        "" if cell.half_width is None else f"{cell.lo:.4f}",
                        "" if cell.half_width is None else f"{cell.hi:.4f}", str(cell.n)]
        writer.writerow(row)
    return out.getvalue()


def _tex_escape(text: str) -> str:
    return text.replace("\\", "\\textbackslash{}").replace("_", "\\_").replace("&", "\\&").replace("%", "\\%")


def to_latex(table: Table) -> str:
    columns = table.columns
    lines = ["\\begin{tabular}{l" + "r" * len(columns) + "}", "\\toprule",
             " & ".join(["Model"] + [_tex_escape(short_name(c)) for c in columns]) + " \\\\", "\\midrule"]
    previous_group = None
    for model in table.models:
        group = kind_of(model) or model
        if previous_group is not None and group != previous_group:
            lines.append("\\midrule")
        previous_group = group
        cells = []
        for column in columns:
            cell = table.cell(model, column)
            text = "--" if cell is None else format_cell(cell, plus_minus=" $\\pm$ ")
            if cell is not None and model in table.best.get(column, set()):
                text = f"\\textbf{{{text}}}"
            cells.append(text)
        lines.append(" & ".join([_tex_escape(model)] + cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_report(table: Table, folder: Path, plot: bool = True) -> dict[str, Path]:
    """table.md, table.csv, table.tex and (with `plot`) the bar chart and retention plot into `folder`."""
    from eval.plots import plot_bars, plot_retention

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"md": folder / "table.md", "csv": folder / "table.csv", "tex": folder / "table.tex"}
    paths["md"].write_text(to_markdown(table))
    paths["csv"].write_text(to_csv(table))
    paths["tex"].write_text(to_latex(table))
    if plot and table.models and table.benchmarks:
        paths["png"] = plot_bars(table, folder / "scores.png")
        retention = plot_retention(table, folder / "retention.png")
        if retention is not None:
            paths["retention_png"] = retention
    return paths
