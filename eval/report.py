"""Stage 7 (report): the paper table, plots and W&B, regenerated from the results store alone.

The table itself (`build_table`: rows, columns, intervals, retention, paired tests) is eval/table.py; this
module writes it (Markdown, CSV, LaTeX, a bar chart and a retention plot) and logs it to W&B. The best merged
method of each column is bold. A missing cell is "–" (empty in the CSV), never 0. Units: the results store
keeps fractions (`unit: fraction`), the table shows % (accuracy-type), raw scores (MME) or nats (NLL), and
table.csv names each column's unit (`pm_mc_digits_pct`, `pm_mme_score`, `NLL_nats`).

`python run.py experiment=... report.only=true` rebuilds everything from an existing store
(`eval.report.from`: latest | all | <path>).
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from eval.table import Cell, Table, build_table, is_percent, model_order  # noqa: F401 - the report's API
from eval.table import LOWER_IS_BETTER
from pivotmerge.errors import ConfigError, DataError
from pivotmerge.model_id import PIVOT, kind_of

MISSING = "–"


def metric_unit(metric: str) -> str:
    """Unit of a metric's value in the results store: 'fraction' (accuracy-type, 0-1), 'nats' (caption NLL)
    or 'score' (MME-style sums)."""
    if metric in LOWER_IS_BETTER:
        return "nats"
    return "fraction" if is_percent(metric) else "score"


def column_unit(table: Table, column: str) -> str:
    """Unit of a table column, named in table.csv's header: 'pct' (fractions x 100), 'score' or 'nats'."""
    if column in table.metrics:
        unit = metric_unit(table.metrics[column])
        return "pct" if unit == "fraction" else unit
    return {"Average": "pct", "Norm.": "pct", "Retention": "pct", "NLL": "nats"}.get(column, "")


# ---- writers -------------------------------------------------------------------------------------------
def _fmt(cell: Cell | None, plus_minus: str = " ±") -> str:
    """mean ± half-width of the 95 % interval; without per-item values, (sd x) over seeds."""
    if cell is None:
        return MISSING
    text = f"{cell.mean:.1f}"
    if cell.half_width is not None:
        text += f"{plus_minus}{cell.half_width:.1f}"
    elif cell.std is not None:
        text += f" (sd {cell.std:.1f})"
    return text


def short_name(benchmark: str) -> str:
    return benchmark[3:] if benchmark.startswith("pm_") else benchmark


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
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
    if table.normalized:
        parts.append("Norm.: in-source accuracy relative to the source's expert (%)")
    if table.retention:
        parts.append("Retention: mean over sources of (model - pivot) / (expert - pivot) on the in-source "
                     "benchmark (%; 100 keeps every expert's gain, 0 none)")
    if table.summaries.get("NLL"):
        parts.append("NLL: held-out caption NLL, nats per caption, mean over sources (lower is better)")
    parts.append(f"best merge in bold; {MISSING} = missing")
    return "; ".join(parts) + "."


def to_markdown(table: Table) -> str:
    rows = []
    for model in table.models:
        cells = []
        for column in table.columns:
            text = _fmt(table.cell(model, column))
            if model in table.best.get(column, set()):
                text = f"**{text}**"
            cells.append(text)
        rows.append([model] + cells)
    lines = _md_table(["Model"] + [short_name(c) for c in table.columns], rows)
    lines += ["", legend(table)]
    if table.retention_by_source:
        sources = [s for s in table.in_source if any((m, s) in table.retention_by_source for m in table.models)]
        lines += ["", "Gain retention per source (%, 95 % interval):", ""]
        lines += _md_table(["Model"] + sources, [[m] + [_fmt(table.retention_by_source.get((m, s))) for s in sources]
                                                 for m in table.models if m != str(PIVOT)])
    if table.undefined_retention:
        lines += ["", f"No retention for {', '.join(table.undefined_retention)}: its expert does not beat the pivot."]
    if table.nll_benchmarks:
        sources = list(table.nll_benchmarks)
        lines += ["", "Held-out caption NLL per source (nats per caption, lower is better):", ""]
        lines += _md_table(["Model"] + sources, [[m] + [_fmt(table.cells.get((m, table.nll_benchmarks[s])))
                                                        for s in sources] for m in table.models])
    if table.comparisons:
        lines += ["", f"Paired comparison of {table.reference} with every other row on the same in-source items "
                  "(difference in points, its paired-bootstrap 95 % interval, exact McNemar p-value):", ""]
        lines += _md_table(["vs", "difference", "95 % interval", "p", "items", "verdict"],
                           [[c.model, f"{c.difference:+.1f}", f"[{c.lo:+.1f}, {c.hi:+.1f}]", _p(c.p_value),
                             str(c.n_items), c.verdict.replace("reference", table.reference)]
                            for c in table.comparisons])
    return "\n".join(lines) + "\n"


