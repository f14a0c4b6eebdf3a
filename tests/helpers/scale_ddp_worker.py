"""Standalone DDP run on CPU (gloo), launched by tests/scale/test_scale_ddp.py in a subprocess.

    python tests/helpers/scale_ddp_worker.py MODELS_DIR OUT_DIR

Lightning's strategy="ddp" re-launches this script once per extra rank. Each rank starts from a
*different* projector (seed + rank), trains a few steps on the tiny model with the Trainer arguments that
pivotmerge.pipeline.train builds from conf/trainer/ddp.yaml (accelerator/devices/precision swapped for CPU),
and writes its final projector to OUT_DIR/rank{R}.safetensors: DDP must broadcast rank 0's start and
all-reduce the gradients, so both files end identical.
"""
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]   # the repository (tests.helpers is not importable before this)
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(models_dir: str, out_dir: str) -> None:
    import lightning as L
    import torch
    from omegaconf import OmegaConf
    from safetensors.torch import save_file

    from pivotmerge.models.mllm import build_mllm
    from pivotmerge.training import CaptionDataModule, CaptionSource, ProjectorAlignment
    from tests.helpers.tiny_models import tiny_model_cfg

    torch.set_num_threads(1)
    rank = int(os.environ.get("LOCAL_RANK", 0))
    models = Path(models_dir)
    if rank == 0 and not (models / "llm" / "config.json").is_file():
        tiny_model_cfg(models)  # children start after rank 0 reaches fit(): the folders exist by then
    cfg = OmegaConf.create({**OmegaConf.to_container(tiny_model_cfg_from(models)), "name": "tiny"})
    mllm = build_mllm(cfg, models / "cache", seed=rank)  # different start on each rank
    from pivotmerge.config import compose

    train_cfg = compose(["trainer=ddp"], output_dir=Path(out_dir)).trainer   # ddp.yaml with what it inherits
    train_cfg.merge_with({"accelerator": "cpu", "devices": 2, "precision": "32-true", "batch_size": 4})
    steps = 3
    generator = torch.Generator().manual_seed(0)
    labels = ["a cat", "a dog", "a sign that reads apple", "a handwritten digit seven"] * 4
    train = [CaptionSource("tiny", torch.randn(len(labels), 4, 24, generator=generator), labels, ["{label}"])]
    datamodule = CaptionDataModule(mllm, train, train, batch_size=int(train_cfg.batch_size), max_steps=steps,
                                   seed=0, instructions=["Describe the image briefly.", ""], val_samples=4)
    module = ProjectorAlignment(mllm, lr=float(train_cfg.lr), weight_decay=float(train_cfg.weight_decay),
                                warmup_ratio=float(train_cfg.warmup_ratio), max_steps=steps)
    trainer = L.Trainer(
        max_steps=steps, accelerator=train_cfg.accelerator, devices=train_cfg.devices,
        strategy=train_cfg.strategy, precision=train_cfg.precision,
        accumulate_grad_batches=int(train_cfg.accumulate_grad_batches), limit_val_batches=0,
        num_sanity_val_steps=0, log_every_n_steps=1, enable_progress_bar=False, enable_model_summary=False,
        logger=False, enable_checkpointing=False, default_root_dir=out_dir)
    trainer.fit(module, datamodule=datamodule)
    state = {k: v.detach().cpu().contiguous() for k, v in mllm.projector.state_dict().items()}
    save_file(state, str(Path(out_dir) / f"rank{trainer.global_rank}.safetensors"),
              metadata={"world_size": str(trainer.world_size), "global_step": str(trainer.global_step),
                        "loss": str(float(trainer.callback_metrics.get("train/loss", float("nan"))))})


def tiny_model_cfg_from(models: Path):
    """cfg.model of the folders tests.helpers.tiny_models writes, without rebuilding them (ranks > 0 only read)."""
    from omegaconf import OmegaConf

    return OmegaConf.create({
        "vision": {"kind": "hf", "name_or_path": str(models / "vision"), "feature_dim": 24, "image_size": 32,
                   "grid": 2, "feature_norm": "layernorm", "select_layer": -2, "drop_cls": True},
        "projector": {"kind": "mlp2x_gelu"},
        "llm": {"kind": "hf", "name_or_path": str(models / "llm"), "dtype": "float32"},
        "system_prompt": None})


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
