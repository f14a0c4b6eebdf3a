"""Task vectors streamed in column chunks (no K x n temporary) and the one final addition."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from pivotmerge.merging.ops.state import compute_dtype

#: columns per chunk of the fused passes: big enough that per-op overheads (thread barriers, which get
#: expensive on a loaded machine) stay small, small enough that K x CHUNK temporaries stay far below
#: the input size (K=4, fp32: 64 MiB)
CHUNK = 1 << 22


class FlatTaskVectors:
    """Flat views of one tensor of the pivot and the experts, to build task vectors chunk by chunk.

    ``chunk(c0, c1)`` returns a fresh (K, c1 - c0) tensor tau[:, c0:c1] in compute dtype;
    ``row(i)`` returns expert i's whole task vector (fresh, 1-D). Nothing K x n is ever allocated.
    """

    def __init__(self, pivot: Mapping[str, Tensor], experts: Sequence[Mapping[str, Tensor]], key: str):
        self.key = key
        self.shape = tuple(pivot[key].shape)
        self.dtype = compute_dtype(pivot[key].dtype)
        self.p = pivot[key].reshape(-1)
        self.es = [e[key].reshape(-1) for e in experts]
        self.numel = self.p.numel()
        self.k = len(experts)

    def chunk(self, c0: int, c1: int) -> Tensor:
        t = torch.stack([e[c0:c1] for e in self.es])
        if t.dtype != self.dtype:
            t = t.to(self.dtype)
        t -= self.p[c0:c1].to(self.dtype)
        return t

    def row(self, i: int) -> Tensor:
        return self.es[i].to(self.dtype) - self.p.to(self.dtype)


def chunks(n: int, size: int | None = None):
    """(start, stop) pairs covering range(n) in steps of ``size`` (default :data:`CHUNK`)."""
    size = size or CHUNK
    return ((c0, min(n, c0 + size)) for c0 in range(0, n, size))


def summed_task_vector(pivot: Mapping[str, Tensor], experts: Sequence[Mapping[str, Tensor]], key: str) -> Tensor:
    """sum_k tau_k for one tensor, in compute dtype (one implementation, so reductions agree bit for bit).

    Computed in cache-sized chunks, so no K x n temporary is allocated."""
    v = FlatTaskVectors(pivot, experts, key)
    out = torch.empty(v.numel, dtype=v.dtype)
    for c0, c1 in chunks(v.numel):
        torch.sum(v.chunk(c0, c1), 0, out=out[c0:c1])
    return out.reshape(v.shape)


def mean_task_vector(pivot: Mapping[str, Tensor], experts: Sequence[Mapping[str, Tensor]], key: str) -> Tensor:
    """(1/K) sum_k tau_k for one tensor (the rule of the SVD-based methods for non-matrix parameters)."""
    return summed_task_vector(pivot, experts, key).div_(len(experts))


def apply_update(pivot_t: Tensor, update: Tensor, scale: float) -> Tensor:
    """pivot + scale * update in compute dtype (the one place the final addition happens).

    ``update`` must be a fresh tensor owned by the caller: it is scaled and shifted in place."""
    return update.mul_(scale).add_(pivot_t.reshape(update.shape))


__all__ = ["CHUNK", "FlatTaskVectors", "apply_update", "chunks", "mean_task_vector", "summed_task_vector"]
