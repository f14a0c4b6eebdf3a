"""The cross-modal projector: LLaVA's `mm_projector` family.

Parameter names follow LLaVA exactly (`0.weight`, `0.bias`, `2.weight`, ... for `mlp2x_gelu`; `weight`,
`bias` for `linear`) so a state dict saved here loads as LLaVA's `pretrain_mm_mlp_adapter` once prefixed
with `model.mm_projector.` (see `pivotmerge.interop`).
"""
from __future__ import annotations

import re

import torch
from torch import nn

from pivotmerge.errors import ConfigError


def build_projector(kind: str, in_dim: int, out_dim: int) -> nn.Module:
    """`linear`, `identity` or `mlp{N}x_gelu` (LLaVA's names); `mlp2x_gelu` is LLaVA-1.5's projector."""
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    match = re.fullmatch(r"mlp(\d+)x_gelu", kind)
    if match is None:
        raise ConfigError(f"unknown projector kind {kind!r}: use 'linear' or 'mlp<N>x_gelu' (e.g. mlp2x_gelu)")
    depth = int(match.group(1))
    if depth < 1:
        raise ConfigError(f"projector depth must be >= 1, got {kind!r}")
    layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
    for _ in range(1, depth):
        layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
    return nn.Sequential(*layers)


def projector_dims(state_dict: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(input dim, output dim) of a projector state dict, read from its first and last weight matrices."""
    weights = [(k, v) for k, v in state_dict.items() if k.endswith("weight") and v.ndim == 2]
    if not weights:
        raise ConfigError("projector state dict has no 2-D weight matrix")
    weights.sort(key=lambda kv: _layer_index(kv[0]))
    return int(weights[0][1].shape[1]), int(weights[-1][1].shape[0])


def _layer_index(key: str) -> int:
    head = key.rsplit(".", 1)[0].rsplit(".", 1)[-1]
    return int(head) if head.isdigit() else 0
