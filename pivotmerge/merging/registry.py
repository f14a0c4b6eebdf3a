"""Which merge methods exist and their defaults: the files ``conf/merge/<name>.yaml``, nothing else.

Each file is a Hydra ``_partial_`` config::

    # @package merge.<name>
    _target_: baselines.ties.ties_merge      # the merge method (declared with @merge_method)
    _partial_: true
    density: 0.2                            # every option, with its default
    ...

:func:`available` lists the files; :func:`method_defaults` reads a file's option values, and the method's spec
(:mod:`pivotmerge.merging.spec`, next to its function) says what the options are. The YAML holds the only copy
of the values, the spec the only copy of the kinds and ranges (``tests/merging/test_merge_registry.py``
checks that the two name the same options). :func:`pivotmerge.merging.call.merge` runs a method.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from pivotmerge.merging.errors import MergeConfigError
from pivotmerge.merging.spec import MethodSpec, spec_of

MergeFn = Callable[..., dict[str, Tensor]]


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
    """The merge function of method ``name`` (options not bound; :func:`pivotmerge.merging.call.merge` runs it)."""
    cfg = load_config(name)
    return import_target(cfg.target, str(cfg.path))


def method_defaults(name: str) -> dict[str, Any]:
    """Options of method ``name`` and their defaults, as in its YAML (a fresh dict)."""
    return {k: _copy(v) for k, v in load_config(name).defaults.items()}


def _copy(v: Any) -> Any:
    return list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v


def get_spec(name: str) -> MethodSpec:
    """The spec of method ``name`` (its options' kinds, contract, what it needs)."""
    return spec_of(get_method(name))


def needs_calibration(name: str, options: Mapping[str, Any] | None = None) -> bool:
    """Whether method ``name`` needs calibration statistics under its YAML options updated by ``options``
    (pivotmerge needs them for its feature-space reading, pivotmerge_data_free does not)."""
    return get_spec(name).needs_statistics(resolve_options(name, options or {}))


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
    """MergeConfigError unless ``options`` names exactly the options of merge method ``fn``."""
    expected = set(spec_of(fn).options)
    unknown, missing = sorted(set(options) - expected), sorted(expected - set(options))
    if unknown or missing:
        parts = ([f"unknown option(s) {', '.join(unknown)}"] if unknown else []) + (
            [f"missing option(s) {', '.join(missing)}"] if missing else [])
        raise MergeConfigError(f"{origin}: {'; '.join(parts)}; the options of {fn.__module__}.{fn.__name__} "
                               f"are {', '.join(sorted(expected)) or '(none)'}")


__all__ = [
    "MethodConfig",
    "available",
    "check_options",
    "conf_dir",
    "get_method",
    "get_spec",
    "import_target",
    "load_config",
    "method_defaults",
    "needs_calibration",
    "resolve_options",
]
