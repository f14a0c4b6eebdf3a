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

The steps live in :func:`pivotmerge.merging.ops.ties_combine` (DARE-TIES uses them too).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor

from pivotmerge.merging.checks import validate_inputs
from pivotmerge.merging.ops import (
    TIES_COMBINES,
    TIES_SCOPES,
    TIES_SIGNS,
    FlatTaskVectors,
    apply_update,
    finalize,
    float_keys,
    ties_combine,
)
from pivotmerge.merging.spec import Options, choice, fraction, merge_method, number


@merge_method("ties", options={"density": fraction(), "scope": choice(TIES_SCOPES), "sign": choice(TIES_SIGNS),
                                "combine": choice(TIES_COMBINES), "lam": number()},
              scale="lam", one_expert={"density": 1.0}, identical="mean")
def ties_merge(
    pivot: Mapping[str, Tensor],
    experts: Sequence[Mapping[str, Tensor]],
    o: Options,
    *,
    diagnostics: dict | None = None,
) -> dict[str, Tensor]:
    """TIES-Merging (module docstring; defaults in conf/merge/ties.yaml follow the TIES paper)."""
    validate_inputs(pivot, experts, min_experts=1, method="ties")
    keys = float_keys(pivot)
    upd = ties_combine(
        [FlatTaskVectors(pivot, experts, k) for k in keys],
        density=o.density,
        scope=o.scope,
        sign=o.sign,
        combine=o.combine,
        diagnostics=diagnostics,
    )
    merged = {k: apply_update(pivot[k], upd.pop(k), o.lam) for k in keys}
    if diagnostics is not None:
        diagnostics.update(method="ties", options=dict(o))
    return finalize(pivot, merged)
