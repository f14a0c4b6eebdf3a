"""Compose the real Hydra config for tests: tiny models, small real sources, everything under tmp."""
from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from tests.helpers import CONF


def compose_cfg(tmp: Path, model_cfg, overrides: list[str] = ()):
    base = [f"paths.root={tmp}", f"paths.cache_dir={tmp}/cache", f"paths.models_dir={tmp}/models",
            f"paths.output_dir={tmp}/out", "logger=none", "scenario.sources=[digits,words]",
            "data.split.train=24", "data.split.val=8", "data.split.test=8", "data.sources.words.count=60",
            "scenario.pivot.steps=2", "scenario.pivot.samples_per_source=8", "scenario.experts.steps=3",
            "trainer.batch_size=4", "trainer.val_samples=4", "trainer.checkpoint_every=1",
            "trainer.progress_bar=false"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=base + list(overrides))
    with open_dict(cfg):
        cfg.model = OmegaConf.merge(cfg.model, model_cfg)
    return cfg
