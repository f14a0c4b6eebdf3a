"""DARE (Yu et al., 2024): Drop And REscale task vectors, then merge with Task Arithmetic or TIES.

Each entry of each tau_k is dropped with probability ``p`` (Bernoulli mask drawn from a local
``torch.Generator`` seeded with ``seed``, tensors in sorted key order - so the result does not depend on
the file format's key order - and experts in the given order),
and the kept entries are divided by (1 - p), so E[dropped tau] = tau. Then

* ``dare_ta``:   theta = pivot + lam * sum_k dare(tau_k)                       (peft ``dare_linear``)
* ``dare_ties``: theta = pivot + lam * TIES(dare(tau_k); density, scope, sign, combine)
  (with density=1, scope irrelevant, sign=sum, combine=mean this is peft/mergekit ``dare_ties``).

Two functions (not one with a ``then`` switch) so that each config lists exactly the options its
method reads. The mask stream is drawn exactly like peft's ``random_pruning`` (``torch.bernoulli`` of a
tensor filled with 1 - p, one call per expert and tensor), so with the global RNG seeded the same way peft
gives the same result bit for bit; this is tested.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from pivotmerge.merging.checks import validate_inputs
from pivotmerge.merging.ops import (
    TIES_COMBINES,
    TIES_SCOPES,
    TIES_SIGNS,
    FlatTaskVectors,
    apply_update,
    diag_layer,
    finalize,
    float_keys,
    layer_name,
    ties_combine,
)
from pivotmerge.merging.spec import Options, choice, fraction, integer, merge_method, number


class DroppedTaskVectors:
    """Lazily dropped-and-rescaled task vectors of one tensor (the view protocol of ``ties_combine``).

    The (K, n) DARE tensor is drawn on first use from the shared generator; views must therefore be used
    in a fixed order (sorted keys) for reproducibility."""

    def __init__(self, base: FlatTaskVectors, gen: torch.Generator, p: float):
        self.key, self.shape, self.numel, self.k, self.dtype = base.key, base.shape, base.numel, base.k, base.dtype
        self._base, self._gen, self._p, self._t = base, gen, p, None

    def tensor(self) -> Tensor:
        if self._t is None:
            self._t = _drop(self._base, self._gen, self._p)
        return self._t

    def row(self, i: int) -> Tensor:
        return self.tensor()[i].clone()

    def chunk(self, c0: int, c1: int) -> Tensor:
        return self.tensor()[:, c0:c1].clone()

    def release(self) -> None:
        self._t = None


def _drop(v: FlatTaskVectors, gen: torch.Generator, p: float) -> Tensor:
    tau = torch.stack([v.row(i) for i in range(v.k)])
    if p >= 1.0:
        return tau.zero_()
    if p > 0.0:
        keep = 1.0 - p
        for i in range(v.k):
            mask = torch.bernoulli(torch.full_like(tau[i], keep), generator=gen)
            tau[i] = tau[i] * mask / keep
    return tau


def drop_and_rescale(
    pivot: Mapping[str, Tensor], experts: Sequence[Mapping[str, Tensor]], keys: Sequence[str], p: float, seed: int
) -> dict[str, Tensor]:
    """DARE task vectors: key -> (K, *shape) tensor, entries dropped w.p. p, kept ones divided by (1-p)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key in sorted(keys):
        v = FlatTaskVectors(pivot, experts, key)
        out[key] = _drop(v, gen, p).reshape(v.k, *v.shape)
    return out


def _dropped_views(pivot, experts, name: str, p, seed, diagnostics) -> tuple[list[str], list[DroppedTaskVectors]]:
    """Validated inputs -> (float keys, one lazily dropped view per key in sorted order, sharing one RNG)."""
    validate_inputs(pivot, experts, min_experts=1, method=name)
    keys = float_keys(pivot)
    gen = torch.Generator().manual_seed(seed)
    views = [DroppedTaskVectors(FlatTaskVectors(pivot, experts, k), gen, p) for k in sorted(keys)]
    if diagnostics is not None:
        for v in views:
            rec = diag_layer(diagnostics, layer_name(v.key))
            rec.setdefault("dare_kept_fraction", {})[v.key] = float((v.tensor() != 0).float().mean())
    return keys, views


DROP = {"p": fraction(), "seed": integer()}   # the drop every DARE variant shares


@merge_method("dare_ta", options={**DROP, "lam": number()},
              scale="lam", one_expert={"p": 0.0}, identical="sum", symmetric={"p": 0.0})
def dare_ta_merge(
    pivot: Mapping[str, Tensor],
    experts: Sequence[Mapping[str, Tensor]],
    o: Options,
    *,
    diagnostics: dict | None = None,
) -> dict[str, Tensor]:
    """DARE + Task Arithmetic: pivot + lam * sum_k dare_p(tau_k)."""
    keys, views = _dropped_views(pivot, experts, "dare_ta", o.p, o.seed, diagnostics)
    upd = {}
    for v in views:
        upd[v.key] = v.tensor().sum(0).reshape(v.shape)
        v.release()
    merged = {k: apply_update(pivot[k], upd.pop(k), o.lam) for k in keys}
    if diagnostics is not None:
        diagnostics.update(method="dare_ta", options=dict(o))
    return finalize(pivot, merged)


@merge_method("dare_ties", options={**DROP, "density": fraction(), "scope": choice(TIES_SCOPES),
                                     "sign": choice(TIES_SIGNS), "combine": choice(TIES_COMBINES), "lam": number()},
              scale="lam", one_expert={"p": 0.0, "density": 1.0}, identical="mean", symmetric={"p": 0.0})
def dare_ties_merge(
    pivot: Mapping[str, Tensor],
    experts: Sequence[Mapping[str, Tensor]],
    o: Options,
    *,
    diagnostics: dict | None = None,
) -> dict[str, Tensor]:
    """DARE + TIES: pivot + lam * TIES(dare_p(tau_k)) (TIES options as in conf/merge/ties.yaml)."""
    keys, views = _dropped_views(pivot, experts, "dare_ties", o.p, o.seed, diagnostics)
    upd = ties_combine(views, density=o.density, scope=o.scope, sign=o.sign, combine=o.combine,
                       diagnostics=diagnostics)
    merged = {k: apply_update(pivot[k], upd.pop(k), o.lam) for k in keys}
    if diagnostics is not None:
        diagnostics.update(method="dare_ties", options=dict(o))
    return finalize(pivot, merged)
