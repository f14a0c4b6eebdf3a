"""Stage 5 (merge): every configured method turns (pivot, experts) into one projector, with diagnostics.

`cfg.merge` maps a method name to its config (`conf/merge/<name>.yaml`, a `_partial_` target). A method
that takes `calibration_loss` and runs in a data-driven mode gets the caption loss of a fixed calibration
batch drawn from the sources' *validation* splits (never test data).
"""
from __future__ import annotations

import inspect
import json
import time

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from safetensors.torch import save_file

from pivotmerge.errors import ConfigError
from pivotmerge.pipeline.artifacts import Artifact, content_key
from pivotmerge.pipeline.train import PROJECTOR_FILE


def calibration_batch(ctx, per_source: int) -> dict[str, torch.Tensor]:
    """Fixed val rows of every source, first caption template and instruction (same for every method)."""
    from pivotmerge.training import DEFAULT_INSTRUCTIONS

    mllm = ctx.mllm
    features, texts = [], []
    for name, feats in ctx.features.items():
        rows = min(per_source, feats.features["val"].shape[0])
        features.append(feats.features["val"][:rows])
        texts += [mllm.encode_text(DEFAULT_INSTRUCTIONS[0], ctx.sources[name].caption(label, 0))
                  for label in feats.labels["val"][:rows]]
    return {"features": torch.cat(features), **mllm.collate_text(texts)}


def make_calibration_loss(ctx, per_source: int):
    batch = calibration_batch(ctx, per_source)
    mllm = ctx.mllm

    @torch.no_grad()
    def calibration_loss(state: dict[str, torch.Tensor]) -> float:
        original = {k: v.clone() for k, v in mllm.projector.state_dict().items()}
        try:
            mllm.projector.load_state_dict(state)
            return float(mllm.caption_loss(**batch))
        finally:
            mllm.projector.load_state_dict(original)

    return calibration_loss


def _uses_data(method_cfg) -> bool:
    return str(method_cfg.get("alm", "off")) == "data"


def run(ctx) -> None:
    cfg = ctx.cfg
    if ctx.pivot is None or not ctx.experts:
        raise ConfigError("the merge stage needs the pivot and experts stages: add them to `stages`")
    methods = cfg.get("merge") or {}
    if not methods:
        print("[   merge] no merge methods selected (merge=[...]): skipped", flush=True)
        return
    per_source = int(cfg.get("calibration", {}).get("per_source", 8)) if cfg.get("calibration") else 8
    pivot = ctx.projector(ctx.pivot)
    expert_names = list(ctx.experts)
    experts = [ctx.projector(ctx.experts[n]) for n in expert_names]
    calibration_loss = None
    for name, method_cfg in methods.items():
        if "_target_" not in method_cfg:
            raise ConfigError(f"merge.{name} has no _target_: select methods with merge=[...] from conf/merge/")
        options = {k: v for k, v in OmegaConf.to_container(method_cfg, resolve=True).items()
                   if not k.startswith("_")}
        spec = {"pivot": ctx.pivot.key, "experts": {n: ctx.experts[n].key for n in expert_names},
                "target": method_cfg._target_, "options": options}
        if _uses_data(method_cfg):
            spec["calibration"] = {"per_source": per_source,
                                   "features": {n: a.key for n, a in ctx.feature_artifacts.items()}}
        key = content_key("merge", spec)
        started = time.perf_counter()
        if ctx.store.exists("merge", key):
            ctx.merged[name] = Artifact("merge", key, ctx.store.folder("merge", key), reused=True)
            ctx.log.add("merge", name, ctx.merged[name], time.perf_counter() - started)
            continue
        fn = instantiate(method_cfg)
        accepted = inspect.signature(fn).parameters
        kwargs: dict = {}
        diagnostics: dict = {}
        if "diagnostics" in accepted:
            kwargs["diagnostics"] = diagnostics
        if _uses_data(method_cfg) and "calibration_loss" in accepted:
            if calibration_loss is None:
                calibration_loss = make_calibration_loss(ctx, per_source)
            kwargs["calibration_loss"] = calibration_loss
        merged = fn(pivot, experts, **kwargs)
        seconds = time.perf_counter() - started
        staging = ctx.store.begin("merge", key)
        save_file({k: v.contiguous() for k, v in merged.items()}, str(staging / PROJECTOR_FILE))
        from pivotmerge.merging.diagnostics import collect, write_diagnostics

        collect(pivot, experts, merged, diagnostics)
        diagnostics["experts"] = expert_names
        write_diagnostics(diagnostics, staging / "diagnostics")
        (staging / "metrics.json").write_text(json.dumps({"method": name, "options": options,
                                                          "merge_seconds": round(seconds, 3)}, indent=2))
        ctx.merged[name] = Artifact("merge", key, ctx.store.commit("merge", key, spec), reused=False)
        ctx.log.add("merge", name, ctx.merged[name], time.perf_counter() - started)
