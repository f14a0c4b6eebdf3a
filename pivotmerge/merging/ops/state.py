"""State dicts and task vectors: compute dtype, float keys, task vectors, the merged state dict, layers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from pivotmerge.merging.checks import validate_inputs

StateDict = dict[str, Tensor]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype used for arithmetic: float32, except float64 inputs stay float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def float_keys(pivot: Mapping[str, Tensor]) -> list[str]:
    """Keys of the floating-point tensors (the ones that get merged), in the pivot's order."""
    return [k for k, v in pivot.items() if v.is_floating_point()]


def stacked_task_vector(pivot: Mapping[str, Tensor], experts: Sequence[Mapping[str, Tensor]], key: str) -> Tensor:
    """Fresh (K, *shape) tensor of the task vectors of ``key`` in compute dtype."""
    p = pivot[key]
    dt = compute_dtype(p.dtype)
    out = torch.stack([e[key].to(dt) for e in experts])
    out -= p.to(dt)
    return out


def task_vectors(pivot: Mapping[str, Tensor], experts: Sequence[Mapping[str, Tensor]]) -> list[StateDict]:
    """``[expert_k - pivot for k]`` over the floating-point tensors, in compute dtype."""
    validate_inputs(pivot, experts, method="task_vectors", check_finite=False)
    out: list[StateDict] = [{} for _ in experts]
    for key in float_keys(pivot):
        dt = compute_dtype(pivot[key].dtype)
        p = pivot[key].to(dt)
        for i, e in enumerate(experts):
            out[i][key] = e[key].to(dt) - p
    return out


def task_vector(pivot: Mapping[str, Tensor], expert: Mapping[str, Tensor], key: str) -> Tensor:
    """One expert's task vector of ``key`` (fresh, compute dtype, original shape)."""
    dt = compute_dtype(pivot[key].dtype)
    return expert[key].to(dt) - pivot[key].to(dt)


class TaskVectorsOf(Sequence):
    """The K task vectors of one key as a sequence that builds tau_k (fresh) on access, so that methods
    working one expert at a time never hold K full tensors."""

    def __init__(self, pivot: Mapping[str, Tensor], experts: Sequence[Mapping[str, Tensor]], key: str):
        self.pivot, self.experts, self.key = pivot, experts, key

    def __len__(self) -> int:
        return len(self.experts)

    def __getitem__(self, i: int) -> Tensor:
        if not -len(self.experts) <= i < len(self.experts):
            raise IndexError(i)
        return task_vector(self.pivot, self.experts[i], self.key)


def finalize(pivot: Mapping[str, Tensor], merged: Mapping[str, Tensor]) -> StateDict:
    """Merged state dict in the pivot's key order and dtypes; non-float tensors copied from the pivot."""
    out: StateDict = {}
    for k, v in pivot.items():
        if k in merged:
            out[k] = merged[k].to(v.dtype).reshape(v.shape).contiguous()
        else:
            out[k] = v.clone()
    return out


def layer_name(key: str) -> str:
    """Layer of a parameter: the prefix before the last '.' (``0.weight`` -> ``0``; no dot -> itself)."""
    return key.rsplit(".", 1)[0] if "." in key else key


def group_layers(keys: Sequence[str]) -> dict[str, list[str]]:
    """Group parameter names by :func:`layer_name`, layers and members in order of first appearance."""
    groups: dict[str, list[str]] = {}
    for k in keys:
        groups.setdefault(layer_name(k), []).append(k)
    return groups


def diag_layer(diagnostics: dict | None, layer: str) -> dict:
    """The per-layer record ``diagnostics['layers'][layer]`` (a throwaway dict when diagnostics is None)."""
    if diagnostics is None:
        return {}
    return diagnostics.setdefault("layers", {}).setdefault(layer, {})


__all__ = [
    "StateDict", "TaskVectorsOf", "compute_dtype", "diag_layer", "finalize", "float_keys", "group_layers", "layer_name",
    "stacked_task_vector", "task_vector", "task_vectors",
]
