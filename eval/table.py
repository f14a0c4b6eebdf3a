"""The results table as data: rows of the results store -> `Table` (pure; writers live in eval/report.py).

Rows: models in order pivot, experts, joint, merges (then anything else).
Columns:
  benchmarks   each benchmark's primary metric, in-source benchmarks first (`pm_cls_<s>`, else `pm_mc_<s>`);
               accuracy-type values in %; per-source NLL benchmarks (`pm_nll_<s>`) are summarised in `NLL`.
  Average      mean over the %-columns.
  In-source    mean over sources of the in-source benchmark (only where other %-columns make it differ from
               Average, e.g. pm_easyvqa beside the per-view k-way tasks).
  Norm.        mean over sources of score(model, in-source s) / score(expert:s, in-source s), in %.
  % joint      mean over sources of score(model, in-source s) / score(joint, in-source s), in %: the joint
               projector of the same scenario (trained on the union) as the reference, defined in every regime.
  Retention    gain retention: mean over sources of (model - pivot) / (expert:s - pivot) on the in-source
               benchmark, in % (100 = keeps every expert's gain, 0 = no better than the pivot). Only sources
               whose expert beats the pivot beyond the 95 % interval of that gain count; the others are left
               out ("n/a", listed in `undefined_retention`): a ratio over a gain within its noise is no number.
  NLL          mean over sources of the held-out caption NLL (nats per caption; lower is better).
Cells: mean over seeds, sample std over seeds (`std`, None with one seed), and a 95 % bootstrap interval
(`lo`, `hi`) over items - and over seeds where there are several - wherever the store holds per-item values
(eval/stats.py). A missing cell is absent (shown "–"), never 0.
`comparisons`: the reference merge (PivotMerge) against every other row on the pooled in-source items:
difference in points with its paired 95 % interval and a p-value (exact McNemar on 0/1 items).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from eval import stats
from pivotmerge.model_id import JOINT, PIVOT, ModelId, kind_of, model_order

RAW_SCALE_PREFIXES = ("mme_score", "mme_perception_score", "mme_cognition_score", "score_")
LOWER_IS_BETTER = ("nll",)
IN_SOURCE_PREFIXES = ("pm_cls_", "pm_mc_")   # first match is a source's in-source benchmark
NLL_PREFIX = "pm_nll_"
REFERENCE_MERGE = str(ModelId.merge("pivotmerge"))
SUMMARY_COLUMNS = ("Average", "In-source", "Norm.", "% joint", "Retention", "NLL")


@dataclass
class Cell:
    mean: float
    std: float | None
    n: int                      # seeds
    lo: float | None = None     # 95 % bootstrap interval (same units as mean)
    hi: float | None = None

    @property
    def half_width(self) -> float | None:
        if self.lo is None or self.hi is None or math.isnan(self.lo):
            return None
        return (self.hi - self.lo) / 2


@dataclass
class Comparison:
    model: str
    difference: float           # reference - model, in points
    lo: float
    hi: float
    p_value: float
    n_items: int
    test: str

    @property
    def verdict(self) -> str:
        if self.p_value >= 0.05 or self.lo <= 0 <= self.hi:
            return "no significant difference"
        return "reference better" if self.difference > 0 else "reference worse"


@dataclass
class Table:
    models: list[str]
    benchmarks: list[str]
    metrics: dict[str, str]                      # benchmark -> metric shown
    cells: dict[tuple[str, str], Cell]           # (model, benchmark) -> cell; absent = missing
    summaries: dict[str, dict[str, Cell]] = field(default_factory=dict)   # column -> model -> cell
    best: dict[str, set[str]] = field(default_factory=dict)   # column -> merged models in bold
    in_source: dict[str, str] = field(default_factory=dict)   # source -> its in-source benchmark
    nll_benchmarks: dict[str, str] = field(default_factory=dict)   # source -> pm_nll_<source>
    retention_by_source: dict[tuple[str, str], Cell] = field(default_factory=dict)
    undefined_retention: list[str] = field(default_factory=list)
    reference: str | None = None
    comparisons: list[Comparison] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)

    @property
    def average(self) -> dict[str, Cell]:
        return self.summaries.get("Average", {})

    @property
    def normalized(self) -> dict[str, Cell]:
        return self.summaries.get("Norm.", {})

    @property
    def retention(self) -> dict[str, Cell]:
        return self.summaries.get("Retention", {})

    def cell(self, model: str, column: str) -> Cell | None:
        if column in SUMMARY_COLUMNS:
            return self.summaries.get(column, {}).get(model)
        return self.cells.get((model, column))

    @property
    def columns(self) -> list[str]:
        return self.benchmarks + [c for c in SUMMARY_COLUMNS if self.summaries.get(c)]

    def lower_is_better(self, column: str) -> bool:
        return column == "NLL" or self.metrics.get(column) in LOWER_IS_BETTER


def short_name(benchmark: str) -> str:
    """A benchmark's column label: the embedded suite's `pm_` prefix dropped."""
    return benchmark[3:] if benchmark.startswith("pm_") else benchmark


def is_percent(metric: str) -> bool:
    return not metric.startswith(RAW_SCALE_PREFIXES) and metric not in LOWER_IS_BETTER


def _seed_stats(values: list[float]) -> tuple[float, float | None, int]:
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
    return mean, std, len(values)


def _cell(values: list[float], replicates: np.ndarray | None) -> Cell:
    mean, std, n = _seed_stats(values)
    lo, hi = stats.interval(replicates) if replicates is not None else (None, None)
    return Cell(mean, std, n, lo, hi)


class _Store:
    """Latest value and items per (model, benchmark, seed), in display units."""

    def __init__(self, rows: list[dict], metric: str):
        self.values: dict[tuple[str, str], dict[int, float]] = {}
        self.items: dict[tuple[str, str], dict[int, np.ndarray]] = {}
        self.metrics: dict[str, str] = {}
        order_models, self.order_benchmarks = [], []
        for row in rows:   # later rows win (stores are read oldest run first)
            value = row.get("value")
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            bench = row["benchmark"]
            wanted = row.get("primary", False) if metric == "primary" else row["metric"] == metric
            if not wanted:
                continue
            self.metrics.setdefault(bench, row["metric"])
            if row["metric"] != self.metrics[bench]:
                continue
            scale = 100.0 if is_percent(row["metric"]) else 1.0
            seed = row.get("seed", 0)
            self.values.setdefault((row["model"], bench), {})[seed] = float(value) * scale
            items = row.get("items")
            bucket = self.items.setdefault((row["model"], bench), {})
            if items:
                bucket[seed] = np.asarray(items, dtype=float) * scale
            else:
                bucket.pop(seed, None)
            order_models.append(row["model"])
            if bench not in self.order_benchmarks:
                self.order_benchmarks.append(bench)
        self.models = model_order(order_models)
        self._resamplers: dict[tuple[int, ...], stats.Resampler] = {}

    def replicates(self, model: str, bench: str) -> np.ndarray | None:
        seeds = tuple(sorted(self.values.get((model, bench), {})))
        per_seed = self.items.get((model, bench), {})
        if not seeds or any(s not in per_seed for s in seeds):
            return None
        if seeds not in self._resamplers:
            self._resamplers[seeds] = stats.Resampler(list(seeds))
        return self._resamplers[seeds].replicates(bench, per_seed)


def _mean_of(parts: list[np.ndarray | None]) -> np.ndarray | None:
    return None if not parts or any(p is None for p in parts) else np.mean(parts, axis=0)


def _summary(store: _Store, model: str, benches: list[str], per_seed_value) -> Cell | None:
    """A summary over several benchmarks: per-seed value from `per_seed_value(seed)`, interval from the mean
    of the benchmarks' bootstrap replicates."""
    if not benches or not all((model, b) in store.values for b in benches):
        return None
    seeds = sorted(set.intersection(*(set(store.values[(model, b)]) for b in benches)))
    values = [v for v in (per_seed_value(seed) for seed in seeds) if v is not None]
    if not values:
        return None
    return _cell(values, _mean_of([store.replicates(model, b) for b in benches]))


