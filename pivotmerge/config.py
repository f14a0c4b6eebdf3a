"""Where the Hydra configs live, and composing a run's config outside `run.py`.

The configs are `conf/` in a checkout; the package ships them as `pivotmerge.conf` (pivotmerge/conf links to
conf/, and pyproject.toml's package data copies it into any install), so `CONF_DIR` and Hydra's
`pkg://pivotmerge.conf` find them in an editable and in a non-editable install alike.
"""
from __future__ import annotations

from pathlib import Path

from pivotmerge.errors import ConfigError

CONF_PACKAGE = "pivotmerge.conf"
CONF_DIR = Path(__file__).resolve().parent / "conf"


def compose(overrides: list[str], *, root: Path | None = None, output_dir: Path | None = None):
    """The config `python run.py <overrides>` would run with from `root` (default: this working directory);
    a bad override is one ConfigError line."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    root = Path.cwd() if root is None else Path(root)
    base = [f"paths.root='{root}'", f"paths.output_dir='{output_dir or root / 'outputs' / 'suite'}'"]
    try:
        with initialize_config_module(config_module=CONF_PACKAGE, version_base="1.3"):
            return hydra_compose(config_name="config", overrides=base + list(overrides))
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(f"cannot compose the config from {' '.join(overrides) or '(no overrides)'}: "
                          f"{str(exc).splitlines()[0]}") from exc


def model_config(name: str):
    """`cfg.model` of conf/model/<name>.yaml."""
    from omegaconf import OmegaConf

    path = CONF_DIR / "model" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"no model config {name!r} (conf/model/{name}.yaml); available: "
                          f"{', '.join(sorted(p.stem for p in (CONF_DIR / 'model').glob('*.yaml')))}")
    return OmegaConf.load(path)
