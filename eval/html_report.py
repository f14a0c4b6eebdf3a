"""One self-contained `report.html` per run folder: opens from disk with no network (images inlined).

It holds the results table (every column of `Table`, cells formatted as in table.md), every PNG of the report
folder, the merge diagnostics of each merged projector (its cache entry's `diagnostics/`: every PNG plus the
per-layer numbers of diagnostics.json), the resolved config and the code version. Captions come from file
names, so a plot another stage adds to either folder appears without a change here.
"""
from __future__ import annotations

import base64
import html
import json
import re
import time
from pathlib import Path

from eval.table import Table, short_name
from eval.writers import MISSING, format_cell, legend, to_markdown
from pivotmerge.model_id import ModelId

HTML_FILE = "report.html"
STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 3px 7px; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f4f4f4; } tr:nth-child(even) td { background: #fafafa; }
.figs { display: flex; flex-wrap: wrap; gap: 1em; } figure { margin: 0.5em 0; flex: 1 1 480px; max-width: 900px; }
figcaption { font-size: 0.85em; color: #555; } img { width: 100%; }
.note { font-size: 0.85em; color: #555; } pre { background: #f6f6f6; padding: 1em; overflow-x: auto; font-size: 0.8em; }
"""


def caption(path: Path) -> str:
    """'retention_plot.png' -> 'Retention plot'."""
    words = path.stem.replace("_", " ").replace("-", " ").strip()
    return words[:1].upper() + words[1:]


def figures(paths) -> str:
    """PNG files side by side (wrapping), each with its caption."""
    return f'<div class="figs">{"".join(image(p) for p in paths)}</div>' if paths else ""


def image(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return (f'<figure><img alt="{html.escape(caption(path))}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption(path))} ({html.escape(path.name)})</figcaption></figure>")


def cell_text(table: Table, model: str, column: str) -> str:
    """The cell as table.md shows it (bold = best merge), HTML-escaped."""
    text = html.escape(format_cell(table.cell(model, column)))
    return f"<b>{text}</b>" if model in table.best.get(column, set()) else text


def table_html(table: Table) -> str:
    """Every column of the table, then what table.md adds below its legend (per-source tables, tests)."""
    head = "".join(f"<th>{html.escape(short_name(c))}</th>" for c in table.columns)
    rows = "".join(f"<tr><td>{html.escape(model)}</td>" +
                   "".join(f'<td class="num">{cell_text(table, model, c)}</td>' for c in table.columns) + "</tr>"
                   for model in table.models)
    note = legend(table)
    below = to_markdown(table).split(note, 1)[-1]
    return (f'<table id="results"><thead><tr><th>Model</th>{head}</tr></thead><tbody>{rows}</tbody></table>'
            f'<p class="note">{html.escape(note)}</p>{markdown_html(below)}')


def _inline(text: str) -> str:
    return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(text))


def markdown_html(text: str) -> str:
    """The paragraphs and pipe tables of table.md's text as HTML (bold kept); nothing else is needed."""
    parts, rows = [], []

    def close_table():
        if rows:
            head = "".join(f"<th>{_inline(c)}</th>" for c in rows[0])
            body = "".join("<tr>" + "".join(f'<td class="num">{_inline(c)}</td>' for c in row) + "</tr>"
                           for row in rows[1:])
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            rows.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= set("-:") for c in cells):   # skip the |---|---:| rule
                rows.append(cells)
            continue
        close_table()
        if line.strip():
            parts.append(f"<p>{_inline(line)}</p>")
    close_table()
    return "".join(parts)


def _scalar(value) -> bool:
    return isinstance(value, (int, float, str, bool))


def layer_table(diagnostics: dict) -> str:
    """Per-layer scalars of diagnostics.json (conflict rate, layer weight, norms, ...) as one table."""
    layers = diagnostics.get("layers") or {}
    fields = list(dict.fromkeys(k for rec in layers.values() for k, v in rec.items() if _scalar(v)))
    if not fields:
        return ""

    def show(value) -> str:
        if value is None:
            return MISSING
        return f"{value:.4g}" if isinstance(value, float) else html.escape(str(value))

    head = "".join(f"<th>{html.escape(f)}</th>" for f in fields)
    rows = "".join(f"<tr><td>{html.escape(layer)}</td>" +
                   "".join(f'<td class="num">{show(rec.get(f))}</td>' for f in fields) + "</tr>"
                   for layer, rec in layers.items())
    return f"<table><thead><tr><th>layer</th>{head}</tr></thead><tbody>{rows}</tbody></table>"


def merged_projectors(log_rows: list[dict], stores: list[Path], output_dir: Path) -> dict[str, Path]:
    """name -> cache folder of each merged projector: this run's stage log, else the stores' stages.json
    (report.only). The first entry of a name wins (seed 0 of a multi-seed run)."""
    rows = list(log_rows)
    for store in stores:
        stages = Path(store).parent / "stages.json"
        if Path(store).parent != Path(output_dir) and stages.is_file():
            rows += json.loads(stages.read_text())
    found: dict[str, Path] = {}
    for row in rows:
        if row.get("stage") == "merge" and row.get("path") and row["name"] not in found:
            found[row["name"]] = Path(row["path"])
    return found


def diagnostics_html(merges: dict[str, Path]) -> str:
    parts = []
    for name, folder in merges.items():
        diag_dir = folder / "diagnostics"
        if not diag_dir.is_dir():
            continue
        parts.append(f"<h3>{html.escape(str(ModelId.merge(name)))}</h3>"
                     f'<p class="note">cache entry {html.escape(str(folder))}</p>')
        diag_file = diag_dir / "diagnostics.json"
        if diag_file.is_file():
            parts.append(layer_table(json.loads(diag_file.read_text())))
        parts.append(figures(sorted(diag_dir.glob("*.png"))))
    return "".join(parts) or '<p class="note">No merge diagnostics in this run.</p>'


def run_info_html(output_dir: Path, stores: list[Path]) -> str:
    info_file, config_file = output_dir / "run_info.json", output_dir / "resolved_config.yaml"
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    info["results stores"] = ", ".join(str(s) for s in stores)
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in info.items())
    config = config_file.read_text() if config_file.is_file() else "(no resolved_config.yaml in the run folder)"
    return (f"<table>{rows}</table><details><summary>Resolved config ({html.escape(config_file.name)})</summary>"
            f"<pre>{html.escape(config)}</pre></details>")


def write_html_report(table: Table, output_dir: Path, stores: list[Path], log_rows: list[dict]) -> Path:
    """Write `<output_dir>/report/report.html`; returns its path."""
    output_dir = Path(output_dir)
    folder = output_dir / "report"
    folder.mkdir(parents=True, exist_ok=True)
    title = f"pivotmerge report: {output_dir.parent.name} / {output_dir.name}"
    plots = figures(sorted(folder.glob("*.png"))) or '<p class="note">No plots.</p>'
    body = (f"<h1>{html.escape(title)}</h1>"
            f"<h2>Results</h2>{table_html(table)}"
            f"<h2>Plots</h2>{plots}"
            f"<h2>Merge diagnostics</h2>{diagnostics_html(merged_projectors(log_rows, stores, output_dir))}"
            f"<h2>Run</h2>{run_info_html(output_dir, stores)}"
            f'<p class="note">Written {time.strftime("%Y-%m-%d %H:%M:%S")} by eval/html_report.py.</p>')
    page = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body>{body}</body></html>\n")
    path = folder / HTML_FILE
    path.write_text(page, encoding="utf-8")
    return path
