"""Calibration statistics of each expert's domain: what data-aware merge methods know about the inputs.

A data-aware method says so in its spec (`statistics=`, pivotmerge/merging/spec.py); it then receives one
`ExpertStats` per expert (same order as the experts), computed from that expert's own domain - the TRAIN split
of its source in the pipeline (never test; val stays for selection), or files written by `pivotmerge stats`:

* `grams[layer]`   Gram matrix [x, 1]^T [x, 1] of the layer's inputs x (bias as an extra input column), summed
                   over `counts[layer]` input rows (visual tokens), float64. Layer 0's inputs are the visual
                   features; a later layer's inputs are the expert's OWN activations before it (RegMean).
* `inputs`         a fixed random sample of layer 0's inputs [M, d_in] (for methods that run the projector:
                   RegMean++, learned coefficients, PivotMerge's alignment-guided weights).
* `fisher`         optional diagonal Fisher of the caption loss per parameter (Fisher merging).

The projector is LLaVA's `mm_projector` family: `linear`, or `mlp{N}x_gelu` (Linear layers `0, 2, 4, ...` with
GELU between them); `linear_layers` reads that structure from a state dict's keys.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from pivotmerge.merging.errors import MergeInputError

STATS_FORMAT = "pivotmerge-calibration-stats/1"


@dataclass
class ExpertStats:
    grams: dict[str, Tensor]
    counts: dict[str, int]
    inputs: Tensor | None = None
    fisher: dict[str, Tensor] | None = None
    meta: dict = field(default_factory=dict)

    def gram(self, layer: str) -> Tensor:
        if layer not in self.grams:
            raise MergeInputError(f"calibration statistics have no Gram matrix for layer {layer!r} "
                                  f"(they hold {sorted(self.grams)}): recompute them for this projector")
        return self.grams[layer]


def linear_layers(state: Mapping[str, Tensor]) -> list[str]:
    """Layer prefixes of the projector's Linear layers in forward order ('' for a bare `linear`)."""
    if "weight" in state and state["weight"].ndim == 2:
        return [""]
    layers = sorted({k.rsplit(".", 1)[0] for k in state if k.endswith(".weight") and state[k].ndim == 2},
                    key=lambda name: int(name.rsplit(".", 1)[-1]) if name.rsplit(".", 1)[-1].isdigit() else 0)
    if not layers:
        raise MergeInputError("the projector state dict has no Linear layer (no 2-D '*.weight')")
    return layers


def _param(layer: str, name: str) -> str:
    return f"{layer}.{name}" if layer else name


def apply_layer(state: Mapping[str, Tensor], layer: str, x: Tensor) -> Tensor:
    weight = state[_param(layer, "weight")].to(x.dtype)
    bias = state.get(_param(layer, "bias"))
    return F.linear(x, weight, None if bias is None else bias.to(x.dtype))


def layer_inputs(state: Mapping[str, Tensor], x: Tensor) -> dict[str, Tensor]:
    """The input of every Linear layer when `x` [rows, d_in] goes through the projector `state`."""
    out = {}
    layers = linear_layers(state)
    for i, layer in enumerate(layers):
        out[layer] = x
        if i + 1 < len(layers):
            x = F.gelu(apply_layer(state, layer, x))
    return out


def projector_forward(state: Mapping[str, Tensor], x: Tensor) -> Tensor:
    layers = linear_layers(state)
    for i, layer in enumerate(layers):
        x = apply_layer(state, layer, x)
        if i + 1 < len(layers):
            x = F.gelu(x)
    return x


def augmented_gram(x: Tensor) -> Tensor:
    """[x, 1]^T [x, 1] in float64."""
    x = x.to(torch.float64)
    ones = torch.ones(x.shape[0], 1, dtype=torch.float64)
    xa = torch.cat([x, ones], dim=1)
    return xa.T @ xa


def compute_stats(state: Mapping[str, Tensor], features: Tensor, *, sample_tokens: int = 4096, seed: int = 0,
                  chunk_rows: int = 8192, meta: dict | None = None) -> ExpertStats:
    """Statistics of one expert on its domain's visual features [N, T, d_in] (or [rows, d_in])."""
    tokens = features.reshape(-1, features.shape[-1]).to(torch.float32)
    if tokens.shape[0] == 0:
        raise MergeInputError("no calibration rows: the expert's domain gave no visual tokens")
    grams: dict[str, Tensor] = {}
    with torch.no_grad():
        for start in range(0, tokens.shape[0], chunk_rows):
            for layer, x in layer_inputs(state, tokens[start:start + chunk_rows]).items():
                g = augmented_gram(x)
                grams[layer] = grams[layer] + g if layer in grams else g
    counts = {layer: int(tokens.shape[0]) for layer in grams}
    generator = torch.Generator().manual_seed(seed)
    pick = torch.randperm(tokens.shape[0], generator=generator)[:sample_tokens].sort().values
    return ExpertStats(grams, counts, tokens[pick].clone(), None, dict(meta or {}))


# ---- layer-wise least squares (RegMean's closed form and its relatives) ------------------------------------
#: eigenvalues of a Gram sum below this fraction of the largest are treated as zero (LayerNorm'd features make
#: a plain Gram singular: every token sums to zero; no domain has inputs there, so no update goes there)
PINV_RTOL = 1e-12


def layer_keys(layer: str) -> tuple[str, str]:
    """(weight key, bias key) of a Linear layer prefix."""
    return (f"{layer}.weight", f"{layer}.bias") if layer else ("weight", "bias")


