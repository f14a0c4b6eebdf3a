"""Stage 7 (report): the paper table, plots and W&B, regenerated from the results store alone.

`build_table(rows)` is pure: rows of the results store (see eval/stage.py) -> `Table` with
  rows     models in order pivot, experts, joint, merges (then anything else);
  columns  benchmarks (their primary metric), Average (over the accuracy-type columns: every metric except
           MME-style scores), Norm. (each model's in-source score relative to that source's expert: the
           mean over sources s of score(model, pm_mc_s) / score(expert:s, pm_mc_s), in %);
  cells    mean ± std over seeds (sample std; no ± with one seed); accuracy-type values in % (the store keeps
           fractions, `unit: fraction`; table.csv names each column's unit: `<benchmark>_pct`, `pm_mme_score`).
The best merged method of each column is bold. A missing cell is "–" (empty in the CSV), never 0; an
average over a row with a missing cell is missing too.

`python run.py experiment=... report.only=true` rebuilds everything from an existing store
(`eval.report.from`: latest | all | <path>).
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from pivotmerge.errors import ConfigError, DataError

MISSING = "–"
RAW_SCALE_PREFIXES = ("mme_score", "mme_perception_score", "mme_cognition_score", "score_")
IN_SOURCE_PREFIX = "pm_mc_"


@dataclass
class Cell:
    mean: float
    std: float | None
    n: int


@dataclass
class Table:
    models: list[str]
    benchmarks: list[str]
    metrics: dict[str, str]                      # benchmark -> metric shown
    cells: dict[tuple[str, str], Cell]           # (model, benchmark) -> cell; absent = missing
    average: dict[str, Cell] = field(default_factory=dict)
    normalized: dict[str, Cell] = field(default_factory=dict)
    best: dict[str, set[str]] = field(default_factory=dict)   # column -> models in bold

    def cell(self, model: str, column: str) -> Cell | None:
        if column == "Average":
            return self.average.get(model)
        if column == "Norm.":
            return self.normalized.get(model)
        return self.cells.get((model, column))

    @property
    def columns(self) -> list[str]:
        return self.benchmarks + ["Average"] + (["Norm."] if self.normalized else [])


def is_percent(metric: str) -> bool:
    return not metric.startswith(RAW_SCALE_PREFIXES)


def metric_unit(metric: str) -> str:
    """Unit of a metric's value in the results store: 'fraction' (accuracy-type, 0-1) or 'score' (MME-style)."""
    return "fraction" if is_percent(metric) else "score"


def column_unit(table: "Table", column: str) -> str:
    """Unit of a table column's values, named in table.csv's header: 'pct' (fractions x 100) or 'score'."""
    if column in table.metrics:
        return "pct" if is_percent(table.metrics[column]) else "score"
    return {"Average": "pct", "Norm.": "pct"}.get(column, "")


def model_order(models) -> list[str]:
    def rank(name: str) -> int:
        if name == "pivot":
            return 0
        if name.startswith("expert:"):
            return 1
        if name == "joint":
            return 2
        if name.startswith("merge:"):
            return 3
        return 4

    seen = list(dict.fromkeys(models))
    return sorted(seen, key=lambda name: (rank(name), seen.index(name)))


def _stats(values: list[float]) -> Cell:
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
    return Cell(mean, std, len(values))


