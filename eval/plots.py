"""The report's plots: scores per benchmark (bars with 95 % intervals) and gain retention per model."""
from __future__ import annotations

from pathlib import Path

from eval.table import Table, is_percent, short_name
from pivotmerge.model_id import PIVOT, kind_of


def _ends(cell) -> tuple[float, float] | None:
    """The ends of a cell's whisker: its 95 % interval, else mean ± the std over seeds, else none."""
    if cell.half_width is not None:
        return cell.lo, cell.hi
    return (cell.mean - cell.std, cell.mean + cell.std) if cell.std else None


def _interval(ax, at: float, ends: tuple[float, float] | None, *, horizontal: bool) -> None:
    """A whisker drawn between its own ends, not as offsets from the bar: a percentile interval of a ratio
    (retention) need not contain the point estimate, and a mean over seeds can sit a rounding error outside
    the pooled interval - matplotlib's error bars refuse both (negative offsets)."""
    if ends is None:
        return
    line = ([ends[0], ends[1]], [at, at]) if horizontal else ([at, at], [ends[0], ends[1]])
    ax.plot(*line, color="black", lw=0.9)
    ax.plot(*line, "|" if horizontal else "_", color="black", ms=5)


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
        xs, ys, ends = [], [], []
        for j, column in enumerate(columns):
            cell = table.cell(model, column)
            if cell is None:
                continue   # a gap, not a zero bar
            xs.append(j + (i - (n_models - 1) / 2) * width)
            ys.append(cell.mean)
            ends.append(_ends(cell))
        # the references (pivot, experts) are muted so the merged rows stand out
        style = ({"color": "0.55"} if model == str(PIVOT) else
                 {"color": palette(i % palette.N), "alpha": 0.45} if kind_of(model) == "expert" else
                 {"color": palette(i % palette.N)})
        ax.bar(xs, ys, width=width, label=model, **style)
        for x, span in zip(xs, ends):
            _interval(ax, x, span, horizontal=False)
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
        ax.barh(y, cell.mean, color=color, alpha=0.8)
        _interval(ax, y, _ends(cell), horizontal=True)
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