def shrink(gram: Tensor, alpha: float) -> Tensor:
    """alpha G + (1 - alpha) diag(G): RegMean's off-diagonal shrinkage."""
    return alpha * gram + (1.0 - alpha) * torch.diag(torch.diagonal(gram))


def layer_gram(stats: ExpertStats, pivot: Mapping[str, Tensor], layer: str) -> Tensor:
    """The expert's Gram for `layer`, without the bias row/column when the layer has no bias."""
    gram = stats.gram(layer)
    return gram if layer_keys(layer)[1] in pivot else gram[:-1, :-1]


def augmented_task_matrix(pivot: Mapping[str, Tensor], expert: Mapping[str, Tensor], layer: str) -> Tensor:
    """[tau_W, tau_b] (out x (in + 1)) of one Linear layer in float64 (tau_W alone without a bias)."""
    weight, bias = layer_keys(layer)
    tau = expert[weight].double() - pivot[weight].double()
    if bias in pivot:
        tau = torch.cat([tau, (expert[bias].double() - pivot[bias].double()).unsqueeze(1)], dim=1)
    return tau


def gram_solve(rhs: Tensor, total: Tensor) -> Tensor:
    """rhs total^+ (total a symmetric PSD sum of Grams; the pseudo-inverse leaves directions no input uses
    untouched instead of amplifying rounding noise there)."""
    evals, evecs = torch.linalg.eigh(total.double())
    keep = evals > PINV_RTOL * float(evals.max().clamp_min(1e-300))
    inverse = torch.where(keep, 1.0 / evals.clamp_min(1e-300), torch.zeros_like(evals))
    return ((rhs.double() @ evecs) * inverse) @ evecs.T


def regmean_solve(taus: Sequence[Tensor], grams: Sequence[Tensor], weights: Sequence[float] | None = None) -> Tensor:
    """(sum_k w_k tau_k G_k) (sum_k w_k G_k)^-1: the update minimising sum_k w_k ||X_k (delta - tau_k)^T||^2."""
    weights = [1.0] * len(taus) if weights is None else list(weights)
    total = sum(w * g for w, g in zip(weights, grams))
    rhs = sum(w * (t @ g) for w, t, g in zip(weights, taus, grams))
    return gram_solve(rhs, total)


def split_update(pivot: Mapping[str, Tensor], layer: str, delta: Tensor) -> dict[str, Tensor]:
    """An augmented update [dW, db] back to the layer's parameter keys."""
    weight, bias = layer_keys(layer)
    out = {weight: delta[:, :pivot[weight].shape[1]]}
    if bias in pivot:
        out[bias] = delta[:, -1]
    return out


# ---- files ----------------------------------------------------------------------------------------------
def save_stats(stats: ExpertStats, path: str | os.PathLike) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {f"gram.{layer}": g.contiguous() for layer, g in stats.grams.items()}
    if stats.inputs is not None:
        tensors["inputs"] = stats.inputs.contiguous()
    for name, value in (stats.fisher or {}).items():
        tensors[f"fisher.{name}"] = value.contiguous()
    metadata = {"format": STATS_FORMAT, "counts": json.dumps(stats.counts), "meta": json.dumps(stats.meta)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_stats(path: str | os.PathLike) -> ExpertStats:
    from safetensors import safe_open
    from safetensors.torch import load

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load(path.read_bytes())   # in memory, not mmapped
    except Exception as exc:   # missing, truncated or not safetensors
        raise MergeInputError(f"{path}: cannot read calibration statistics ({type(exc).__name__}); write them "
                              "with `pivotmerge stats`") from exc
    if metadata.get("format") != STATS_FORMAT:
        raise MergeInputError(f"{path}: not a calibration statistics file (format {metadata.get('format')!r}); "
                              "write them with `pivotmerge stats`")
    grams = {k[len("gram."):]: v for k, v in tensors.items() if k.startswith("gram.")}
    fisher = {k[len("fisher."):]: v for k, v in tensors.items() if k.startswith("fisher.")} or None
    return ExpertStats(grams, {k: int(v) for k, v in json.loads(metadata["counts"]).items()},
                       tensors.get("inputs"), fisher, json.loads(metadata.get("meta", "{}")))


def check_stats(stats: Sequence[ExpertStats] | None, n_experts: int, method: str, *, fisher: bool = False,
                inputs: bool = False) -> list[ExpertStats]:
    """The calibration argument of a data-aware method, checked: one entry per expert with what it needs."""
    if stats is None:
        raise MergeInputError(f"{method} is data-aware: it needs calibration statistics of each expert's domain "
                              "(the pipeline computes them; on the command line pass --stats a.st b.st ..., "
                              "written by `pivotmerge stats`)")
    stats = list(stats)
    if len(stats) != n_experts:
        raise MergeInputError(f"{method}: {len(stats)} calibration statistics for {n_experts} experts")
    for i, s in enumerate(stats):
        if fisher and not s.fisher:
            raise MergeInputError(f"{method}: the statistics of expert {i} hold no Fisher information: compute "
                                  "them with the caption loss (the pipeline does; `pivotmerge stats --fisher`)")
        if inputs and s.inputs is None:
            raise MergeInputError(f"{method}: the statistics of expert {i} hold no input sample")
    return stats


__all__ = ["PINV_RTOL", "ExpertStats", "apply_layer", "augmented_gram",
           "augmented_task_matrix", "check_stats",
           "compute_stats", "gram_solve", "layer_gram", "layer_inputs", "layer_keys", "linear_layers", "load_stats",
           "projector_forward", "regmean_solve", "save_stats", "shrink", "split_update"]
