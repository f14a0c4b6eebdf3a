"""Checks every merge method shares: inputs (keys, shapes, finite values) and option values.

Each failure is a :class:`MergeInputError` or :class:`MergeConfigError` whose one-line message names the
file/tensor or the option and value.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from pivotmerge.merging.errors import MergeConfigError, MergeInputError


def validate_inputs(
    pivot: Mapping[str, Tensor],
    experts: Sequence[Mapping[str, Tensor]],
    *,
    min_experts: int = 1,
    method: str = "merge",
    labels: Sequence[str] | None = None,
    check_finite: bool = True,
) -> None:
    """Check that pivot and experts are state dicts with identical keys and shapes and finite values.

    ``labels`` names (pivot, expert_1, ..., expert_K) in messages, e.g. the file paths.
    """
    if isinstance(experts, Mapping) or not isinstance(experts, Sequence):
        raise MergeInputError(f"{method}: experts must be a list of state dicts")
    if labels is None:
        labels = ["pivot"] + [f"expert {i}" for i in range(len(experts))]
    if len(experts) < min_experts:
        raise MergeInputError(
            f"{method} needs at least {min_experts} expert(s), got {len(experts)}"
        )
    all_sds = [pivot, *experts]
    for sd, lab in zip(all_sds, labels):
        if not isinstance(sd, Mapping):
            raise MergeInputError(f"{lab}: not a state dict (got {type(sd).__name__})")
        for k, v in sd.items():
            if not isinstance(v, Tensor):
                raise MergeInputError(f"{lab}: entry {k!r} is not a tensor (got {type(v).__name__})")
    if len(pivot) == 0:
        raise MergeInputError(f"{labels[0]}: empty state dict")
    keys = set(pivot)
    for sd, lab in zip(experts, labels[1:]):
        if set(sd) != keys:
            missing = sorted(keys - set(sd))
            extra = sorted(set(sd) - keys)
            parts = []
            if missing:
                parts.append(f"missing {_short(missing)}")
            if extra:
                parts.append(f"unexpected {_short(extra)}")
            raise MergeInputError(f"{lab}: keys differ from {labels[0]}: {'; '.join(parts)}")
        for k in pivot:
            if tuple(sd[k].shape) != tuple(pivot[k].shape):
                raise MergeInputError(
                    f"{lab}: tensor {k!r} has shape {tuple(sd[k].shape)}, "
                    f"but {labels[0]} has {tuple(pivot[k].shape)}"
                )
            if sd[k].is_floating_point() != pivot[k].is_floating_point():
                raise MergeInputError(f"{lab}: tensor {k!r} is {sd[k].dtype}, {labels[0]} has {pivot[k].dtype}")
    if check_finite:
        for sd, lab in zip(all_sds, labels):
            for k, v in sd.items():
                # a finite sum proves every entry finite (one reduction, no temporary); otherwise count
                if v.is_floating_point() and not bool(torch.isfinite(v.sum())) and not bool(torch.isfinite(v).all()):
                    n_bad = int((~torch.isfinite(v)).sum())
                    raise MergeInputError(f"{lab}: tensor {k!r} has {n_bad} NaN/Inf value(s)")


def _short(names: list[str], n: int = 5) -> str:
    s = ", ".join(repr(x) for x in names[:n])
    return s + (f" (+{len(names) - n} more)" if len(names) > n else "")


def check_fraction(method: str, name: str, value: Any, *, low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a float in [0, 1] (open ends on request) or MergeConfigError."""
    v = check_number(method, name, value)
    lo_ok = v > 0 if low_open else v >= 0
    hi_ok = v < 1 if high_open else v <= 1
    if not (lo_ok and hi_ok):
        rng = ("(" if low_open else "[") + "0, 1" + (")" if high_open else "]")
        raise MergeConfigError(f"{method}: option {name}={value!r} is outside {rng}")
    return v


def check_number(method: str, name: str, value: Any, *, minimum: float | None = None,
                 exclusive_minimum: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise MergeConfigError(f"{method}: option {name} must be a finite number, got {value!r}")
    v = float(value)
    if minimum is not None and (v <= minimum if exclusive_minimum else v < minimum):
        op = ">" if exclusive_minimum else ">="
        raise MergeConfigError(f"{method}: option {name}={value!r} must be {op} {minimum}")
    return v


def check_int(method: str, name: str, value: Any, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise MergeConfigError(f"{method}: option {name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise MergeConfigError(f"{method}: option {name}={value!r} must be >= {minimum}")
    return int(value)


def check_bool(method: str, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise MergeConfigError(f"{method}: option {name} must be true or false, got {value!r}")
    return value


def check_choice(method: str, name: str, value: Any, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise MergeConfigError(f"{method}: option {name}={value!r} is not one of {', '.join(choices)}")
    return value


__all__ = ["check_bool", "check_choice", "check_fraction", "check_int", "check_number", "validate_inputs"]
