"""The regime map: every method x every regime, from each regime's results store (pure, then writers).

Per regime the paper table is built as usual (eval/table.py); the map keeps, per model:
  accuracy   mean in-source k-way accuracy over the regime's sources, % with its 95 % interval - the headline,
             defined in every regime;
  % joint    that accuracy relative to the joint projector of the same regime (trained on the union of the
             sources from the same pivot): the reference of what one projector can hold;
and, for PivotMerge, its rank among the merges by accuracy with the paired tests on the same items: how many
merges are better beyond the 95 % interval (rank 1 = best or tied-best), and its difference to the pivot.
PivotMerge's own ablations (`merge_variants` whose base is pivotmerge) are not rivals: they are left out of its
rank and shown apart, as PivotMerge minus each ablation with the paired interval (what each component buys).
Where the regimes ran the merge stage's VAL check (`merge_search.val_check`, val_check_seed<n>.json), the map
also shows each merge's VAL loss minus its pivot's per seed - above 0 means worse than the projector it started
from, measured before any test item is read.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from eval.table import REFERENCE_MERGE, Cell, Table, build_table
from pivotmerge.model_id import JOINT, PIVOT, kind_of, model_order


@dataclass
class Standing:
    """PivotMerge in one regime."""

    rank: int                    # by mean accuracy among the merges
    merges: int
    better: list[str]            # merges better than PivotMerge beyond the paired 95 % interval
    worse: list[str]             # merges worse beyond it
    vs_pivot: tuple[float, float, float] | None   # difference in points, its 95 % interval

    @property
    def tied_best(self) -> bool:
        return not self.better


@dataclass
class RegimeMap:
    regimes: list[str]
    models: list[str]
    accuracy: dict[tuple[str, str], Cell] = field(default_factory=dict)     # (model, regime) -> cell
    of_joint: dict[tuple[str, str], Cell] = field(default_factory=dict)
    standing: dict[str, Standing] = field(default_factory=dict)
    tables: dict[str, Table] = field(default_factory=dict)
    descriptions: dict[str, str] = field(default_factory=dict)
    seeds: dict[str, list[int]] = field(default_factory=dict)
    ablations: list[str] = field(default_factory=list)          # the reference's own variants, by model name
    ablation: dict[tuple[str, str], tuple[float, float, float]] = field(default_factory=dict)
    # (variant, regime) -> reference minus variant in points, its paired 95 % interval
    val: dict[str, dict[int, dict]] = field(default_factory=dict)   # regime -> seed -> model -> {kind: VAL loss}


VAL_CHECK_GLOB = "val_check_seed*.json"


def read_val_checks(regime_dir: Path) -> dict[int, dict]:
    """seed -> model -> {loss kind: VAL loss} from the merge stage's val_check_seed<n>.json files of one regime."""
    out = {}
    for path in sorted(Path(regime_dir).glob(VAL_CHECK_GLOB)):
        seed = int(path.stem.removeprefix("val_check_seed"))
        out[seed] = json.loads(path.read_text())["losses"]
    return out


def val_above_pivot(losses: dict[str, dict], model: str, kind: str) -> float | None:
    """`model`'s VAL loss minus the pivot's (> 0: worse than its pivot), None where either is missing."""
    if model not in losses or str(PIVOT) not in losses:
        return None
    return losses[model][kind] - losses[str(PIVOT)][kind]


def ablations_of(merge_variants, reference: str = REFERENCE_MERGE) -> list[str]:
    """Model names of the `merge_variants` built on the reference method (its component ablations)."""
    method = reference.split(":", 1)[1]
    return [f"merge:{name}" for name, spec in (merge_variants or {}).items() if spec.get("base") == method]


def _accuracy(table: Table, model: str) -> Cell | None:
    return table.cell(model, "In-source") or table.cell(model, "Average")


