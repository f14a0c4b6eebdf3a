"""Learned layer(-chunk) coefficients, in the spirit of AdaMerging (Yang et al., ICLR 2024).

theta = pivot + sum_k lambda_{k,l,c} tau_{k,l,c}: one coefficient per expert k, Linear layer l and chunk c of
the layer's output rows (`chunks` = 1: layer-wise AdaMerging; > 1: finer "expert merging" granularity; the
bias of a row chunk shares its coefficient). AdaMerging fits the coefficients on unlabeled test inputs by
minimising the prediction entropy of a classifier; a projector has no classifier, so the coefficients are fitted
on each expert's unlabeled calibration inputs (`ExpertStats.inputs`, its own domain's visual tokens) to make the
merged projector reproduce every expert's projected tokens on that expert's domain:

    L(lambda) = sum_k mean ||f_theta(X_k) - f_k(X_k)||^2 / mean ||f_k(X_k) - f_pivot(X_k)||^2

(each domain normalised by how far its expert moved from the pivot, so every domain counts alike). Adam,
`steps` steps of learning rate `lr` from lambda = `init`, `batch_tokens` tokens per domain per step drawn by a
generator of each domain seeded with `seed` and the domain's own inputs (deterministic, and independent of the
experts' order). No separate scale: the coefficients are the scale.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from pivotmerge.merging.calibration import ExpertStats, check_stats, layer_keys, linear_layers, projector_forward
from pivotmerge.merging.checks import validate_inputs
from pivotmerge.merging.ops import finalize, float_keys, mean_task_vector
from pivotmerge.merging.spec import Options, integer, merge_method, number

NAME = "adamerging"


def _content_seed(seed: int, x: Tensor) -> int:
    digest = hashlib.sha256(str(seed).encode() + x.detach().contiguous().numpy().tobytes()).digest()
    return int.from_bytes(digest[:8], "little") % 2**63


def _row_chunks(rows: int, chunks: int) -> list[slice]:
    bounds = torch.linspace(0, rows, min(chunks, rows) + 1).round().long().tolist()
    return [slice(a, b) for a, b in zip(bounds, bounds[1:])]


@merge_method(NAME, options={"init": number(), "steps": integer(minimum=0), "lr": number(0.0, exclusive=True),
                             "chunks": integer(minimum=1), "batch_tokens": integer(minimum=1), "seed": integer()},
              symmetric={}, search="init", statistics=True)
def adamerging_merge(
    pivot: Mapping[str, Tensor],
    experts: Sequence[Mapping[str, Tensor]],
    o: Options,
    *,
    calibration: Sequence[ExpertStats] | None = None,
    diagnostics: dict | None = None,
) -> dict[str, Tensor]:
    """Coefficients per (expert, layer, row chunk) fitted by feature matching (see the module docstring)."""
    validate_inputs(pivot, experts, min_experts=1, method=NAME)
    stats = check_stats(calibration, len(experts), NAME, inputs=True)
    layers = linear_layers(pivot)
    base = {k: pivot[k].float() for k in float_keys(pivot)}
    taus = [{k: e[k].float() - base[k] for k in base} for e in experts]
    slices = {layer: _row_chunks(pivot[layer_keys(layer)[0]].shape[0], o.chunks) for layer in layers}
    coefficients = torch.full((len(experts), sum(len(s) for s in slices.values())), float(o.init), requires_grad=True)

    def merged_state() -> dict[str, Tensor]:
        return _merged_state(coefficients, base, taus, layers, slices)

    losses = _fit(coefficients, merged_state, base, taus, stats, steps=o.steps, lr=o.lr, batch_tokens=o.batch_tokens,
                  seed=o.seed)
    with torch.no_grad():
        merged = {k: v.detach() for k, v in merged_state().items()}
    for key in float_keys(pivot):
        if key not in merged:   # outside the Linear layers: averaged
            merged[key] = base[key] + mean_task_vector(pivot, experts, key).float()
    if diagnostics is not None:
        diagnostics.update(method=NAME, options=dict(o),
                           coefficients=coefficients.detach().tolist(),
                           fit_loss_first_last=[losses[0], losses[-1]] if losses else None)
    return finalize(pivot, merged)


def _merged_state(coefficients: Tensor, base: dict[str, Tensor], taus: list[dict[str, Tensor]], layers: list[str],
                  slices: dict[str, list[slice]]) -> dict[str, Tensor]:
    """The Linear layers' tensors of pivot + sum_k lambda_{k,l,c} tau_{k,l,c} (differentiable in the lambdas)."""
    state, column = {}, 0
    for layer in layers:
        for key in layer_keys(layer):
            if key not in base:
                continue
            rows = []
            for j, rs in enumerate(slices[layer]):
                update = sum(coefficients[k, column + j] * taus[k][key][rs] for k in range(len(taus)))
                rows.append(base[key][rs] + update)
            state[key] = torch.cat(rows)
        column += len(slices[layer])
    return state


def _fit(coefficients: Tensor, merged_state: Callable[[], dict[str, Tensor]], base: dict[str, Tensor],
         taus: list[dict[str, Tensor]], stats: Sequence[ExpertStats], *, steps: int, lr: float, batch_tokens: int,
         seed: int) -> list[float]:
    """Adam on the feature-matching loss L(lambda) of the module docstring; the loss of each step."""
    with torch.no_grad():
        inputs = [s.inputs.float() for s in stats]
        targets = [projector_forward(e, x) for e, x in zip([{k: base[k] + t[k] for k in base} for t in taus], inputs)]
        scales = [((t - projector_forward(base, x)) ** 2).sum(-1).mean().clamp_min(1e-12)
                  for t, x in zip(targets, inputs)]
    generators = [torch.Generator().manual_seed(_content_seed(seed, x)) for x in inputs]
    optimizer = torch.optim.Adam([coefficients], lr=lr)
    losses = []
    for _ in range(steps):
        state = merged_state()
        loss = 0.0
        for x, target, scale, generator in zip(inputs, targets, scales, generators):
            pick = torch.randint(0, x.shape[0], (min(batch_tokens, x.shape[0]),), generator=generator)
            loss = loss + ((projector_forward(state, x[pick]) - target[pick]) ** 2).sum(-1).mean() / scale
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses
