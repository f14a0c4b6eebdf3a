"""TIES-Merging (Yadav et al., 2023): trim, elect sign, disjoint merge.

For every floating-point tensor, with task vectors tau_k (k = 1..K):

1. Trim: keep the ``int(density * n)`` largest-magnitude entries of each tau_k, zero the rest.
   ``scope='tensor'``: n = entries of that tensor (peft, mergekit);
   ``scope='global'``: n = entries of the whole state dict, one threshold per expert (TIES paper code,
   FusionBench).
2. Elect: gamma = sign(sum_k trimmed_k) (``sign='sum'``, total mass: paper, peft 'total', mergekit 'sum')
   or sign(sum_k sign(trimmed_k)) (``sign='count'``: peft 'frequency', mergekit 'count'); a zero vote
   elects +1 (peft/mergekit convention).
3. Disjoint merge over the entries that agree with gamma (non-zero and same sign):
   ``combine='mean'`` divides by how many agree (paper, peft, mergekit normalize=true);
   ``combine='sum'`` does not (FusionBench's default ``merge_func: sum``, mergekit normalize=false).
   The option is called ``combine`` (the issue says ``merge``) because ``merge`` is the Hydra group name.
4. theta = pivot + lam * merged.

Vectorised: the K task vectors of a tensor are stacked and trimmed with one ``kthvalue`` call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from baselines.task_arithmetic import apply_update
from pivotmerge.merging import (
    check_choice,
    check_fraction,
    check_number,
    compute_dtype,
    diag_layer,
    finalize,
    float_keys,
    layer_name,
    register,
    stacked_task_vector,
    validate_inputs,
)

SCOPES = ("tensor", "global")
SIGNS = ("sum", "count")
COMBINES = ("mean", "sum")


def kth_largest(absvals: Tensor, k: int) -> Tensor:
    """Per-row threshold t (shape (R, 1)) such that ``absvals >= t`` keeps the k largest of each row.

    k <= 0 keeps nothing (t = +inf), k >= n keeps everything (t = -inf). Ties at the threshold are all kept.
    """
    rows, n = absvals.shape
    if k <= 0:
        return torch.full((rows, 1), float("inf"), dtype=absvals.dtype)
    if k >= n:
        return torch.full((rows, 1), float("-inf"), dtype=absvals.dtype)
    return absvals.kthvalue(n - k + 1, dim=1, keepdim=True).values


def global_thresholds(
    keys: Sequence[str], get_row: Callable[[str, int], Tensor], n_experts: int, density: float
) -> Tensor:
    """One trim threshold per expert over all tensors in ``keys`` (shape (K, 1)).

    ``get_row(key, i)`` returns expert i's task vector of ``key``; one expert is flattened at a time, so
    the extra memory is one model-sized vector, not K of them."""
    thr = []
    for i in range(n_experts):
        flat = torch.cat([get_row(k, i).reshape(-1).abs() for k in keys])
        thr.append(kth_largest(flat.unsqueeze(0), int(density * flat.numel())))
        del flat
    return torch.cat(thr, 0)


def ties_combine(
    keys: Sequence[str],
    get_tau: Callable[[str], Tensor],
    n_experts: int,
    *,
    density: float,
    scope: str,
    sign: str,
    combine: str,
    get_row: Callable[[str, int], Tensor] | None = None,
    diagnostics: dict | None = None,
) -> dict[str, Tensor]:
    """Trim / elect / disjoint-merge the task vectors; returns the merged update per key (compute dtype).

    ``get_tau(key)`` must return a fresh (K, *shape) tensor (it is modified in place); ``get_row(key, i)``
    (optional, for ``scope='global'``) returns expert i's task vector of ``key`` alone.
    """
    thr_global = None
    if scope == "global" and density < 1.0:
        if get_row is None:
            def get_row(k: str, i: int) -> Tensor:
                return get_tau(k)[i]
        thr_global = global_thresholds(keys, get_row, n_experts, density)
    out = {}
    for key in keys:
        tau = get_tau(key)
        shape = tau.shape[1:]
        tau = tau.reshape(n_experts, -1)
        if density < 1.0:
            thr = thr_global if thr_global is not None else kth_largest(tau.abs(), int(density * tau.shape[1]))
            tau.masked_fill_(tau.abs() < thr, 0.0)
        if sign == "sum":
            vote = tau.sum(0)
        else:
            vote = (tau > 0).sum(0) - (tau < 0).sum(0)
        agree = torch.where(vote >= 0, tau > 0, tau < 0)
        tau.mul_(agree)
        merged = tau.sum(0)
        if combine == "mean":
            merged /= agree.sum(0).clamp_(min=1)
        out[key] = merged.reshape(shape)
        if diagnostics is not None:
            rec = diag_layer(diagnostics, layer_name(key))
            rec.setdefault("kept_fraction", {})[key] = float(agree.float().mean())
        del tau, agree
    return out


def check_ties_options(method: str, density, scope, sign, combine, lam) -> tuple[float, str, str, str, float]:
    return (
        check_fraction(method, "density", density),
        check_choice(method, "scope", scope, SCOPES),
        check_choice(method, "sign", sign, SIGNS),
        check_choice(method, "combine", combine, COMBINES),
        check_number(method, "lam", lam),
    )


@register("ties")
def ties_merge(
    pivot: Mapping[str, Tensor],
    experts: Sequence[Mapping[str, Tensor]],
    *,
    density: float = 0.2,
    scope: str = "global",
    sign: str = "sum",
    combine: str = "mean",
    lam: float = 1.0,
    diagnostics: dict | None = None,
) -> dict[str, Tensor]:
    """TIES-Merging. Defaults follow the TIES paper: top-20% (density 0.2), trimmed over the whole model
    (the paper's code flattens the state dict), sign by total mass, disjoint mean, lambda = 1."""
    density, scope, sign, combine, lam = check_ties_options("ties", density, scope, sign, combine, lam)
    validate_inputs(pivot, experts, min_experts=1, method="ties")
    keys = float_keys(pivot)
    upd = ties_combine(
        keys,
        lambda k: stacked_task_vector(pivot, experts, k),
        len(experts),
        get_row=lambda k, i: experts[i][k].to(compute_dtype(pivot[k].dtype)) - pivot[k].to(compute_dtype(pivot[k].dtype)),
        density=density,
        scope=scope,
        sign=sign,
        combine=combine,
        diagnostics=diagnostics,
    )
    merged = {k: apply_update(pivot[k], upd.pop(k), lam) for k in keys}
    if diagnostics is not None:
        diagnostics.update(
            method="ties", options=dict(density=density, scope=scope, sign=sign, combine=combine, lam=lam)
        )
    return finalize(pivot, merged)
