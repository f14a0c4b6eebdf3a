"""What the stages share: the run's config, the artifact store, the stage log and what earlier stages made."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pivotmerge.artifacts import Artifact, ArtifactStore
from pivotmerge.model_id import JOINT, PIVOT, ModelId


@dataclass
class StageLog:
    rows: list[dict] = field(default_factory=list)

    def add(self, stage: str, name: str, artifact: Artifact | None, seconds: float, note: str = "",
            reused: bool | None = None):
        """One row; `reused` (else the artifact's own flag) for work spread over many cache entries."""
        if reused is None:
            reused = artifact is not None and artifact.reused
        status = "reused" if reused else "ran"
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
    """Everything a stage needs: the config, the store, the log, and the outputs the stages declare
    (`Stage.produces`), read and written as attributes (`ctx.pivot`, `ctx.experts[name]`). A name that no
    stage declares is an AttributeError, so a typo never becomes a silent new field."""

    cfg: object
    store: ArtifactStore
    log: StageLog
    output_dir: Path
    outputs: dict[str, object] = field(default_factory=dict)    # declared output -> its value this seed
    stage: str | None = None    # the stage running now (set by the runner)
    produced: dict[str, list[Artifact]] = field(default_factory=dict)   # stage -> the entries it logged as its own
    _mllm: object = None

    @classmethod
    def for_stages(cls, stages, **fields) -> Context:
        """A context holding the empty outputs `stages` declare."""
        outputs = {name: empty() if empty is not None else None
                   for stage in stages for name, empty in stage.produces.items()}
        return cls(outputs=outputs, **fields)

    def __getattr__(self, name: str):
        outputs = self.__dict__.get("outputs", {})
        if name in outputs:
            return outputs[name]
        raise AttributeError(f"the run context has no {name!r}: no registered stage declares it as an output "
                             f"(declared: {sorted(outputs)})")

    def __setattr__(self, name: str, value) -> None:
        outputs = self.__dict__.get("outputs")
        if outputs is not None and name in outputs:
            outputs[name] = value
        elif name in self.__dataclass_fields__:
            object.__setattr__(self, name, value)
        else:
            raise AttributeError(f"{name!r} is not an output any stage declares (Stage.produces)")

    def produce(self, kind: str, name: str, make: Callable[..., Artifact | None], *args,
                note: str | Callable = "", **kwargs) -> Artifact | None:
        """`make(*args, **kwargs)`, which makes or reuses one cache entry of `kind` (through `store.entry`),
        timed, with its stage-log row; `note` may be a function of the entry, for what is known only after."""
        started = time.perf_counter()
        artifact = make(*args, **kwargs)
        self.log.add(kind, name, artifact, time.perf_counter() - started, note(artifact) if callable(note) else note)
        if artifact is not None and kind == self.stage:
            self.entries.append(artifact)
        return artifact

    @property
    def entries(self) -> list[Artifact]:
        """The entries the running stage produced under its own name (its W&B lineage)."""
        return self.produced.setdefault(self.stage, [])

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
