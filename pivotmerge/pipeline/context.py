"""What the stages share: the run's config, the artifact store, the stage log and what earlier stages made."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pivotmerge.artifacts import Artifact, ArtifactStore
from pivotmerge.model_id import JOINT, PIVOT, ModelId


@dataclass
class StageLog:
    rows: list[dict] = field(default_factory=list)

    def add(self, stage: str, name: str, artifact: Artifact | None, seconds: float, note: str = ""):
        status = "reused" if artifact is not None and artifact.reused else "ran"
        row = {"stage": stage, "name": name, "status": status, "seconds": round(seconds, 1),
               "key": artifact.key if artifact else None, "path": str(artifact.path) if artifact else None,
               "note": note}
        self.rows.append(row)
        print(f"[{stage:>8}] {name:<28} {status:<6} {seconds:7.1f}s  {note}", flush=True)

    def summary(self) -> str:
        ran = sum(r["status"] == "ran" for r in self.rows)
        return f"{len(self.rows)} stage outputs: {ran} ran, {len(self.rows) - ran} reused"


@dataclass
class Context:
    """Everything a stage needs; later stages read what earlier ones put here."""

    cfg: object
    store: ArtifactStore
    log: StageLog
    output_dir: Path
    sources: dict[str, object] = field(default_factory=dict)         # name -> DataSource
    source_cfgs: dict[str, object] = field(default_factory=dict)
    data: dict[str, Artifact] = field(default_factory=dict)
    features: dict[str, object] = field(default_factory=dict)        # name -> SourceFeatures
    feature_artifacts: dict[str, Artifact] = field(default_factory=dict)
    pivot: Artifact | None = None
    experts: dict[str, Artifact] = field(default_factory=dict)
    joint: Artifact | None = None
    merged: dict[str, Artifact] = field(default_factory=dict)
    merge_experts: list[str] = field(default_factory=list)
    sft: dict[str, Artifact] = field(default_factory=dict)            # stage-1 model name -> its tuned projector
    _mllm: object = None

    @property
    def mllm(self):
        if self._mllm is None:
            from pivotmerge.models.mllm import build_mllm

            started = time.perf_counter()
            self._mllm = build_mllm(self.cfg.model, self.cfg.paths.models_dir, seed=int(self.cfg.seed))
            print(f"[   model] loaded {self.cfg.model.name} in {time.perf_counter() - started:.1f}s", flush=True)
        return self._mllm

    def projector(self, artifact: Artifact) -> dict[str, torch.Tensor]:
        from pivotmerge.pipeline.train import load_projector

        return load_projector(self.store, artifact)

    def models(self) -> dict[str, Artifact]:
        """Every projector to evaluate by its model name, merged ones first: an interrupted evaluation should
        already hold the comparison the experiment is about (the table orders rows itself)."""
        rows = {}
        if self.pivot is not None:
            rows[str(PIVOT)] = self.pivot
        rows.update({str(ModelId.merge(k)): v for k, v in self.merged.items()})
        if self.joint is not None:
            rows[str(JOINT)] = self.joint
        rows.update({str(ModelId.expert(k)): v for k, v in self.experts.items()})
        rows.update({str(ModelId.sft(k)): v for k, v in self.sft.items()})
        return rows

    def logger_factory(self):
        from pivotmerge.wandb_logging import lightning_logger_factory

        return lightning_logger_factory(self.cfg)
