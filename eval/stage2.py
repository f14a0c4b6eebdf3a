"""Does the ranking of stage-1 merges survive instruction tuning? (experiment=stage2; pure but for the plot)

From the results rows alone: each method's stage-1 score (the stage-1 projector on the in-source k-way
caption benchmarks pm_cls_*, the paper's measure) and its post-SFT score (the tuned model `sft:<model>` on the
VQA benchmarks, pm_easyvqa and pm_vqa_*), both in %, with 95 % bootstrap intervals; the Kendall tau-b between
the merges' two scores with a bootstrap interval (the same resampled items for every model, eval/stats.py);
paired tests of the tuned PivotMerge against every other tuned row on the pooled VQA items; a scatter plot.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from eval import stats
from eval.table import REFERENCE_MERGE, Comparison
from eval.table import _Store as Store  # the one reader of result rows into display units
from pivotmerge.model_id import ModelId, kind_of

STAGE1_PREFIX = "pm_cls_"


def is_vqa(bench: str) -> bool:
    return bench == "pm_easyvqa" or bench.startswith("pm_vqa_")


@dataclass
class Score:
    mean: float
    lo: float | None
    hi: float | None
    replicates: np.ndarray | None = field(default=None, repr=False)


@dataclass
class Stage2:
    methods: list[str]                    # stage-1 model names with both scores, table order
    stage1: dict[str, Score]              # stage-1 projector, in-source k-way captions
    post: dict[str, Score]                # tuned model, VQA
    before: dict[str, Score]              # stage-1 projector on the same VQA benchmarks (what tuning added)
    tau: float | None                     # Kendall tau-b over the merges, stage-1 vs post-SFT
    tau_lo: float | None
    tau_hi: float | None
    merges: list[str]
    comparisons: list[Comparison]         # sft:<reference> vs every other tuned row, pooled VQA items
    reference: str | None

    @property
    def verdict(self) -> str:
        if self.tau is None:
            return "no verdict: fewer than 3 merges have both scores"
        if self.tau_lo is not None and self.tau_lo > 0:
            return "yes: the stage-1 ranking of the merges predicts their post-SFT ranking (interval above 0)"
        if self.tau_hi is not None and self.tau_hi < 0:
            return "reversed: better stage-1 merges are worse after stage 2 (interval below 0)"
        return "not shown: the interval of tau includes 0, so stage 2 may wash the stage-1 differences out"


def kendall_tau(x, y) -> float:
    """Kendall's tau-b (ties in either ranking corrected for); NaN when a ranking is constant."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    i, j = np.triu_indices(len(x), k=1)
    dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    n_x, n_y = np.count_nonzero(dx), np.count_nonzero(dy)
    if n_x == 0 or n_y == 0:
        return math.nan
    return float(np.sum(dx * dy) / math.sqrt(n_x * n_y))


def tau_interval(x_replicates: np.ndarray, y_replicates: np.ndarray) -> tuple[float, float]:
    """95 % percentile interval of tau over bootstrap replicates: arrays (iterations, methods)."""
    taus = np.array([kendall_tau(a, b) for a, b in zip(x_replicates, y_replicates)])
    return stats.interval(taus)


def _score(store: Store, model: str, benches: list[str]) -> Score | None:
    if not benches or any((model, b) not in store.values for b in benches):
        return None
    seeds = sorted(set.intersection(*(set(store.values[(model, b)]) for b in benches)))
    mean = float(np.mean([np.mean([store.values[(model, b)][s] for s in seeds]) for b in benches]))
    parts = [store.replicates(model, b) for b in benches]
    if any(p is None for p in parts):
        return Score(mean, None, None)
    reps = np.mean(parts, axis=0)
    return Score(mean, *stats.interval(reps), replicates=reps)


def analyse(rows: list[dict], reference: str = REFERENCE_MERGE) -> Stage2 | None:
    """The stage-2 analysis of a results store; None when it holds no tuned (`sft:`) model."""
    store = Store(rows, "primary")
    tuned = [m for m in store.models if kind_of(m) == "sft"]
    if not tuned:
        return None
    benches = store.order_benchmarks
    captions = [b for b in benches if b.startswith(STAGE1_PREFIX)]
    vqa = [b for b in benches if is_vqa(b)]
    stage1, post, before = {}, {}, {}
    methods = []
    for model in tuned:
        base = str(ModelId.parse(model).base)
        s1, p, b = _score(store, base, captions), _score(store, model, vqa), _score(store, base, vqa)
        if s1 is None or p is None:
            continue
        methods.append(base)
        stage1[base], post[base] = s1, p
        if b is not None:
            before[base] = b
    merges = [m for m in methods if kind_of(m) == "merge"]
    tau = lo = hi = None
    if len(merges) >= 3:
        tau = kendall_tau([stage1[m].mean for m in merges], [post[m].mean for m in merges])
        if all(stage1[m].replicates is not None and post[m].replicates is not None for m in merges):
            lo, hi = tau_interval(np.stack([stage1[m].replicates for m in merges], axis=1),
                                  np.stack([post[m].replicates for m in merges], axis=1))
    ref = str(ModelId.sft(reference))
    comparisons = _compare(store, ref, [m for m in tuned if m != ref], vqa) if ref in tuned else []
    return Stage2(methods, stage1, post, before, tau, lo, hi, merges, comparisons, ref if ref in tuned else None)