def build_table(rows: list[dict], metric: str = "primary", reference: str = REFERENCE_MERGE) -> Table:
    """Rows of the results store -> Table (pure). `metric`: 'primary' or one metric name for every column."""
    store = _Store(rows, metric)
    benches = store.order_benchmarks
    nll = {b[len(NLL_PREFIX):]: b for b in benches if b.startswith(NLL_PREFIX)}
    in_source: dict[str, str] = {}
    for prefix in IN_SOURCE_PREFIXES:
        for b in benches:
            if b.startswith(prefix):
                in_source.setdefault(b[len(prefix):], b)
    shown = [b for b in benches if b not in nll.values()]
    rank = {b: i for i, b in enumerate(in_source.values())}
    shown.sort(key=lambda b: (0 if b in rank else 1, rank.get(b, benches.index(b))))
    cells = {key: _cell(list(values.values()), store.replicates(*key)) for key, values in store.values.items()}
    table = Table(store.models, shown, {b: store.metrics[b] for b in benches}, cells, in_source=in_source,
                  nll_benchmarks=nll, seeds=sorted({s for v in store.values.values() for s in v}))

    percent = [b for b in shown if is_percent(store.metrics[b])]
    mean_over = lambda model, bs: lambda seed: (  # noqa: E731 - a small closure per summary
        sum(store.values[(model, b)][seed] for b in bs) / len(bs))
    expert = {s: str(ModelId.expert(s)) for s in in_source}
    expert_ref = {s: cells[(expert[s], b)].mean for s, b in in_source.items()
                  if (expert[s], b) in cells and cells[(expert[s], b)].mean > 0}
    pivot_ref = {s: cells[(str(PIVOT), b)].mean for s, b in in_source.items() if (str(PIVOT), b) in cells}
    retained = [s for s in expert_ref if s in pivot_ref and _gain_is_real(store, expert[s], in_source[s])]
    table.undefined_retention = sorted(s for s in in_source if s not in retained)
    summaries: dict[str, dict[str, Cell]] = {c: {} for c in SUMMARY_COLUMNS}
    for model in store.models:
        if (cell := _summary(store, model, percent, mean_over(model, percent))) is not None:
            summaries["Average"][model] = cell
        own = list(in_source.values())
        if own and set(own) != set(percent) and (cell := _summary(store, model, own, mean_over(model, own))):
            summaries["In-source"][model] = cell
        if nll and (cell := _summary(store, model, list(nll.values()), mean_over(model, list(nll.values())))):
            summaries["NLL"][model] = cell
        if expert_ref:
            norm_benches = [in_source[s] for s in expert_ref]
            cell = _summary(store, model, norm_benches, lambda seed, m=model: 100.0 * sum(
                store.values[(m, in_source[s])][seed] / expert_ref[s] for s in expert_ref) / len(expert_ref))
            if cell is not None:
                reps = _mean_of([None if (r := store.replicates(model, in_source[s])) is None else
                                 100.0 * r / expert_ref[s] for s in expert_ref])
                summaries["Norm."][model] = Cell(cell.mean, cell.std, cell.n, *(stats.interval(reps) if reps is not None
                                                                               else (None, None)))
        if (cell := _relative_to(store, model, str(JOINT), in_source)) is not None:
            summaries["% joint"][model] = cell
        _retention(table, store, model, retained, summaries["Retention"])
    table.summaries = {c: v for c, v in summaries.items() if v}
    _best(table)
    _compare(table, store, reference)
    return table


