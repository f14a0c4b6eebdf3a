"""Linear-mode-connectivity diagnostic: the calibration caption loss along straight lines between projectors.

Along theta(t) = (1 - t) theta_a + t theta_b for the lines pivot -> expert_k and expert_i -> expert_j, the loss
is measured at `points` evenly spaced t (the same VAL calibration rows as the merge search: mean over sources of
the caption loss). The barrier of a line is max_t [L(theta(t)) - ((1 - t) L(theta_a) + t L(theta_b))]: a high
barrier between two experts says that averaging their weights lands in a region where neither alignment
holds - why data-free merges fail on such experts. Written as lmc.json + lmc.png into the merge stage's
diagnostics (cached per pivot, experts and calibration rows).
"""
from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

import torch

from pivotmerge.artifacts import Artifact
from pivotmerge.model_id import PIVOT, ModelId, short_label

LMC_FILE = "lmc.json"


def interpolate(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], t: float) -> dict[str, torch.Tensor]:
    return {k: (1 - t) * a[k] + t * b[k] if a[k].is_floating_point() else a[k] for k in a}


def barrier(ts: list[float], losses: list[float]) -> float:
    """Largest excess of the loss over the straight line between the endpoints' losses (>= 0)."""
    start, end = losses[0], losses[-1]
    return max(0.0, max(loss - ((1 - t) * start + t * end) for t, loss in zip(ts, losses)))


def lines(pivot, experts: dict) -> list[tuple[str, str, dict, dict]]:
    name = {n: str(ModelId.expert(n)) for n in experts}
    out = [(str(PIVOT), name[n], pivot, e) for n, e in experts.items()]
    out += [(name[a], name[b], experts[a], experts[b]) for a, b in combinations(experts, 2)]
    return out


def connectivity(pivot, experts: dict, loss_fn, points: int) -> dict:
    """{"t": [...], "lines": [{"from", "to", "losses", "barrier"}]} (pure given `loss_fn`)."""
    ts = [i / (points - 1) for i in range(points)]
    cache: dict[tuple[str, float], float] = {}
    result = []
    for name_a, name_b, a, b in lines(pivot, experts):
        losses = []
        for t in ts:
            key = (name_a, 0.0) if t == 0 else (name_b, 0.0) if t == 1 else (f"{name_a}|{name_b}", t)
            if key not in cache:
                cache[key] = float(loss_fn(interpolate(a, b, t)))
            losses.append(cache[key])
        result.append({"from": name_a, "to": name_b, "losses": losses, "barrier": barrier(ts, losses)})
    return {"t": ts, "lines": result}


def plot(data: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for line in data["lines"]:
        style = "-" if line["from"] == str(PIVOT) else "--"
        left.plot(data["t"], line["losses"], style, marker="o", ms=3,
                  label=f"{short_label(line['from'])} -> {short_label(line['to'])}")
    left.set_xlabel("t (0 = first endpoint, 1 = second)")
    left.set_ylabel("calibration caption loss")
    left.legend(fontsize=6, ncol=2)
    left.grid(alpha=0.3)
    names = [f"{short_label(line['from'])}->{short_label(line['to'])}" for line in data["lines"]]
    right.barh(range(len(names)), [line["barrier"] for line in data["lines"]],
               color=["tab:gray" if line["from"] == str(PIVOT) else "tab:red" for line in data["lines"]])
    right.set_yticks(range(len(names)))
    right.set_yticklabels(names, fontsize=7)
    right.invert_yaxis()
    right.set_xlabel("loss barrier (nats per token above the straight line)")
    right.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_lmc(ctx, pivot, experts: dict, loss_fn, points: int) -> Artifact:
    """Compute (or reuse) the diagnostic for this pivot and these experts; log its barriers."""
    spec = {"pivot": ctx.pivot.key, "experts": {n: ctx.experts[n].key for n in experts}, "points": points,
            "per_source": int(ctx.cfg.calibration.per_source),
            "features": {n: a.key for n, a in ctx.feature_artifacts.items()}}

    def build(staging: Path) -> None:
        data = connectivity(pivot, experts, loss_fn, points)
        (staging / LMC_FILE).write_text(json.dumps(data, indent=2))
        plot(data, staging / "lmc.png")

    def worst_line(artifact) -> str:
        data = json.loads((ctx.store.verify("lmc", artifact.key) / LMC_FILE).read_text())
        worst = max(data["lines"], key=lambda line: line["barrier"])
        return f"highest barrier {worst['barrier']:.3f} ({worst['from']} -> {worst['to']})"

    return ctx.produce("lmc", f"{len(lines(pivot, experts))} lines", ctx.store.entry, "lmc", spec, build,
                       note=worst_line)
