"""Weights & Biases: offline by default, every file under the run folder, one group per experiment."""
from __future__ import annotations

import os
from pathlib import Path


def configure_wandb_env(cfg) -> None:
    """Keep W&B files under the run's output folder and default to offline mode."""
    if not cfg.logger.wandb.get("enabled", False):
        os.environ.setdefault("WANDB_MODE", "disabled")
        return
    run_dir = Path(cfg.logger.wandb.dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    os.environ["WANDB_MODE"] = str(cfg.logger.wandb.mode)
    os.environ["WANDB_DIR"] = str(run_dir)
    os.environ["WANDB_CACHE_DIR"] = str(run_dir / "wandb-cache")
    os.environ["WANDB_CONFIG_DIR"] = str(run_dir / "wandb-config")
    os.environ.setdefault("WANDB_SILENT", "true")


def lightning_logger_factory(cfg):
    """A factory (stage, name) -> WandbLogger, or None when W&B is disabled."""
    if not cfg.logger.wandb.get("enabled", False):
        return None
    from lightning.pytorch.loggers import WandbLogger
    from omegaconf import OmegaConf

    def make(stage: str, name: str):
        return WandbLogger(project=cfg.logger.wandb.project, entity=cfg.logger.wandb.entity,
                           group=str(cfg.logger.wandb.group), name=f"{stage}-{name}-seed{cfg.seed}",
                           job_type=stage, save_dir=str(cfg.logger.wandb.dir), offline=cfg.logger.wandb.mode == "offline",
                           config=OmegaConf.to_container(cfg, resolve=True), reinit=True)

    return make


def start_run(cfg, job_type: str, name: str):
    """A plain wandb run (merge/eval/report stages); None when disabled."""
    if not cfg.logger.wandb.get("enabled", False):
        return None
    import wandb
    from omegaconf import OmegaConf

    return wandb.init(project=cfg.logger.wandb.project, entity=cfg.logger.wandb.entity,
                      group=str(cfg.logger.wandb.group), job_type=job_type, name=name,
                      dir=str(cfg.logger.wandb.dir), mode=str(cfg.logger.wandb.mode),
                      config=OmegaConf.to_container(cfg, resolve=True), reinit="finish_previous")