def _p(value: float) -> str:
    return "<0.001" if value < 0.001 else f"{value:.3f}"


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
            text = "--" if cell is None else _fmt(cell, plus_minus=" $\\pm$ ")
            if cell is not None and model in table.best.get(column, set()):
                text = f"\\textbf{{{text}}}"
            cells.append(text)
        lines.append(" & ".join([_tex_escape(model)] + cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def plot_bars(table: Table, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [c for c in table.benchmarks if is_percent(table.metrics[c])] + ["Average"]
    n_models = max(1, len(table.models))
    width = 0.8 / n_models
    # Readable at any row count: the figure widens with the bars but stays page-sized; the legend sits outside.
    fig, ax = plt.subplots(figsize=(min(18.0, max(8.0, 0.16 * len(columns) * n_models + 4)), 4.5))
    palette = plt.get_cmap("tab20" if n_models > 10 else "tab10")
    for i, model in enumerate(table.models):
        xs, ys, errs = [], [], []
        for j, column in enumerate(columns):
            cell = table.cell(model, column)
            if cell is None:
                continue   # a gap, not a zero bar
            xs.append(j + (i - (n_models - 1) / 2) * width)
            ys.append(cell.mean)
            errs.append((cell.mean - cell.lo, cell.hi - cell.mean) if cell.half_width is not None
                        else (cell.std or 0.0, cell.std or 0.0))
        # the references (pivot, experts) are muted so the merged rows stand out
        style = ({"color": "0.55"} if model == str(PIVOT) else
                 {"color": palette(i % palette.N), "alpha": 0.45} if kind_of(model) == "expert" else
                 {"color": palette(i % palette.N)})
        yerr = [[e[0] for e in errs], [e[1] for e in errs]] if any(any(e) for e in errs) else None
        ax.bar(xs, ys, width=width, yerr=yerr, label=model, capsize=2, **style)
    ax.set_xticks(range(len(columns)))
    ax.set_xticklabels([short_name(c) for c in columns], rotation=30, ha="right")
    ax.set_ylabel("score (%)")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_retention(table: Table, path: Path) -> Path | None:
    """Gain retention per model (bar, 95 % interval) with each source's retention as a dot."""
    models = [m for m in table.models if m != str(PIVOT) and table.retention.get(m) is not None]
    if not models:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.0, 0.42 * len(models) + 1.4))
    for y, model in enumerate(models):
        cell = table.retention[model]
        color = "0.6" if kind_of(model) != "merge" else ("tab:red" if model == table.reference else "tab:blue")
        xerr = [[cell.mean - cell.lo], [cell.hi - cell.mean]] if cell.half_width is not None else None
        ax.barh(y, cell.mean, xerr=xerr, color=color, alpha=0.8, capsize=3)
        for source in table.in_source:
            dot = table.retention_by_source.get((model, source))
            if dot is not None:
                ax.plot(dot.mean, y, "o", ms=3, color="black", alpha=0.6)
    ax.axvline(0, color="black", lw=0.8)
    ax.axvline(100, color="black", lw=0.8, ls="--")
    ax.set_yticks(range(len(models)))
    ax.set_yticklabels(models, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("gain retention (%): 0 = pivot, 100 = each expert on its own source; dots: sources")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(table: Table, folder: Path, plot: bool = True) -> dict[str, Path]:
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


# ---- store -------------------------------------------------------------------------------------------
def read_rows(stores: list[Path]) -> list[dict]:
    rows = []
    for store in stores:
        path = Path(store) / "results.jsonl"
        if not path.is_file():
            continue
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number} is not a JSON row ({exc})") from exc
    return rows


def find_stores(cfg, output_dir: Path) -> list[Path]:
    """The results stores a report.only run reads (`report.from` or `eval.report.from`)."""
    source = cfg.get("report", {}).get("from") if cfg.get("report") is not None else None
    if source is None:
        source = cfg.eval.get("report", {}).get("from", "latest") if cfg.get("eval") is not None else "latest"
    source = str(source)
    experiment_dir = Path(output_dir).parent
    if source in ("latest", "all"):
        stores = sorted((p.parent for p in experiment_dir.glob("*/results/results.jsonl")
                         if p.parent.parent != Path(output_dir)), key=lambda p: p.parent.name)
        if not stores:
            raise ConfigError(f"report.only=true found no results store under {experiment_dir}/*/results: run the "
                              "eval stage first, or set eval.report.from=<path of a results folder>")
        return stores[-1:] if source == "latest" else stores
    path = Path(source)
    if path.is_dir() and not (path / "results.jsonl").is_file() and (path / "results" / "results.jsonl").is_file():
        path = path / "results"
    if not (path / "results.jsonl").is_file():
        raise ConfigError(f"eval.report.from={source!r}: no results.jsonl in {path}")
    return [path]


def log_wandb(cfg, table: Table, paths: dict[str, Path], stores: list[Path] = ()) -> None:
    from pivotmerge.wandb_logging import log_report_lineage, start_run, sync_hint

    run = start_run(cfg, "report", f"report-{cfg.experiment_name}")
    if run is None:
        return
    import wandb

    columns = ["model"] + table.columns
    data = [[model] + [None if table.cell(model, c) is None else table.cell(model, c).mean for c in table.columns]
            for model in table.models]
    run.log({"results": wandb.Table(columns=columns, data=data)})
    for model in table.models:
        for column in table.columns:
            cell = table.cell(model, column)
            if cell is not None:
                run.summary[f"{model}/{column}"] = cell.mean
    if "png" in paths:
        run.log({"scores": wandb.Image(str(paths["png"]))})
    log_report_lineage(run, stores, paths.values())
    where = run.url if getattr(run, "url", None) else run.dir
    run.finish()
    hint = f"  (offline: `{sync_hint(cfg)}` uploads every run)" if sync_hint(cfg) else ""
    print(f"  W&B: {where}{hint}", flush=True)


def run(ctx) -> None:
    import time

    from eval.html_report import write_html_report

    cfg = ctx.cfg
    started = time.perf_counter()
    output_dir = Path(ctx.output_dir)
    report_only = bool(cfg.get("report", {}).get("only", False)) if cfg.get("report") is not None else False
    stores = find_stores(cfg, output_dir) if report_only else [output_dir / "results"]
    rows = read_rows(stores)
    if not rows:
        raise ConfigError(f"no results rows in {[str(s) for s in stores]}: run the eval stage first")
    report_cfg = cfg.eval.get("report", {}) if cfg.get("eval") is not None else {}
    table = build_table(rows, metric=str(report_cfg.get("table_metric", "primary")))
    paths = write_report(table, output_dir / "report", plot=bool(report_cfg.get("plot", True)))
    paths["html"] = write_html_report(table, output_dir, stores, ctx.log.rows)
    print("\n" + to_markdown(table), flush=True)
    print("Report from " + ", ".join(str(s) for s in stores) + ":\n" +
          "\n".join(f"  {kind:>3}: {path}" for kind, path in paths.items()), flush=True)
    if cfg.get("logger") is not None and cfg.logger.wandb.get("enabled", False):
        log_wandb(cfg, table, paths, stores)
    ctx.log.add("report", f"table ({len(table.models)} models x {len(table.benchmarks)} benchmarks)", None,
                time.perf_counter() - started, str(paths["md"]))
