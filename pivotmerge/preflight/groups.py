"""Config-group choices on the command line exist, checked before Hydra composes anything.

Hydra's own error for `merge=[nonexistnet]` prints the config search path but not the names that exist, so
`check_group_choices(overrides)` raises one ConfigError listing them. Only groups under conf/ are checked:
Hydra's own groups (`hydra/...`) and runs that add config folders (`--config-dir`, `hydra.searchpath`) are
left to Hydra.
"""
from __future__ import annotations

from pathlib import Path

from pivotmerge.config import CONF_DIR
from pivotmerge.errors import ConfigError


def group_options(conf_dir: Path = CONF_DIR) -> dict[str, set[str]]:
    """Every config group under `conf_dir` ("merge", "data/source", ...) -> the names of its configs."""
    groups: dict[str, set[str]] = {}
    for path in conf_dir.rglob("*.yaml"):
        group = path.parent.relative_to(conf_dir).as_posix()
        if group != ".":
            groups.setdefault(group, set()).add(path.stem)
    return groups


def _names(value) -> list[str]:
    from hydra.core.override_parser.types import ChoiceSweep

    if value is None:
        return []
    if isinstance(value, ChoiceSweep):
        return [name for item in value.list for name in _names(item)]
    if isinstance(value, (list, tuple)):
        return [name for item in value for name in _names(item)]
    return [str(value)] if isinstance(value, (str, int, float)) else []   # glob(), range(): Hydra's to check


def check_group_choices(overrides: list[str], conf_dir: Path = CONF_DIR) -> None:
    """Raise ConfigError when an override picks a config that its group does not have."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if any(o.split("=", 1)[0].lstrip("+~") == "hydra.searchpath" for o in overrides):
        return
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:   # a malformed override: Hydra's own message says where
        return
    groups = group_options(conf_dir)
    for override in parsed:
        group = override.key_or_group
        if override.is_delete() or group not in groups or group.split("/")[0] == "hydra":
            continue
        unknown = [name for name in _names(override.value()) if name not in groups[group]]
        if unknown:
            existing = sorted(name for name in groups[group] if not name.startswith("_"))
            raise ConfigError(f"{override.input_line}: conf/{group}/ has no {', '.join(map(repr, unknown))}; "
                              f"the {len(existing)} that exist: {', '.join(existing)}")