def build_table(rows: list[dict], metric: str = "primary") -> Table:
    """Rows of the results store -> Table (pure). `metric`: 'primary' or one metric name for every column."""
    # latest value per (model, benchmark, metric, seed): later rows win (stores are read oldest run first)
    latest: dict[tuple, float] = {}
    order_models, order_benchmarks = [], []
    chosen: dict[str, str] = {}
    for row in rows:
        if row.get("value") is None or (isinstance(row["value"], float) and math.isnan(row["value"])):
            continue
        bench = row["benchmark"]
        wanted = row.get("primary", False) if metric == "primary" else row["metric"] == metric
        if not wanted:
            continue
        chosen.setdefault(bench, row["metric"])
        if row["metric"] != chosen[bench]:
            continue
        latest[(row["model"], bench, row["metric"], row.get("seed", 0))] = float(row["value"])
        order_models.append(row["model"])
        if bench not in order_benchmarks:
            order_benchmarks.append(bench)
    models = model_order(order_models)
    benchmarks = sorted(order_benchmarks, key=lambda b: (not b.startswith(IN_SOURCE_PREFIX), order_benchmarks.index(b)))
    per_seed: dict[tuple[str, str], dict] = {}
    for (model, bench, _, seed), value in latest.items():
        scale = 100.0 if is_percent(chosen[bench]) else 1.0
        per_seed.setdefault((model, bench), {})[seed] = value * scale
    cells = {key: _stats(list(values.values())) for key, values in per_seed.items()}
    table = Table(models, benchmarks, chosen, cells)

    percent_columns = [b for b in benchmarks if is_percent(chosen[b])]
    for model in models:
        if percent_columns and all((model, b) in per_seed for b in percent_columns):
            seeds = set.intersection(*(set(per_seed[(model, b)]) for b in percent_columns))
            if seeds:
                table.average[model] = _stats([sum(per_seed[(model, b)][s] for b in percent_columns)
                                               / len(percent_columns) for s in sorted(seeds)])
    # normalized score: in-source benchmark pm_mc_<s> relative to expert:<s>
    in_source = {b[len(IN_SOURCE_PREFIX):]: b for b in benchmarks if b.startswith(IN_SOURCE_PREFIX)}
    reference = {s: cells[(f"expert:{s}", b)].mean for s, b in in_source.items()
                 if (f"expert:{s}", b) in cells and cells[(f"expert:{s}", b)].mean > 0}
    if reference:
        for model in models:
            if not all((model, in_source[s]) in cells for s in reference):
                continue
            seeds = set.intersection(*(set(per_seed[(model, in_source[s])]) for s in reference))
            values = [100.0 * sum(per_seed[(model, in_source[s])][seed] / reference[s] for s in reference)
                      / len(reference) for seed in sorted(seeds)]
            if values:
                table.normalized[model] = _stats(values)
    merged = [m for m in models if m.startswith("merge:")]
    for column in table.columns:
        scored = [(table.cell(m, column).mean, m) for m in merged if table.cell(m, column) is not None]
        if scored:
            top = max(v for v, _ in scored)
            table.best[column] = {m for v, m in scored if abs(v - top) < 1e-9}
    return table


# ---- writers -------------------------------------------------------------------------------------------
def _fmt(cell: Cell | None, plus_minus: str = " ± ") -> str:
    if cell is None:
        return MISSING
    text = f"{cell.mean:.1f}"
    if cell.std is not None:
        text += f"{plus_minus}{cell.std:.1f}"
    return text


def short_name(benchmark: str) -> str:
    return benchmark[3:] if benchmark.startswith("pm_") else benchmark


def to_markdown(table: Table) -> str:
    header = ["Model"] + [short_name(c) for c in table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * len(table.columns)) + "|"]
    for model in table.models:
        cells = []
        for column in table.columns:
            text = _fmt(table.cell(model, column))
            if model in table.best.get(column, set()):
                text = f"**{text}**"
            cells.append(text)
        lines.append("| " + " | ".join([model] + cells) + " |")
    metrics = ", ".join(f"{short_name(b)}: {m}" for b, m in table.metrics.items())
    lines.append("")
    lines.append(f"Metrics: {metrics}. Accuracy-type values in %, mean ± std over seeds; Average over the "
                 f"%-columns; Norm.: in-source MC accuracy relative to the source's expert (%); best merge in bold; "
                 f"{MISSING} = missing.")
    return "\n".join(lines) + "\n"


def to_csv(table: Table) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    header = ["model"]
    for column in table.columns:
        unit = column_unit(table, column)
        name = f"{column}_{unit}" if unit else column     # the unit in the name: pm_mc_digits_pct, pm_mme_score
        header += [name, f"{name}_std", f"{column}_n"]
    writer.writerow(header)
    for model in table.models:
        row = [model]
        for column in table.columns:
            cell = table.cell(model, column)
            if cell is None:
                row += ["", "", ""]   # missing: empty (NaN for pandas), never 0
            else:
                row += [f"{cell.mean:.4f}", "" if cell.std is None else f"{cell.std:.4f}", str(cell.n)]
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
        group = model.split(":")[0]
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
            errs.append(cell.std or 0.0)
        # the references (pivot, experts) are muted so the merged rows stand out
        style = ({"color": "0.55"} if model == "pivot" else
                 {"color": palette(i % palette.N), "alpha": 0.45} if model.startswith("expert:") else
                 {"color": palette(i % palette.N)})
        ax.bar(xs, ys, width=width, yerr=errs if any(errs) else None, label=model, capsize=2, **style)
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


def write_report(table: Table, folder: Path, plot: bool = True) -> dict[str, Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"md": folder / "table.md", "csv": folder / "table.csv", "tex": folder / "table.tex"}
    paths["md"].write_text(to_markdown(table))
    paths["csv"].write_text(to_csv(table))
    paths["tex"].write_text(to_latex(table))
    if plot and table.models and table.benchmarks:
        paths["png"] = plot_bars(table, folder / "scores.png")
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
