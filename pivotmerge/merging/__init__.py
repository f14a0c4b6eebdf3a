"""Merging library: a registry of merge methods plus the helpers they share.

A merge method is a pure function over state dicts::

    fn(pivot: dict[str, Tensor], experts: list[dict[str, Tensor]], *, <options>,
       diagnostics: dict | None = None) -> dict[str, Tensor]

It works on task vectors ``tau_k = expert_k - pivot``, never mutates its inputs, does no I/O and keeps
no global state. Floating-point tensors are computed in float32 (float64 stays float64) and returned in
the pivot's dtype; non-floating tensors (integer buffers) are copied from the pivot.

Methods register themselves with :func:`register`; :func:`get_method` imports the built-in method
modules lazily (``baselines.*`` and ``pivotmerge.method``), so importing this package stays cheap.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from pivotmerge.merging.errors import MergeConfigError, MergeError, MergeInputError

StateDict = dict[str, Tensor]
MergeFn = Callable[..., StateDict]

__all__ = [
    "MergeConfigError",
    "MergeError",
    "MergeInputError",
    "StateDict",
    "CHUNK",
    "FlatTaskVectors",
    "available",
    "chunks",
    "check_bool",
    "check_choice",
    "check_fraction",
    "check_int",
    "check_number",
    "compute_dtype",
    "diag_layer",
    "finalize",
    "float_keys",
    "get_method",
    "group_layers",
    "layer_name",
    "merge",
    "method_defaults",
    "register",
    "register_alias",
    "stacked_task_vector",
    "task_vectors",
    "validate_inputs",
]

# name -> (function, preset keyword options)
_REGISTRY: dict[str, tuple[MergeFn, dict[str, Any]]] = {}
_BUILTIN_MODULES = (
    "baselines.average",
    "baselines.task_arithmetic",
    "baselines.ties",
    "baselines.dare",
    "pivotmerge.method",
)
_loaded = False


# --------------------------------------------------------------------------------------------- registry
def register(name: str, **preset: Any) -> Callable[[MergeFn], MergeFn]:
    """Decorator registering a merge function under ``name`` (``preset`` fixes some of its options)."""

    def deco(fn: MergeFn) -> MergeFn:
        _REGISTRY[name] = (fn, dict(preset))
        return fn

    return deco


def register_alias(alias: str, target: str, **preset: Any) -> None:
    """Register ``alias`` as ``target`` with some options fixed (e.g. ``dare_ties`` = dare, then=ties)."""
    fn, base = _REGISTRY[target]
    _REGISTRY[alias] = (fn, {**base, **preset})


def _ensure_loaded() -> None:
    global _loaded
    if _loaded:
        return
    for mod in _BUILTIN_MODULES:
        importlib.import_module(mod)
    _loaded = True


def available() -> list[str]:
    """Sorted names of the registered merge methods."""
    _ensure_loaded()
    return sorted(_REGISTRY)


def get_method(name: str) -> MergeFn:
    """The merge function registered as ``name`` (with its preset options bound)."""
    _ensure_loaded()
    if name not in _REGISTRY:
        raise MergeConfigError(f"unknown merge method {name!r}; available: {', '.join(available())}")
    fn, preset = _REGISTRY[name]
    if not preset:
        return fn
    bound = functools.partial(fn, **preset)
    functools.update_wrapper(bound, fn)
    return bound


def method_defaults(name: str) -> dict[str, Any]:
    """Keyword options of method ``name`` and their defaults (preset options excluded)."""
    _ensure_loaded()
    if name not in _REGISTRY:
        raise MergeConfigError(f"unknown merge method {name!r}; available: {', '.join(available())}")
    fn, preset = _REGISTRY[name]
    out = {}
    for p in inspect.signature(fn).parameters.values():
        if p.kind is p.KEYWORD_ONLY and p.name not in preset and p.name not in _NON_OPTIONS:
            out[p.name] = p.default
    return out


# keyword arguments of merge functions that are not user options
_NON_OPTIONS = {"diagnostics", "calibration_loss"}


def merge(name: str, pivot: Mapping[str, Tensor], experts: Sequence[Mapping[str, Tensor]], **options: Any) -> StateDict:
    """Run merge method ``name`` on (pivot, experts) with the given keyword options."""
    fn = get_method(name)
    check_options(name, options)
    return fn(pivot, experts, **options)


def check_options(name: str, options: Mapping[str, Any]) -> None:
    """Raise MergeConfigError if ``options`` holds a key that method ``name`` does not accept."""
    valid = set(method_defaults(name)) | _NON_OPTIONS
    unknown = sorted(set(options) - valid)
    if unknown:
        raise MergeConfigError(
            f"unknown option(s) {', '.join(unknown)} for merge method {name!r}; "
            f"valid options: {', '.join(sorted(method_defaults(name))) or '(none)'}"
        )


# ------------------------------------------------------------------------------------------ validation
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


def check_int(method: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise MergeConfigError(f"{method}: option {name} must be an integer, got {value!r}")
    return int(value)


def check_bool(method: str, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise MergeConfigError(f"{method}: option {name} must be true or false, got {value!r}")
    return value


def check_choice(method: str, name: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise MergeConfigError(f"{method}: option {name}={value!r} is not one of {', '.join(choices)}")
    return value


# -------------------------------------------------------------------------------------- tensor helpers
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


# ------------------------------------------------------------------------------ chunked task vectors
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