def _gain_is_real(store: _Store, expert: str, bench: str) -> bool:
    """The expert beats the pivot on its in-source benchmark beyond the 95 % interval of the gain (paired
    bootstrap on the same items); without per-item values, by the means."""
    pivot = str(PIVOT)
    if (expert, bench) not in store.values or (pivot, bench) not in store.values:
        return False
    reps = [store.replicates(m, bench) for m in (expert, pivot)]
    if any(r is None for r in reps):
        mean = lambda m: sum(store.values[(m, bench)].values()) / len(store.values[(m, bench)])  # noqa: E731
        return mean(expert) > mean(pivot)
    return stats.interval(reps[0] - reps[1])[0] > 0


def _relative_to(store: _Store, model: str, reference: str, in_source: dict[str, str]) -> Cell | None:
    """Mean over sources of 100 * model / reference on the in-source benchmarks (per seed; interval from the
    joint replicates), over the sources where both are scored and the reference is above 0."""
    benches = [b for b in in_source.values() if (model, b) in store.values and (reference, b) in store.values]
    if not benches:
        return None
    seeds = sorted(set.intersection(*(set(store.values[(m, b)]) for b in benches for m in (model, reference))))
    if not seeds:
        return None
    ratios = []
    for seed in seeds:
        refs = [store.values[(reference, b)][seed] for b in benches]
        if min(refs) <= 0:
            return None
        ratios.append(100.0 * sum(store.values[(model, b)][seed] / r for b, r in zip(benches, refs)) / len(benches))
    parts = []
    for b in benches:
        own, ref = store.replicates(model, b), store.replicates(reference, b)
        parts.append(None if own is None or ref is None or (ref <= 0).any() else 100.0 * own / ref)
    return _cell(ratios, _mean_of(parts))


