"""Held-out caption loss of every projector on every source (test split), from cached artifacts.

    python experiments/heldout_loss.py experiment=pivotmerge_vs_ties [+rows=64]

Reuses the run's cached stages (nothing is retrained: the stages must exist in the cache) and writes
`heldout_loss.md` / `.json` into the run folder. Lower is better; each expert should beat the pivot on its
own source.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
import torch
from omegaconf import open_dict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def loss_matrix(ctx, rows: int) -> dict[str, dict[str, float]]:
    from pivotmerge.models.mllm import projector_swapped
    from pivotmerge.pipeline.data import instructions

    mllm = ctx.mllm
    batches = {}
    for name, feats in ctx.features.items():
        n = min(rows, feats.features["test"].shape[0])
        texts = [mllm.encode_text(instructions(ctx.cfg)[0], ctx.sources[name].caption(label, 0))
                 for label in feats.labels["test"][:n]]
        batches[name] = (feats.features["test"][:n], texts)
    matrix = {}
    for model, artifact in ctx.models().items():
        with projector_swapped(mllm, ctx.projector(artifact)):
            matrix[model] = {name: caption_loss(mllm, features, texts) for name, (features, texts) in batches.items()}
    return matrix


@torch.no_grad()
def caption_loss(mllm, features, texts: list[str], batch_size: int = 16) -> float:
    """Mean negative log-likelihood per caption token of `texts` given `features`."""
    sums, counts = torch.zeros(()), 0
    for start in range(0, len(texts), batch_size):
        batch = mllm.collate_text(texts[start:start + batch_size])
        s, c = mllm.answer_logprobs(features[start:start + batch_size], **batch)
        sums, counts = sums + s.sum(), counts + int(c.sum())
    return round(float(-sums / counts), 4)


@hydra.main(config_path="pkg://pivotmerge.conf", config_name="config", version_base="1.3")
def main(cfg) -> None:
    from pivotmerge.pipeline.runner import run

    rows = int(cfg.get("rows", 64))
    with open_dict(cfg):
        cfg.stages = ["data", "features", "pivot", "experts", "merge"] if cfg.get("merge") else \
            ["data", "features", "pivot", "experts"]
        cfg.logger.wandb.enabled = False
    ctx = run(cfg)
    matrix = loss_matrix(ctx, rows)
    sources = list(ctx.features)
    lines = ["| model | " + " | ".join(sources) + " |", "|---|" + "---|" * len(sources)]
    for model, losses in matrix.items():
        lines.append(f"| {model} | " + " | ".join(f"{losses[s]:.3f}" for s in sources) + " |")
    table = "\n".join(lines)
    out = Path(ctx.output_dir)
    (out / "heldout_loss.md").write_text(table + "\n")
    (out / "heldout_loss.json").write_text(json.dumps(matrix, indent=2))
    print(f"\nHeld-out caption loss (test split, {rows} rows per source, lower is better):\n{table}")


if __name__ == "__main__":
    main()