def build_regime_map(rows_by_regime: dict[str, list[dict]], descriptions: dict | None = None,
                     reference: str = REFERENCE_MERGE, ablations=(), val: dict | None = None) -> RegimeMap:
    tables = {name: build_table(rows, reference=reference) for name, rows in rows_by_regime.items()}
    shown = [m for t in tables.values() for m in t.models if kind_of(m) != "expert"]
    result = RegimeMap(list(tables), model_order(shown), tables=tables, descriptions=dict(descriptions or {}),
                       seeds={name: t.seeds for name, t in tables.items()}, ablations=list(ablations),
                       val={name: checks for name, checks in (val or {}).items() if name in tables and checks})
    for name, table in tables.items():
        for model in table.models:
            if (cell := _accuracy(table, model)) is not None:
                result.accuracy[(model, name)] = cell
            if (cell := table.cell(model, "% joint")) is not None:
                result.of_joint[(model, name)] = cell
        if (standing := _standing(table, reference, result.ablations)) is not None:
            result.standing[name] = standing
        for c in table.comparisons:
            if c.model in result.ablations:
                result.ablation[(c.model, name)] = (c.difference, c.lo, c.hi)
    return result


def rivals(regime_map: RegimeMap, regime: str) -> list[str]:
    """The merges with an accuracy in `regime`, the reference's own ablations left out."""
    return [m for m in regime_map.models if kind_of(m) == "merge" and m not in regime_map.ablations
            and (m, regime) in regime_map.accuracy]


def _standing(table: Table, reference: str, ablations) -> Standing | None:
    merges = [m for m in table.models if kind_of(m) == "merge" and m not in ablations
              and _accuracy(table, m) is not None]
    if reference not in merges:
        return None
    order = sorted(merges, key=lambda m: -_accuracy(table, m).mean)
    better = [c.model for c in table.comparisons if c.model in merges and c.verdict == "reference worse"]
    worse = [c.model for c in table.comparisons if c.model in merges and c.verdict == "reference better"]
    pivot = next((c for c in table.comparisons if c.model == str(PIVOT)), None)
    return Standing(order.index(reference) + 1, len(merges), better, worse,
                    None if pivot is None else (pivot.difference, pivot.lo, pivot.hi))


# ---- writers -------------------------------------------------------------------------------------------
def _fmt(cell: Cell | None) -> str:
    from eval.writers import format_cell

    return format_cell(cell)


def to_markdown(regime_map: RegimeMap) -> str:
    from eval.writers import md_table

    regimes = regime_map.regimes
    lines = ["Mean in-source k-way accuracy (%, ± half-width of the 95 % interval over items and seeds):", ""]
    lines += md_table(["Model"] + regimes, [[m] + [_fmt(regime_map.accuracy.get((m, r))) for r in regimes]
                                            for m in regime_map.models])
    lines += ["", "% of the joint projector of the same regime (its accuracy relative to joint's, mean over "
              "sources; 100 = as good as training one projector on the union):", ""]
    lines += md_table(["Model"] + regimes, [[m] + [_fmt(regime_map.of_joint.get((m, r))) for r in regimes]
                                            for m in regime_map.models if m != str(JOINT)])
    if regime_map.standing:
        lines += ["", f"{REFERENCE_MERGE} per regime: rank by mean accuracy among the merges; merges better / "
                  "worse beyond the paired 95 % interval on the same items; difference to the pivot in points:", ""]
        rows = []
        for r in regimes:
            s = regime_map.standing.get(r)
            if s is None:
                continue
            vs = _fmt_difference(s.vs_pivot)
            rows.append([r, f"{s.rank} of {s.merges}" + (" (tied-best)" if s.tied_best else ""),
                         ", ".join(_short(m) for m in s.better) or "none", str(len(s.worse)), vs])
        lines += md_table(["regime", "rank", "better merges", "worse merges", "vs pivot"], rows)
    if regime_map.ablation:
        lines += ["", f"{REFERENCE_MERGE} minus each of its ablations (points, paired 95 % interval on the same "
                  "items, of the seeds both ran; > 0: the removed component helps):", ""]
        lines += md_table(["Ablation"] + regimes, [[_short(v)] + [_fmt_difference(regime_map.ablation.get((v, r)))
                                                                for r in regimes] for v in regime_map.ablations])
    lines += _val_markdown(regime_map)
    if regime_map.descriptions:
        lines += ["", "Regimes:"] + [f"- `{r}`: {regime_map.descriptions[r]}" for r in regimes
                                     if r in regime_map.descriptions]
    lines += ["", "Seeds per regime: " + ", ".join(f"{r} {s}" for r, s in regime_map.seeds.items()) + "."]
    return "\n".join(lines) + "\n"