def _retention(table: Table, store: _Store, model: str, sources: list[str], out: dict[str, Cell]) -> None:
    per_source_reps, values_by_seed = [], {}
    for s in sources:
        bench = table.in_source[s]
        pivot, expert = str(PIVOT), str(ModelId.expert(s))
        if (model, bench) not in store.values:
            continue   # e.g. an expert evaluated on its own source only: its per-source cells, no mean
        seeds = sorted(set(store.values[(model, bench)]) & set(store.values[(pivot, bench)])
                       & set(store.values[(expert, bench)]))
        p = table.cells[(pivot, bench)].mean
        e = table.cells[(expert, bench)].mean
        per_seed = [100.0 * float(stats.retention(store.values[(model, bench)][seed], p, e)) for seed in seeds]
        for seed, value in zip(seeds, per_seed):
            values_by_seed.setdefault(seed, []).append(value)
        reps = [store.replicates(m, bench) for m in (model, pivot, expert)]
        ret_reps = None if any(r is None for r in reps) else 100.0 * stats.retention(*reps)
        per_source_reps.append(ret_reps)
        if per_seed:
            table.retention_by_source[(model, s)] = _cell(per_seed, ret_reps)
    seeds = [seed for seed, v in sorted(values_by_seed.items()) if len(v) == len(sources)]
    if sources and seeds:
        reps = _mean_of(per_source_reps)
        out[model] = _cell([sum(values_by_seed[s]) / len(sources) for s in seeds],
                           reps if reps is not None else None)


def _best(table: Table) -> None:
    merged = [m for m in table.models if kind_of(m) == "merge"]
    for column in table.columns:
        scored = [(table.cell(m, column).mean, m) for m in merged if table.cell(m, column) is not None]
        if scored:
            top = (min if table.lower_is_better(column) else max)(v for v, _ in scored)
            table.best[column] = {m for v, m in scored if abs(v - top) < 1e-9}


def _compare(table: Table, store: _Store, reference: str) -> None:
    """Paired test of `reference` against every other row on the pooled in-source items."""
    if reference not in table.models:
        return
    table.reference = reference
    for model in table.models:
        if model == reference:
            continue
        a, b = [], []
        for bench in table.in_source.values():
            ref_items, other_items = store.items.get((reference, bench), {}), store.items.get((model, bench), {})
            for seed in sorted(set(ref_items) & set(other_items)):
                if len(ref_items[seed]) == len(other_items[seed]):
                    a.append(ref_items[seed])
                    b.append(other_items[seed])
        if not a:
            continue
        # in % units: 0/100 per item -> back to 0/1 for the exact test, difference reported in points
        result = stats.paired_comparison(np.concatenate(a) / 100.0, np.concatenate(b) / 100.0,
                                         label=f"{reference}|{model}")
        table.comparisons.append(Comparison(model, 100 * result.difference, 100 * result.lo, 100 * result.hi,
                                            result.p_value, result.n, result.test))


__all__ = ["Cell", "Comparison", "LOWER_IS_BETTER", "REFERENCE_MERGE", "SUMMARY_COLUMNS", "Table", "build_table",
           "is_percent", "model_order"]
