"""Uncertainty for the results table: bootstrap intervals, gain retention, paired tests (pure numpy).

Every model is scored on the same items of a benchmark (same documents, same seed's test split), so the
bootstrap draws ONE set of resampled item indices per (benchmark, seed) and applies it to every model:
differences and ratios between models (retention, paired comparisons) are resampled jointly, as they should
be. With several seeds the seeds are resampled too (a two-level bootstrap: seeds, then items within each).
All random draws come from fixed generators, so a table is reproducible byte for byte.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

ITERATIONS = 2000
LEVEL = 0.95


def _rng(*parts) -> np.random.Generator:
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


@dataclass
class Resampler:
    """Shared bootstrap draws: `seed_draws[b]` picks the seeds of replicate b, `item_draws[(bench, seed)][b]`
    the items of that benchmark and seed."""

    seeds: list[int]
    iterations: int = ITERATIONS

    def __post_init__(self):
        rng = _rng("seeds", self.seeds, self.iterations)
        k = len(self.seeds)
        self.seed_draws = (rng.integers(0, k, size=(self.iterations, k)) if k > 1
                           else np.zeros((self.iterations, 1), dtype=int))
        self._items: dict[tuple[str, int, int], np.ndarray] = {}

    def item_draws(self, bench: str, seed: int, n: int) -> np.ndarray:
        key = (bench, seed, n)
        if key not in self._items:
            self._items[key] = _rng("items", bench, seed, n, self.iterations).integers(0, n, size=(self.iterations, n))
        return self._items[key]

    def replicates(self, bench: str, per_seed: dict[int, np.ndarray]) -> np.ndarray | None:
        """Bootstrap replicates (iterations,) of the mean over seeds of the item mean; None when a seed of
        the resampler has no items for this model."""
        if any(seed not in per_seed for seed in self.seeds):
            return None
        item_means = np.empty((self.iterations, len(self.seeds)))
        for j, seed in enumerate(self.seeds):
            values = np.asarray(per_seed[seed], dtype=float)
            item_means[:, j] = values[self.item_draws(bench, seed, len(values))].mean(axis=1)
        chosen = np.take_along_axis(item_means, self.seed_draws, axis=1)
        return chosen.mean(axis=1)


def interval(replicates: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates (NaNs, e.g. an undefined ratio, are dropped)."""
    finite = replicates[np.isfinite(replicates)]
    if finite.size == 0:
        return math.nan, math.nan
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(finite, [tail, 100 - tail])
    return float(lo), float(hi)


def retention(merged, pivot, expert):
    """Gain retention (merged - pivot) / (expert - pivot): 1 keeps the expert's gain, 0 keeps nothing.
    Undefined (NaN) where the expert did not improve on the pivot."""
    merged, pivot, expert = (np.asarray(x, dtype=float) for x in (merged, pivot, expert))
    gain = expert - pivot
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(gain > 0, (merged - pivot) / gain, np.nan)


@dataclass
class PairedResult:
    difference: float       # mean(a) - mean(b) over the paired items
    lo: float
    hi: float
    p_value: float
    n: int
    test: str


def mcnemar_exact(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided exact McNemar test on paired 0/1 outcomes (binomial test on the discordant pairs)."""
    from math import comb

    only_a = int(np.sum((a == 1) & (b == 0)))
    only_b = int(np.sum((a == 0) & (b == 1)))
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(comb(n, i) for i in range(k + 1)) / 2 ** n
    return float(min(1.0, 2 * tail))


def sign_flip_p(d: np.ndarray, iterations: int = 20000) -> float:
    """Two-sided paired permutation test (random sign flips of the differences)."""
    observed = abs(d.mean())
    flips = _rng("flips", d.size, iterations).choice([-1.0, 1.0], size=(iterations, d.size))
    null = np.abs((flips * d).mean(axis=1))
    return float((1 + np.sum(null >= observed - 1e-12)) / (iterations + 1))


def paired_comparison(a: np.ndarray, b: np.ndarray, label: str = "pooled") -> PairedResult:
    """Compare two models on the same items: difference of means, its paired-bootstrap 95 % interval, and a
    p-value (exact McNemar for 0/1 outcomes, sign-flip permutation otherwise)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.size == 0:
        raise ValueError("paired comparison needs the same non-empty set of items for both models")
    d = a - b
    draws = _rng("paired", label, d.size).integers(0, d.size, size=(ITERATIONS, d.size))
    lo, hi = interval(d[draws].mean(axis=1))
    binary = bool(np.isin(a, (0.0, 1.0)).all() and np.isin(b, (0.0, 1.0)).all())
    p = mcnemar_exact(a, b) if binary else sign_flip_p(d)
    return PairedResult(float(d.mean()), lo, hi, p, int(d.size), "McNemar exact" if binary else "sign-flip")


__all__ = ["ITERATIONS", "LEVEL", "PairedResult", "Resampler", "interval", "mcnemar_exact", "paired_comparison",
           "retention", "sign_flip_p"]
