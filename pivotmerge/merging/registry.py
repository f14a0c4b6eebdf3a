"""Which merge methods exist and their defaults: the files ``conf/merge/<name>.yaml``, nothing else.

Each file is a Hydra ``_partial_`` config::

    # @package merge.<name>
    _target_: baselines.ties.ties_merge      # the merge function
    _partial_: true
    density: 0.2                            # every option, with its default
    ...

:func:`available` lists the files, :func:`merge` calls ``_target_`` with the file's options updated by the
caller's. A merge function is ``fn(pivot, experts, *, <options>, diagnostics=None)``: its options are
keyword-only parameters *without* defaults (the YAML holds the only copy; ``tests/merging/test_merge_registry.py``
enforces it). Keyword parameters named in :data:`NON_OPTIONS` are supplied by the caller, not configured.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from pivotmerge.merging.errors import MergeConfigError

MergeFn = Callable[..., dict[str, Tensor]]

#: keyword parameters of merge functions that are not user options: ``diagnostics`` (a dict the method
#: fills), ``calibration`` (per-expert statistics from the pipeline, for data-aware methods) and
#: PivotMerge's ``calibration_loss`` (its alm=data probe)
NON_OPTIONS = frozenset({"diagnostics", "calibration", "calibration_loss"})


def conf_dir() -> Path:
    """The folder holding the merge configs."""
    from pivotmerge.config import CONF_DIR

    return CONF_DIR / "merge"


def available() -> list[str]:
    """Sorted names of the merge methods (the stems of ``conf/merge/*.yaml``)."""
    folder = conf_dir()
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


@dataclass(frozen=True)
class MethodConfig:
    name: str
    path: Path
    target: str
    defaults: dict[str, Any]


def load_config(name: str) -> MethodConfig:
    """The parsed ``conf/merge/<name>.yaml``: its ``_target_`` and its options with their defaults."""
    if not isinstance(name, str) or not name or "/" in name or "\\" in name:
        raise MergeConfigError(f"merge method must be a name from conf/merge/, got {name!r}")
    folder = conf_dir()
    if not folder.is_dir():
        raise MergeConfigError(f"the merge configs are missing: {folder} does not exist (the registry is that folder)")
    path = folder / f"{name}.yaml"
    if not path.is_file():
        raise MergeConfigError(f"unknown merge method {name!r}; available: {', '.join(available())}")
    return _load(path, path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _load(path: Path, _mtime: int) -> MethodConfig:
    from omegaconf import OmegaConf

    try:
        cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as e:  # noqa: BLE001 - any parse error becomes one line naming the file
        raise MergeConfigError(f"{path}: cannot read the merge config ({e})") from e
    if not isinstance(cfg, dict):
        raise MergeConfigError(f"{path}: expected a mapping of options, got {type(cfg).__name__}")
    target = cfg.pop("_target_", None)
    if not isinstance(target, str) or "." not in target:
        raise MergeConfigError(f"{path}: missing _target_ (module.function of the merge function)")
    if cfg.pop("_partial_", None) is not True:
        raise MergeConfigError(f"{path}: needs `_partial_: true` (Hydra must return the function, not call it)")
    return MethodConfig(path.stem, path, target, cfg)


def import_target(target: str, origin: str = "merge config") -> MergeFn:
    """The function named by a ``_target_`` string, or MergeConfigError naming the config."""
    mod_name, _, fn_name = target.rpartition(".")
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise MergeConfigError(f"{origin}: _target_ {target!r} cannot be imported ({e})") from e
    if not callable(fn):
        raise MergeConfigError(f"{origin}: _target_ {target!r} is not a function")
    return fn


def get_method(name: str) -> MergeFn:
    """The merge function of method ``name`` (options not bound; see :func:`merge`)."""
    cfg = load_config(name)
    return import_target(cfg.target, str(cfg.path))


def method_defaults(name: str) -> dict[str, Any]:
    """Options of method ``name`` and their defaults, as in its YAML (a fresh dict)."""
    return {k: _copy(v) for k, v in load_config(name).defaults.items()}


def _copy(v: Any) -> Any:
    return list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v


def _parameters(fn: Callable) -> Mapping[str, inspect.Parameter]:
    return inspect.signature(fn).parameters


def method_options(fn: Callable) -> list[str]:
    """The option names of a merge function: its keyword-only parameters minus :data:`NON_OPTIONS`."""
    return [p.name for p in _parameters(fn).values() if p.kind is p.KEYWORD_ONLY and p.name not in NON_OPTIONS]


def accepted_extras(fn: Callable) -> frozenset[str]:
    """The :data:`NON_OPTIONS` names that ``fn`` (a merge function or a partial of one) accepts."""
    return NON_OPTIONS & frozenset(_parameters(fn))


def needs_calibration(method: str | Callable) -> bool:
    """Whether a method needs calibration data from the pipeline (its function takes ``calibration``)."""
    fn = get_method(method) if isinstance(method, str) else method
    return "calibration" in _parameters(fn)


def resolve_options(name: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The YAML's options updated by ``overrides``; an unknown name is a MergeConfigError."""
    options = method_defaults(name)
    unknown = sorted(set(overrides) - set(options))
    if unknown:
        raise MergeConfigError(
            f"unknown option(s) {', '.join(unknown)} for merge method {name!r}; "
            f"valid options: {', '.join(sorted(options)) or '(none)'}"
        )
    options.update(overrides)
    return options


def check_options(fn: Callable, options: Mapping[str, Any], origin: str) -> None:
    """MergeConfigError unless ``options`` names exactly the options of merge function ``fn``."""
    expected = set(method_options(fn))
    unknown, missing = sorted(set(options) - expected), sorted(expected - set(options))
    if unknown or missing:
        parts = ([f"unknown option(s) {', '.join(unknown)}"] if unknown else []) + (
            [f"missing option(s) {', '.join(missing)}"] if missing else [])
        raise MergeConfigError(f"{origin}: {'; '.join(parts)}; the options of {fn.__module__}.{fn.__name__} "
                               f"are {', '.join(sorted(expected)) or '(none)'}")


def merge(
    name: str, pivot: Mapping[str, Tensor], experts: Sequence[Mapping[str, Tensor]], **overrides: Any
) -> dict[str, Tensor]:
    """Merge (pivot, experts) with method ``name``: its YAML defaults updated by ``overrides``.

    ``overrides`` may also hold the :data:`NON_OPTIONS` the method accepts (e.g. ``diagnostics={}``).
    """
    fn = get_method(name)
    extras = {k: overrides.pop(k) for k in list(overrides) if k in NON_OPTIONS}
    unsupported = sorted(set(extras) - accepted_extras(fn))
    if unsupported:
        raise MergeConfigError(f"merge method {name!r} does not take {', '.join(unsupported)}")
    return fn(pivot, experts, **resolve_options(name, overrides), **extras)


# ---------------------------------------------------------------------------------------- contract
@dataclass(frozen=True)
class Contract:
    """Properties of a merge method that ``tests/merging/test_merge_contract.py`` checks, beyond the ones every
    method must have (dtype kept, inputs untouched, deterministic, zero task vectors give the pivot, clean
    option errors, CLI round trip).

    * ``scale``: the option that multiplies the whole merged update (lam, alpha), if any.
    * ``one_expert``: options (on top of the defaults) under which a single expert gives exactly
      pivot + scale * tau; None where that is not the method's definition (e.g. Iso-C flattens tau's spectrum).
    * ``identical``: K copies of one expert give the same update as that expert alone (``'mean'``), K times
      it (``'sum'``), or nothing simpler (None: the result need only be finite).
    * ``symmetric``: options under which the result does not depend on the experts' order (``{}``: always).
    * ``cli``: options the command line needs, which has no calibration loss (``{}``: the defaults run).
    """

    scale: str | None = None
    one_expert: Mapping[str, Any] | None = None
    identical: str | None = None
    symmetric: Mapping[str, Any] = field(default_factory=dict)
    cli: Mapping[str, Any] = field(default_factory=dict)


def contract(**properties: Any) -> Callable[[MergeFn], MergeFn]:
    """Decorator declaring a merge function's :class:`Contract` (it registers nothing)."""
    c = Contract(**properties)
    if c.identical not in (None, "mean", "sum"):
        raise ValueError(f"identical must be 'mean', 'sum' or None, got {c.identical!r}")

    def deco(fn: MergeFn) -> MergeFn:
        fn.merge_contract = c
        return fn

    return deco


def contract_of(fn: Callable) -> Contract:
    """The declared :class:`Contract` of a merge function (the empty one when none is declared)."""
    return getattr(fn, "merge_contract", Contract())


__all__ = [
    "NON_OPTIONS",
    "Contract",
    "MethodConfig",
    "accepted_extras",
    "available",
    "check_options",
    "conf_dir",
    "contract",
    "contract_of",
    "get_method",
    "import_target",
    "load_config",
    "merge",
    "method_defaults",
    "method_options",
    "needs_calibration",
    "resolve_options",
]
