"""Every folder the run writes is usable, and has room, before the first stage runs.

A cache folder that cannot be created ends a run before any work with one line naming the config key and the
path. Free space is compared per file system with a rough estimate of what the planned stages write there:
below the estimate the run starts with a warning (a disk that fills up mid-run ends with one line and the next
run resumes from the last complete entry), below a floor it is refused. Nothing is created here: writability
is probed with a temporary folder in the nearest existing parent, removed at once.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from omegaconf import OmegaConf

from pivotmerge.preflight.schema import PreflightError

# Rough sizes from the embedded default's cache: an estimate for a warning, not a limit (entries that are
# already cached count too, so it errs on the high side).
BYTES_PER_IMAGE = 4 << 10          # one encoded image of a data entry (the embedded sources: 0.3-2 KB)
BYTES_PER_FEATURE = 4              # one float32 value of the visual tokens
BYTES_PER_PROJECTOR = 16 << 20     # a trained or merged projector with its metrics, checkpoints or diagnostics
BYTES_PER_EVALUATION = 1 << 20     # one model's results and per-item values
CONVERTED_LLM_BYTES = 600 << 20    # SmolLM2-135M dequantised to float32 (pivotmerge/models/llm.py)
CONVERTED_LLM_FOLDER = "smollm2-135m-instruct"
RUN_FOLDER_BYTES = 16 << 20        # results store, report, W&B offline files
# Below this much free space (or below the estimate, for a run smaller than that) no stage of the embedded
# default can finish an entry: refused instead of warned.
FLOOR_BYTES = 64 << 20


def written_paths(cfg) -> dict[str, Path]:
    """The folders this run writes, by config key."""
    keys = ["paths.output_dir"] if cfg.report.only else ["paths.cache_dir", "paths.models_dir", "paths.output_dir"]
    if cfg.get("logger") is not None and cfg.logger.wandb.enabled:
        keys.append("logger.wandb.dir")
    return {key: Path(str(OmegaConf.select(cfg, key))).expanduser().absolute() for key in keys}


def nearest_existing(path: Path) -> Path:
    while True:
        try:
            if path.exists() or path == path.parent:
                return path
        except OSError:   # e.g. a parent the user may not search: the probe below reports it
            return path
        path = path.parent


def unusable(path: Path) -> str | None:
    """Why this process could not create `path` or write into it (None when it can)."""
    existing = nearest_existing(path)
    if not existing.is_dir():
        return f"{existing} is not a folder"
    try:   # os.access would say yes to root on a file system that refuses writes (/proc, read-only mounts)
        os.rmdir(tempfile.mkdtemp(prefix=".pivotmerge-probe-", dir=existing))
    except OSError as exc:
        verb = "written" if existing == path else f"created (in {existing})"
        return f"it cannot be {verb}: {exc.strerror or exc}"
    return None


def planned_bytes(cfg) -> dict[str, int]:
    """Roughly what the planned stages write under each path key."""
    from pivotmerge.pipeline.stages import plan

    if cfg.report.only:
        return {"paths.output_dir": RUN_FOLDER_BYTES}
    stages = {stage.name for stage in plan(cfg.stages)}
    sources = len(cfg.scenario.sources)
    seeds = len(cfg.seeds or [cfg.seed])
    images = sources * sum(int(OmegaConf.select(cfg, f"data.split.{s}", default=0) or 0)
                           for s in ("train", "val", "test"))
    grid = OmegaConf.select(cfg, "model.vision.grid", default=None)
    tokens = int(grid) ** 2 if grid else (int(OmegaConf.select(cfg, "model.vision.image_size", default=336)) // 14) ** 2
    feature_dim = int(OmegaConf.select(cfg, "model.vision.feature_dim", default=1024))
    trained = ("pivot" in stages) + ("experts" in stages) * (sources + bool(cfg.scenario.joint.enabled))
    merged = ("merge" in stages) * (len(cfg.merge) + len(cfg.merge_variants))
    cache = (("data" in stages) * images * BYTES_PER_IMAGE
             + ("features" in stages) * images * tokens * feature_dim * BYTES_PER_FEATURE
             + seeds * (trained + merged) * BYTES_PER_PROJECTOR
             + ("eval" in stages) * seeds * (trained + merged) * BYTES_PER_EVALUATION)
    needs_llm = bool(stages & {"pivot", "experts", "merge", "eval"})
    converted = Path(str(cfg.paths.models_dir)) / CONVERTED_LLM_FOLDER / "manifest.json"
    models = CONVERTED_LLM_BYTES if (needs_llm and cfg.model.llm.kind == "smollm2_gguf"
                                     and not converted.is_file()) else 0
    return {"paths.cache_dir": cache, "paths.models_dir": models, "paths.output_dir": RUN_FOLDER_BYTES}


def size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def check_paths(cfg) -> None:
    """Raise PreflightError naming the key and path of a folder the run cannot create or write, or of a file
    system below the free-space floor; warn (stderr) when free space is below the run's estimate."""
    paths = written_paths(cfg)
    for key, path in paths.items():
        problem = unusable(path)
        if problem is not None:
            raise PreflightError(f"config {key}={path}: {problem}; set {key} to a folder this user can write")
    need = planned_bytes(cfg)
    by_device: dict[int, list[str]] = {}
    for key, path in paths.items():
        by_device.setdefault(nearest_existing(path).stat().st_dev, []).append(key)
    for keys in by_device.values():
        estimate = sum(need.get(key, 0) for key in keys)
        free = shutil.disk_usage(nearest_existing(paths[keys[0]])).free
        where = f"{'/'.join(keys)}={paths[keys[0]]}"
        if free < min(estimate, FLOOR_BYTES):
            raise PreflightError(f"config {where}: only {size(free)} free on its file system, and this run writes "
                                 f"~{size(estimate)}: free space or point {keys[0]} to a larger disk")
        if free < estimate:
            print(f"[preflight] WARNING: {where} has {size(free)} free and this run writes ~{size(estimate)}: it "
                  "may stop on a full disk (then run again: it resumes from the last complete entry)",
                  file=sys.stderr, flush=True)
