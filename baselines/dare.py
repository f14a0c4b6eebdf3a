"""DARE (Yu et al., 2024): Drop And REscale task vectors, then merge with Task Arithmetic or TIES.

Each entry of each tau_k is dropped with probability ``p`` (Bernoulli mask drawn from a local
``torch.Generator`` seeded with ``seed``, tensors in sorted key order - so the result does not depend on
the file format's key order - and experts in the given order),
and the kept entries are divided by (1 - p), so E[dropped tau] = tau. Then

* ``then='ta'``:   theta = pivot + lam * sum_k dare(tau_k)                       (peft ``dare_linear``)
* ``then='ties'``: theta = pivot + lam * TIES(dare(tau_k); density, scope, sign, combine)
  (with density=1, scope irrelevant, sign=sum, combine=mean this is peft/mergekit ``dare_ties``).

The mask stream is drawn exactly like peft's ``random_pruning`` (``torch.bernoulli`` of a tensor filled
with 1 - p, one call per expert and tensor), so with the global RNG seeded the same way peft gives the
same result bit for bit; this is tested.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from baselines.task_arithmetic import apply_update
from baselines.ties import check_ties_options, ties_combine
from pivotmerge.merging import (
    check_choice,
    check_fraction,
    check_int,
    diag_layer,
    finalize,
    float_keys,
    layer_name,
    register,
    register_alias,
    stacked_task_vector,
    validate_inputs,
)

THENS = ("ta", "ties")


def drop_and_rescale(
    pivot: Mapping[str, Tensor], experts: Sequence[Mapping[str, Tensor]], keys: Sequence[str], p: float, seed: int
) -> dict[str, Tensor]:
    """DARE task vectors: key -> (K, *shape) tensor, entries dropped w.p. p, kept ones divided by (1-p)."""
    gen = torch.Generator().manual_seed(seed)
    keep = 1.0 - p
    out = {}
    for key in sorted(keys):
        tau = stacked_task_vector(pivot, experts, key)
        if p >= 1.0:
            tau.zero_()
        elif p > 0.0:
            for i in range(tau.shape[0]):
                mask = torch.bernoulli(torch.full_like(tau[i], keep), generator=gen)
                tau[i] = tau[i] * mask / keep
        out[key] = tau
    return out


@register("dare")
def dare_merge(
    pivot: Mapping[str, Tensor],
    experts: Sequence[Mapping[str, Tensor]],
    *,
    p: float = 0.5,
    seed: int = 0,
    then: str = "ta",
    lam: float = 1.0,
    density: float = 1.0,
    scope: str = "tensor",
    sign: str = "sum",
    combine: str = "mean",
    diagnostics: dict | None = None,
) -> dict[str, Tensor]:
    """DARE + TA (``then='ta'``, uses only lam) or DARE + TIES (``then='ties'``, also density/scope/sign/combine)."""
    p = check_fraction("dare", "p", p)
    seed = check_int("dare", "seed", seed)
    then = check_choice("dare", "then", then, THENS)
    density, scope, sign, combine, lam = check_ties_options("dare", density, scope, sign, combine, lam)
    validate_inputs(pivot, experts, min_experts=1, method="dare")
    keys = float_keys(pivot)
    dropped = drop_and_rescale(pivot, experts, keys, p, seed)
    if diagnostics is not None:
        for k in keys:
            rec = diag_layer(diagnostics, layer_name(k))
            rec.setdefault("dare_kept_fraction", {})[k] = float((dropped[k] != 0).float().mean())
    if then == "ta":
        upd = {k: dropped.pop(k).sum(0) for k in keys}
    else:
        upd = ties_combine(
            keys,
            dropped.pop,  # global thresholds (get_row) are computed before the first pop
            len(experts),
            density=density,
            scope=scope,
            sign=sign,
            combine=combine,
            get_row=lambda k, i: dropped[k][i],
            diagnostics=diagnostics,
        )
    merged = {k: apply_update(pivot[k], upd.pop(k), lam) for k in keys}
    if diagnostics is not None:
        opts = dict(p=p, seed=seed, then=then, lam=lam)
        if then == "ties":
            opts.update(density=density, scope=scope, sign=sign, combine=combine)
        diagnostics.update(method=f"dare_{then}", options=opts)
    return finalize(pivot, merged)


register_alias("dare_ta", "dare", then="ta")
register_alias("dare_ties", "dare", then="ties")
