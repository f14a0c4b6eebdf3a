"""The post-alignment transformation: map each expert into the pivot's frame before any merge (`align`).

A projector `mlp{N}x_gelu` has one free symmetry per hidden layer: permuting the hidden units (the rows of the
Linear layer before the GELU, with its bias, and the matching columns of the Linear layer after it) changes
the parameters and not the function. GELU is elementwise and not odd or positively homogeneous, so
permutations are the whole symmetry group: no rotations, no sign flips, no rescaling. Experts trained from
one pivot stay near it and their units line up already (alignment then returns them unchanged); experts
with no shared start (`scenario.experts.start=independent`) do not, and averaging them unaligned mixes
unrelated units (the re-basin result). A `linear` projector has no hidden layer: nothing to align.

`weights`: weight matching (Ainsworth et al., 2023): per hidden layer, the unit similarity
    S = W_in^pivot W_in^expert^T + b_in^pivot b_in^expert^T + W_out^pivot^T W_out^expert
(incoming rows with their biases, outgoing columns), and the permutation maximising trace(S P) from the
Hungarian assignment (scipy's `linear_sum_assignment`). With several hidden layers each layer's outgoing
weights depend on the next layer's permutation, so the layers are matched in turn until no permutation
changes (at most `max_sweeps` sweeps).
`activations`: the same assignment on the correlation of the hidden units' activations over calibration
inputs (`inputs`, the visual tokens of the calibration statistics), layer by layer in forward order, each
layer's activations computed through the expert's already aligned earlier layers.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from pivotmerge.merging.calibration import apply_layer, linear_layers
from pivotmerge.merging.errors import MergeConfigError, MergeInputError

ALIGN_MODES = ("none", "weights", "activations")


def _key(layer: str, name: str) -> str:
    return f"{layer}.{name}" if layer else name


def hidden_pairs(state: Mapping[str, Tensor]) -> list[tuple[str, str]]:
    """(Linear before, Linear after) of every hidden layer, in forward order."""
    layers = linear_layers(state)
    return list(zip(layers, layers[1:]))


def permute_hidden(state: Mapping[str, Tensor], pair: tuple[str, str], perm: Tensor) -> dict[str, Tensor]:
    """The same function with hidden unit perm[j] of `state` moved to position j."""
    before, after = pair
    out = dict(state)
    out[_key(before, "weight")] = state[_key(before, "weight")][perm]
    if _key(before, "bias") in state:
        out[_key(before, "bias")] = state[_key(before, "bias")][perm]
    out[_key(after, "weight")] = state[_key(after, "weight")][:, perm]
    return out


def _assignment(similarity: Tensor) -> Tensor:
    """The permutation p maximising sum_j similarity[j, p[j]]."""
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(similarity.detach().to(torch.float64).numpy(), maximize=True)
    perm = torch.empty(len(rows), dtype=torch.long)
    perm[torch.as_tensor(rows)] = torch.as_tensor(cols)
    return perm


def _weight_similarity(pivot: Mapping[str, Tensor], expert: Mapping[str, Tensor], pair: tuple[str, str]) -> Tensor:
    before, after = pair
    w = lambda s, k: s[k].to(torch.float64)  # noqa: E731
    sim = w(pivot, _key(before, "weight")) @ w(expert, _key(before, "weight")).T
    if _key(before, "bias") in pivot:
        sim += torch.outer(w(pivot, _key(before, "bias")), w(expert, _key(before, "bias")))
    return sim + w(pivot, _key(after, "weight")).T @ w(expert, _key(after, "weight"))


def match_weights(pivot: Mapping[str, Tensor], expert: Mapping[str, Tensor], max_sweeps: int = 20) -> dict[str, Tensor]:
    """`expert` with its hidden units permuted to match the pivot's by weight similarity."""
    pairs = hidden_pairs(pivot)
    aligned = dict(expert)
    for _ in range(max_sweeps):
        changed = False
        for pair in pairs:
            perm = _assignment(_weight_similarity(pivot, aligned, pair))
            if not torch.equal(perm, torch.arange(len(perm))):
                aligned, changed = permute_hidden(aligned, pair, perm), True
        if not changed:
            break
    return aligned


def _correlation(a: Tensor, b: Tensor) -> Tensor:
    a = a - a.mean(0)
    b = b - b.mean(0)
    a = a / a.norm(dim=0).clamp_min(1e-12)
    b = b / b.norm(dim=0).clamp_min(1e-12)
    return a.T @ b


def match_activations(pivot: Mapping[str, Tensor], expert: Mapping[str, Tensor], inputs: Tensor) -> dict[str, Tensor]:
    """`expert` with its hidden units permuted to match the pivot's by activation correlation on `inputs`."""
    aligned = dict(expert)
    x_pivot = x_expert = inputs.to(torch.float64)
    for pair in hidden_pairs(pivot):
        h_pivot = F.gelu(apply_layer(pivot, pair[0], x_pivot))
        h_expert = F.gelu(apply_layer(aligned, pair[0], x_expert))
        perm = _assignment(_correlation(h_pivot, h_expert))
        aligned = permute_hidden(aligned, pair, perm)
        x_pivot, x_expert = h_pivot, h_expert[:, perm]
    return aligned


def align_experts(pivot: Mapping[str, Tensor], experts: Sequence[Mapping[str, Tensor]], mode: str, *,
                  inputs: Tensor | None = None, diagnostics: dict | None = None) -> list[dict[str, Tensor]]:
    """Every expert mapped into the pivot's frame (`mode`: none | weights | activations); each one computes
    the same function as before. `inputs` [rows, d_in]: the calibration inputs `activations` needs."""
    if mode not in ALIGN_MODES:
        raise MergeConfigError(f"align={mode!r} is not an alignment; use one of {', '.join(ALIGN_MODES)}")
    if mode == "none" or not hidden_pairs(pivot):
        return [dict(e) for e in experts]
    if mode == "activations" and (inputs is None or inputs.ndim != 2 or inputs.shape[0] < 2):
        raise MergeInputError("align=activations needs calibration inputs [rows >= 2, d_in] (the calibration "
                              "statistics' visual tokens); use align=weights without data")
    out = []
    for index, expert in enumerate(experts):
        aligned = match_weights(pivot, expert) if mode == "weights" else match_activations(pivot, expert, inputs)
        out.append(aligned)
        if diagnostics is not None:
            moved = [int((aligned[_key(p[0], "weight")] != expert[_key(p[0], "weight")]).any(1).sum())
                     for p in hidden_pairs(pivot)]
            diagnostics.setdefault("align", {"mode": mode, "units_moved": []})["units_moved"].append(
                {"expert": index, "per_hidden_layer": moved})
    return out
