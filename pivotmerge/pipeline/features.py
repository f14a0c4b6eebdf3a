"""Stage 2 (features): run the frozen vision tower once per (tower, dataset) and cache visual tokens."""
from __future__ import annotations

import json
from dataclasses import dataclass

import torch
from safetensors.torch import load, save_file
from tqdm.auto import tqdm

from pivotmerge.artifacts import Artifact, ArtifactStore
from pivotmerge.errors import CacheError
from pivotmerge.pipeline.data import SPLITS, load_dataset_dict
from pivotmerge.pipeline.stage import Stage, entries_run


@dataclass
class SourceFeatures:
    """Cached visual tokens and labels of one source, per split."""

    name: str
    features: dict[str, torch.Tensor]  # split -> [N, T, D]
    labels: dict[str, list[str]]


def feature_spec(vision_cfg, data_key: str) -> dict:
    return {"vision": vision_cfg, "data": data_key}


def run_features_stage(store: ArtifactStore, name: str, data_artifact: Artifact, vision_cfg,
                       tower_factory) -> Artifact:
    spec = feature_spec(vision_cfg, data_artifact.key)
    batch_size = int(vision_cfg.get("encode_batch_size") or 64)

    def build(staging) -> None:
        tower = tower_factory()
        dataset = load_dataset_dict(data_artifact.path)
        first = None
        for split in SPLITS:
            rows = dataset[split] if split in dataset else []   # an empty pool is not stored
            chunks = []
            for start in tqdm(range(0, len(rows), batch_size), desc=f"features {name}/{split}", leave=False):
                batch = rows[start:start + batch_size]
                chunks.append(tower.encode_images(batch["image"]).to(torch.float32))
            # an empty split (no pool) is stored as 0 rows of the tower's shape, taken from the train split
            encoded = torch.cat(chunks) if chunks else torch.zeros((0, *first.shape[1:]))
            first = encoded if split == SPLITS[0] else first
            save_file({"features": encoded.contiguous()}, str(staging / f"{split}.safetensors"))
            (staging / f"{split}.labels.json").write_text(json.dumps(list(rows["label"]) if len(rows) else []))

    return store.entry("features", spec, build)


def load_source_features(store: ArtifactStore, name: str, artifact: Artifact) -> SourceFeatures:
    folder = store.verify("features", artifact.key)
    features, labels = {}, {}
    for split in SPLITS:
        try:
            # read into memory, not memory-mapped: a cache file replaced later must not pull pages from
            # under tensors this process still holds (SIGBUS)
            features[split] = load((folder / f"{split}.safetensors").read_bytes())["features"]
            labels[split] = json.loads((folder / f"{split}.labels.json").read_text())
        except Exception as exc:
            raise CacheError(f"cannot read cached features in {folder}: {exc}; delete that folder and run "
                             "again") from exc
        if features[split].shape[0] != len(labels[split]):
            raise CacheError(f"{folder}: {split} has {features[split].shape[0]} feature rows but "
                             f"{len(labels[split])} labels; delete that folder and run again")
    return SourceFeatures(name, features, labels)


def run(ctx) -> None:
    """Every source's visual tokens from the frozen tower (built only when something is new)."""
    tower = {}

    def tower_factory():
        if "t" not in tower:
            from pivotmerge.models.vision import build_vision_tower

            tower["t"] = build_vision_tower(ctx.cfg.model.vision)
        return tower["t"]

    def made_and_loaded(name: str, data_artifact: Artifact) -> Artifact:
        artifact = run_features_stage(ctx.store, name, data_artifact, ctx.cfg.model.vision, tower_factory)
        ctx.feature_artifacts[name] = artifact
        ctx.features[name] = load_source_features(ctx.store, name, artifact)
        return artifact

    for name, data_artifact in ctx.data.items():
        ctx.produce("features", name, made_and_loaded, name, data_artifact,
                    note=lambda _, name=name: f"train {tuple(ctx.features[name].features['train'].shape)}")


STAGE = Stage("features", run, needs=("data",), produces={"features": dict, "feature_artifacts": dict},
              lineage=entries_run, all_ranks=True)
