"""Calibration statistics of each expert's domain (a cached stage the merge stage uses for data-aware methods).

For every expert: the input Grams of each projector Linear layer and a sample of visual tokens
(`pivotmerge.merging.calibration.compute_stats`) over the first `calibration.train_rows` rows of its source's
TRAIN split - never test; val stays for selecting options - and, when a selected method asks for it, the
diagonal Fisher of the caption loss on the first `calibration.fisher_rows` of those rows. Cached per
(expert, features, settings) under `stats/<key>/stats.safetensors`, so a sweep computes them once.
"""
from __future__ import annotations

import torch

from pivotmerge.merging.calibration import ExpertStats, compute_stats, load_stats, save_stats

STATS_FILE = "stats.safetensors"


def diagonal_fisher(mllm, state: dict[str, torch.Tensor], features: torch.Tensor,
                    texts: list) -> dict[str, torch.Tensor]:
    """Mean over rows of the squared gradient of each row's caption loss w.r.t. the projector's parameters
    (the empirical diagonal Fisher, one backward per row as in Fisher merging)."""
    from pivotmerge.models.mllm import projector_swapped

    sums: dict[str, torch.Tensor] = {}
    with projector_swapped(mllm, state):
        params = dict(mllm.projector.named_parameters())
        for row in range(features.shape[0]):
            batch = mllm.collate_text([texts[row]])
            loss = mllm.caption_loss(features[row:row + 1], **batch)
            grads = torch.autograd.grad(loss, list(params.values()))
            for (name, _), grad in zip(params.items(), grads):
                sums[name] = sums.get(name, 0) + grad.detach().double() ** 2
    return {name: (total / features.shape[0]).float() for name, total in sums.items()}


def _cached(ctx, stage: str, name: str, spec: dict, build, note: str):
    artifact = ctx.produce(stage, name, ctx.store.entry, stage, spec, lambda staging: build(staging / STATS_FILE),
                           note=note)
    return load_stats(ctx.store.verify(stage, artifact.key) / STATS_FILE), artifact.key


def expert_statistics(ctx, expert_names: list[str]) -> tuple[list[ExpertStats], dict[str, str]]:
    """Input Grams and a token sample of each expert on its source's TRAIN rows (in `expert_names` order),
    and their cache keys by expert."""
    cfg = ctx.cfg.calibration
    rows, sample = int(cfg.train_rows), int(cfg.sample_tokens)
    out, keys = [], {}
    for name in expert_names:
        spec = {"expert": ctx.experts[name].key, "features": ctx.feature_artifacts[name].key, "train_rows": rows,
                "sample_tokens": sample}

        def build(path, name=name):
            train = ctx.features[name].features["train"][:rows]
            save_stats(compute_stats(ctx.projector(ctx.experts[name]), train, sample_tokens=sample, seed=0,
                                     meta={"source": name, "split": "train", "rows": int(train.shape[0])}), path)

        stats, keys[name] = _cached(ctx, "stats", name, spec, build, f"train split, {rows} rows")
        out.append(stats)
    return out, keys


def expert_fisher(ctx, expert_names: list[str]) -> tuple[list[dict], dict[str, str]]:
    """The diagonal Fisher of each expert's caption loss on the first `calibration.fisher_rows` TRAIN rows of
    its source (a separate cache entry: only Fisher merging needs it)."""
    from pivotmerge.pipeline.data import instructions

    n_rows = int(ctx.cfg.calibration.fisher_rows)
    out, keys = [], {}
    for name in expert_names:
        spec = {"expert": ctx.experts[name].key, "features": ctx.feature_artifacts[name].key, "fisher_rows": n_rows}

        def build(path, name=name):
            feats = ctx.features[name]
            n = min(n_rows, feats.features["train"].shape[0])
            texts = [ctx.mllm.encode_text(instructions(ctx.cfg)[0], ctx.sources[name].caption(label, 0))
                     for label in feats.labels["train"][:n]]
            fisher = diagonal_fisher(ctx.mllm, ctx.projector(ctx.experts[name]), feats.features["train"][:n], texts)
            save_stats(ExpertStats({}, {}, None, fisher, {"source": name, "split": "train", "rows": n}), path)

        stats, keys[name] = _cached(ctx, "fisher", name, spec, build, f"train split, {n_rows} rows")
        out.append(stats.fisher)
    return out, keys