def _val_markdown(regime_map: RegimeMap, reference: str = REFERENCE_MERGE) -> list[str]:
    from eval.writers import md_table

    kinds = list(dict.fromkeys(kind for checks in regime_map.val.values() for losses in checks.values()
                               for kind in losses.get(str(PIVOT), {})))
    rows = []
    for regime in regime_map.regimes:
        for seed, losses in sorted(regime_map.val.get(regime, {}).items()):
            merges = [m for m in losses if kind_of(m) == "merge" and m not in regime_map.ablations]
            cells = []
            for kind in kinds:
                delta = val_above_pivot(losses, reference, kind)
                above = sum((val_above_pivot(losses, m, kind) or 0.0) > 0 for m in merges)
                cells += ["–" if delta is None else f"{delta:+.4f}", f"{above} of {len(merges)}"]
            rows.append([regime, str(seed)] + cells)
    if not rows:
        return []
    header = ["regime", "seed"] + [h for kind in kinds for h in (f"{_short(reference)} − pivot, {kind}",
                                                                       f"merges above the pivot, {kind}")]
    return ["", "VAL losses against the pivot, before any test item is read (the option search's rows; "
            "> 0: worse than the projector the merge started from):", ""] + md_table(header, rows)


def _fmt_difference(difference: tuple[float, float, float] | None) -> str:
    return "–" if difference is None else f"{difference[0]:+.1f} [{difference[1]:+.1f}, {difference[2]:+.1f}]"


def _short(model: str) -> str:
    return model.split(":", 1)[1] if ":" in model else model


def to_csv(regime_map: RegimeMap) -> str:
    lines = ["model,regime,accuracy,accuracy_lo,accuracy_hi,of_joint,of_joint_lo,of_joint_hi"]
    for m in regime_map.models:
        for r in regime_map.regimes:
            a, j = regime_map.accuracy.get((m, r)), regime_map.of_joint.get((m, r))
            if a is None and j is None:
                continue
            values = [v for c in (a, j) for v in ((None, None, None) if c is None else (c.mean, c.lo, c.hi))]
            lines.append(",".join([m, r] + ["" if v is None else f"{v:.3f}" for v in values]))
    return "\n".join(lines) + "\n"


def plot_heatmap(regime_map: RegimeMap, path: Path) -> Path | None:
    """Methods x regimes, colour = % of joint, each cell annotated with its value and interval half-width."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    models = [m for m in regime_map.models if m != str(JOINT)]
    if not models or not regime_map.regimes:
        return None
    values = np.full((len(models), len(regime_map.regimes)), np.nan)
    for i, m in enumerate(models):
        for j, r in enumerate(regime_map.regimes):
            if (cell := regime_map.of_joint.get((m, r))) is not None:
                values[i, j] = cell.mean
    fig, ax = plt.subplots(figsize=(1.6 * len(regime_map.regimes) + 3.2, 0.42 * len(models) + 1.8))
    image = ax.imshow(np.clip(values, 0, 110), cmap="viridis", vmin=0, vmax=110, aspect="auto")
    for i, m in enumerate(models):
        for j, r in enumerate(regime_map.regimes):
            cell = regime_map.of_joint.get((m, r))
            if cell is None:
                continue
            half = cell.half_width
            text = f"{cell.mean:.0f}" + (f"±{half:.0f}" if half is not None else "")
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="black" if cell.mean > 70 else "white", weight="bold" if m == REFERENCE_MERGE else None)
    ax.set_xticks(range(len(regime_map.regimes)), regime_map.regimes, rotation=25, ha="right", fontsize=8)
    ax.set_yticks(range(len(models)), models, fontsize=8)
    ax.set_title("% of the joint projector (mean in-source k-way accuracy), 95 % interval", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.03)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_regime_map(regime_map: RegimeMap, folder: Path) -> dict[str, Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"md": folder / "regime_map.md", "csv": folder / "regime_map.csv"}
    paths["md"].write_text(to_markdown(regime_map))
    paths["csv"].write_text(to_csv(regime_map))
    if (png := plot_heatmap(regime_map, folder / "regime_map.png")) is not None:
        paths["png"] = png
    return paths
