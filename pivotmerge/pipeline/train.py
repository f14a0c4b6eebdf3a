"""Stages 3-4 (pivot, experts), the joint reference and stage 2 (sft): projector training runs, cached by
content key."""
from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L
import torch
from safetensors.torch import load, save_file

from pivotmerge.artifacts import Artifact, ArtifactStore
from pivotmerge.errors import CacheError
from pivotmerge.pipeline.sft_lora import LORA_FILE, lora_state
from pivotmerge.training import CaptionDataModule, CaptionSource, ProjectorAlignment, StageProgressBar
from pivotmerge.wandb_logging import log_training_output

PROJECTOR_FILE = "projector.safetensors"
# Trainer settings that shape a projector (part of every training stage's cache key).
TRAIN_KEYS = ("batch_size", "lr", "weight_decay", "warmup_ratio", "accumulate_grad_batches", "precision")


def with_steps(trainer_cfg, steps: int):
    from omegaconf import OmegaConf

    return OmegaConf.create({**OmegaConf.to_container(trainer_cfg, resolve=True), "steps": steps})


def train_spec(cfg) -> dict:
    return {k: cfg.trainer[k] for k in TRAIN_KEYS}


def model_spec(cfg) -> dict:
    return {"llm": cfg.model.llm, "projector": cfg.model.projector, "system_prompt": cfg.model.system_prompt}


def caption_source(ctx, name: str, split: str, rows: int | None = None) -> CaptionSource:
    feats = ctx.features[name]
    n = feats.features[split].shape[0] if rows is None else min(rows, feats.features[split].shape[0])
    return CaptionSource(name, feats.features[split][:n], feats.labels[split][:n],
                         list(ctx.sources[name].caption_templates))


def load_projector(store: ArtifactStore, artifact: Artifact) -> dict[str, torch.Tensor]:
    folder = store.verify(artifact.stage, artifact.key)
    try:
        return load((folder / PROJECTOR_FILE).read_bytes())   # in memory, not mmapped (see features.py)
    except Exception as exc:
        raise CacheError(f"cannot read {folder / PROJECTOR_FILE}: {exc}; delete {folder} and run again") from exc


def seeded_projector(mllm, seed: int) -> dict[str, torch.Tensor]:
    from pivotmerge.models.projector import build_projector

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        kind = mllm.projector_kind
        fresh = build_projector(kind, mllm.visual_dim, mllm.llm_dim)
    return {k: v.detach().clone() for k, v in fresh.state_dict().items()}