def _compare(store: Store, reference: str, others: list[str], benches: list[str]) -> list[Comparison]:
    out = []
    for model in others:
        a, b = [], []
        for bench in benches:
            ref_items, other_items = store.items.get((reference, bench), {}), store.items.get((model, bench), {})
            for seed in sorted(set(ref_items) & set(other_items)):
                if len(ref_items[seed]) == len(other_items[seed]):
                    a.append(ref_items[seed])
                    b.append(other_items[seed])
        if a:
            r = stats.paired_comparison(np.concatenate(a) / 100.0, np.concatenate(b) / 100.0,
                                        label=f"{reference}|{model}")
            out.append(Comparison(model, 100 * r.difference, 100 * r.lo, 100 * r.hi, r.p_value, r.n, r.test))
    return out


# ---- text and plot -------------------------------------------------------------------------------------
def _fmt(score: Score | None) -> str:
    if score is None:
        return "–"
    return f"{score.mean:.1f}" + (f" [{score.lo:.1f}, {score.hi:.1f}]" if score.lo is not None else "")


def markdown(result: Stage2, figure: str | None = None) -> list[str]:
    lines = ["### Stage 2: does the ranking of merges survive instruction tuning?", "",
             "Stage-1 score: the stage-1 projector on the in-source k-way caption benchmarks (pm_cls_*, %). "
             "Post-SFT score: the same projector after the identical instruction tuning (`sft:<model>`) on the VQA "
             "benchmarks (pm_easyvqa, pm_vqa_*; test images only, %). [95 % bootstrap interval over items].", "",
             "| Model | stage-1 (captions) | VQA before SFT | post-SFT (VQA) |", "|---|---:|---:|---:|"]
    for m in result.methods:
        lines.append(f"| {m} | {_fmt(result.stage1[m])} | {_fmt(result.before.get(m))} | {_fmt(result.post[m])} |")
    lines.append("")
    if result.tau is not None:
        interval = (f", 95 % bootstrap interval [{result.tau_lo:+.2f}, {result.tau_hi:+.2f}]"
                    if result.tau_lo is not None else "")
        lines.append(f"Kendall tau-b between the {len(result.merges)} merges' stage-1 and post-SFT scores: "
                     f"**{result.tau:+.2f}**{interval}. Does stage-1 merge quality predict post-SFT quality? "
                     f"**{result.verdict}**.")
    else:
        lines.append(f"Kendall tau: {result.verdict}.")
    if result.comparisons:
        lines += ["", f"Paired comparison of {result.reference} with every other tuned row on the pooled VQA items "
                  "(difference in points, paired-bootstrap 95 % interval, exact McNemar p):", "",
                  "| vs | difference | 95 % interval | p | items | verdict |", "|---|---:|---:|---:|---:|---:|"]
        name = result.reference
        for c in result.comparisons:
            verdict = c.verdict.replace("reference", name)
            p = "<0.001" if c.p_value < 0.001 else f"{c.p_value:.3f}"
            lines.append(f"| {c.model} | {c.difference:+.1f} | [{c.lo:+.1f}, {c.hi:+.1f}] | {p} | {c.n_items} | "
                         f"{verdict} |")
    if figure:
        lines += ["", f"![stage-1 vs post-SFT score]({figure})"]
    return lines


def plot(result: Stage2, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for m in result.methods:
        s1, p = result.stage1[m], result.post[m]
        xerr = [[s1.mean - s1.lo], [s1.hi - s1.mean]] if s1.lo is not None else None
        yerr = [[p.mean - p.lo], [p.hi - p.mean]] if p.lo is not None else None
        color = "tab:red" if m == REFERENCE_MERGE else ("tab:blue" if kind_of(m) == "merge" else "tab:gray")
        ax.errorbar(s1.mean, p.mean, xerr=xerr, yerr=yerr, fmt="o", color=color, capsize=2)
        ax.annotate(m.split(":", 1)[-1], (s1.mean, p.mean), textcoords="offset points", xytext=(4, 4), fontsize=8)
    title = "stage-1 vs post-SFT score"
    if result.tau is not None:
        title += f" (merges: Kendall tau {result.tau:+.2f})"
    ax.set(xlabel="stage-1: in-source k-way caption accuracy (%)", ylabel="post-SFT: VQA accuracy (%)", title=title)
    ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def section(rows: list[dict], figures: Path, slug: str) -> list[str]:
    """The stage-2 part of a docs/results.md section (empty without tuned models)."""
    result = analyse(rows)
    if result is None:
        return []
    figure = plot(result, figures / f"{slug}_stage2.png") if result.methods else None
    return ["", *markdown(result, f"figures/{figure.name}" if figure else None)]


__all__ = ["Stage2", "analyse", "is_vqa", "kendall_tau", "markdown", "plot", "section", "tau_interval"]
