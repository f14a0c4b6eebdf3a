"""Calibration statistics of each expert's domain (a cached stage the merge stage uses for data-aware methods).

For every expert: the input Grams of each projector Linear layer and a sample of visual tokens
(`pivotmerge.merging.calibration.compute_stats`) over the first `calibration.train_rows` rows of its source's
TRAIN split - never test; val stays for selecting options - and, when a selected method asks for it, the
diagonal Fisher of the caption loss on the first `calibration.fisher_rows` of those rows. Cached per
(expert, features, settings) under `stats/<key>/stats.safetensors`, so a sweep computes them once.
"""
from __future__ import annotations

import time

import torch

from pivotmerge.merging.calibration import ExpertStats, compute_stats, load_stats, save_stats
from pivotmerge.pipeline.artifacts import Artifact, content_key

STATS_FILE = "stats.safetensors"


def diagonal_fisher(mllm, state: dict[str, torch.Tensor], features: torch.Tensor, texts: list) -> dict[str, torch.Tensor]:
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


def expert_statistics(ctx, expert_names: list[str], *, fisher: bool) -> tuple[list[ExpertStats], dict[str, str]]:
    """(statistics per expert in `expert_names` order, their cache keys by expert)."""
    from pivotmerge.training import DEFAULT_INSTRUCTIONS

    cfg = ctx.cfg.calibration
    rows, sample, fisher_rows = int(cfg.train_rows), int(cfg.sample_tokens), int(cfg.fisher_rows)
    out, keys = [], {}
    for name in expert_names:
        spec = {"expert": ctx.experts[name].key, "features": ctx.feature_artifacts[name].key, "train_rows": rows,
                "sample_tokens": sample, "fisher_rows": fisher_rows if fisher else 0}
        key = content_key("stats", spec)
        started = time.perf_counter()
        with ctx.store.claim("stats", key) as staging:
            if staging is not None:
                feats = ctx.features[name]
                state = ctx.projector(ctx.experts[name])
                train = feats.features["train"][:rows]
                stats = compute_stats(state, train, sample_tokens=sample, seed=0,
                                      meta={"source": name, "split": "train", "rows": int(train.shape[0])})
                if fisher:
                    n = min(fisher_rows, train.shape[0])
                    texts = [ctx.mllm.encode_text(DEFAULT_INSTRUCTIONS[0], ctx.sources[name].caption(label, 0))
                             for label in feats.labels["train"][:n]]
                    stats.fisher = diagonal_fisher(ctx.mllm, state, train[:n], texts)
                save_stats(stats, staging / STATS_FILE)
                ctx.store.commit("stats", key, spec)
                artifact = Artifact("stats", key, ctx.store.folder("stats", key), reused=False)
            else:
                artifact = Artifact("stats", key, ctx.store.folder("stats", key), reused=True)
        ctx.log.add("stats", name, artifact, time.perf_counter() - started,
                    "train split" + (", Fisher" if fisher else ""))
        out.append(load_stats(ctx.store.verify("stats", key) / STATS_FILE))
        keys[name] = key
    return out, keys