def run_training_stage(store: ArtifactStore, stage: str, name: str, spec: dict, *, mllm, init_state,
                       train: list[CaptionSource], val: list[CaptionSource], train_cfg, seed: int,
                       instructions: list[str], logger_factory=None, lora=None) -> Artifact:
    """Train the projector from `init_state` for `train_cfg.steps` steps; resume from a partial run. `lora`
    (a pipeline/sft_lora.LoraRecipe): LoRA adapters on the LLM train too and are saved in the entry.

    The cache key is claimed for the whole run: another process asking for the same projector waits and
    then reuses it. Under ddp/fsdp only rank 0 claims (the other ranks train alongside it)."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    # without steps nothing is distributed: every rank may build (the lock makes the others reuse)
    builder = int(getattr(rank_zero_only, "rank", 0) or 0) == 0 or int(train_cfg.steps) == 0
    trained = []

    def build(staging: Path) -> None:
        trained.append(_train(stage, name, spec, staging, mllm=mllm, init_state=init_state, train=train, val=val,
                              train_cfg=train_cfg, seed=seed, instructions=instructions,
                              logger_factory=logger_factory, lora=lora, save=builder))

    keep = (PROJECTOR_FILE, "metrics.json") + ((LORA_FILE,) if lora is not None else ())
    artifact = store.entry(stage, spec, build, keep=keep, builder=builder)
    trainer = trained[0] if trained else None
    if trainer is not None:
        if trainer.world_size > 1:
            trainer.strategy.barrier()   # every rank holds the same projector; rank 0 committed it
        log_training_output(trainer.logger, store, artifact)   # the projector is the run's output
    return artifact


def _resumable_checkpoint(last: Path) -> int | None:
    """The step of a readable `last.ckpt` (None if there is none); an unreadable one (a kill while it was
    written) is moved aside with a warning and training starts over."""
    if not last.is_file():
        return None
    try:
        return int(torch.load(last, map_location="cpu", weights_only=False)["global_step"])
    except Exception as exc:  # truncated/corrupt pickle: any error of torch.load
        from pivotmerge.artifacts import quarantine

        quarantine(last, f"unreadable checkpoint: {type(exc).__name__}")
        return None


def _train(stage: str, name: str, spec: dict, staging: Path, *, mllm, init_state, train, val, train_cfg,
           seed: int, instructions: list[str], logger_factory, lora=None, save: bool = True):
    """Train into `staging` (the projector and metrics are written when `save`); the trainer, or None
    without steps."""
    if lora is None:
        return _train_attached(stage, name, spec, staging, mllm=mllm, init_state=init_state, train=train, val=val,
                               train_cfg=train_cfg, seed=seed, instructions=instructions,
                               logger_factory=logger_factory, save=save)
    reuse = mllm.reuse_head_kv
    with lora.attached(mllm.llm) as params:
        try:
            return _train_attached(stage, name, spec, staging, mllm=mllm, init_state=init_state, train=train,
                                   val=val, train_cfg=train_cfg, seed=seed, instructions=instructions,
                                   logger_factory=logger_factory, extra=(params, lora.lr), save=save)
        finally:
            mllm.reuse_head_kv = reuse   # the LLM is its frozen self again once the adapters are off


def _train_attached(stage: str, name: str, spec: dict, staging: Path, *, mllm, init_state, train, val, train_cfg,
                    seed: int, instructions: list[str], logger_factory, extra=None, save: bool = True):
    steps = int(train_cfg.steps)
    mllm.projector.load_state_dict(init_state)
    metrics: dict = {"name": name, "steps": steps, "seed": seed}
    if steps > 0:
        # the cached chat-prefix keys/values are the frozen LLM's: not with FSDP, nor when LoRA changes the LLM
        mllm.reuse_head_kv = "fsdp" not in str(train_cfg.strategy).lower() and extra is None
        L.seed_everything(seed, workers=True, verbose=False)
        datamodule = CaptionDataModule(mllm, train, val, batch_size=int(train_cfg.batch_size), max_steps=steps,
                                       seed=seed, instructions=instructions,
                                       val_samples=int(train_cfg.val_samples))
        module = ProjectorAlignment(mllm, lr=float(train_cfg.lr), weight_decay=float(train_cfg.weight_decay),
                                    warmup_ratio=float(train_cfg.warmup_ratio), max_steps=steps, extra=extra)
        checkpoint_dir = staging / "checkpoints"
        last = checkpoint_dir / "last.ckpt"
        callbacks = [L.pytorch.callbacks.ModelCheckpoint(
            dirpath=checkpoint_dir, save_last=True, save_top_k=0,
            every_n_train_steps=int(train_cfg.checkpoint_every))]
        if train_cfg.progress_bar:
            callbacks.append(StageProgressBar(f"{stage} {name}"))
        trainer = L.Trainer(
            max_steps=steps, accelerator=train_cfg.accelerator, devices=train_cfg.devices,
            strategy=train_cfg.strategy, precision=train_cfg.precision,
            accumulate_grad_batches=int(train_cfg.accumulate_grad_batches),
            limit_val_batches=1.0, val_check_interval=None, check_val_every_n_epoch=1,
            num_sanity_val_steps=0, log_every_n_steps=int(train_cfg.log_every_n_steps),
            enable_progress_bar=bool(train_cfg.progress_bar), enable_model_summary=False,
            logger=logger_factory(stage, name) if logger_factory else False, callbacks=callbacks,
            default_root_dir=str(staging), deterministic=False)
        started = time.perf_counter()
        checkpoint_step = _resumable_checkpoint(last)
        resumed = checkpoint_step is not None
        first_step = checkpoint_step or 0
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if resumed else None)
        elapsed = time.perf_counter() - started
        if trainer.global_step < steps:
            # Lightning turns Ctrl-C into a graceful stop: never commit an unfinished projector.
            raise KeyboardInterrupt(f"{stage} '{name}' stopped at step {trainer.global_step} of {steps}; "
                                    f"run the same command again to resume from {last}")
        tokens = (steps - first_step) * int(train_cfg.batch_size) * trainer.world_size * _mean_tokens(mllm, datamodule)
        metrics.update({"train_seconds": round(elapsed, 2), "tokens_per_second": round(tokens / elapsed, 1),
                        "final_train_loss": _metric(trainer, "train/loss"),
                        "val_loss": _metric(trainer, "val/loss"), "resumed": resumed})
    if steps == 0:
        trainer = None
    if save:
        _save(staging, mllm, metrics, lora=extra is not None)
    return trainer


def _save(staging: Path, mllm, metrics: dict, lora: bool = False) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in mllm.projector.state_dict().items()}
    save_file(state, str(staging / PROJECTOR_FILE))
    (staging / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if lora:
        save_file(lora_state(mllm.llm), str(staging / LORA_FILE))


def _metric(trainer, name: str):
    value = trainer.callback_metrics.get(name)
    return None if value is None else round(float(value), 4)


def _mean_tokens(mllm, datamodule) -> float:
    """Average sequence length (prefix + visual + text) over the first batches of the plan."""
    sample = [datamodule.train_sources[s].features.shape[1] +
              len(mllm.encode_text(*datamodule.train_sources[s].text(r, t, datamodule.instructions, i))[0])
              for s, r, t, i in datamodule.plan[:64]]
    return mllm.num_head_tokens + sum(sample) / len(sample)


def read_metrics(folder: Path) -> dict:
    path = Path(folder) / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else {}
