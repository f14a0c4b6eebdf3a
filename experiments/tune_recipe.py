"""Tune the embedded alignment recipe on the VAL splits: k-way accuracy of each expert on its own source.

    python experiments/tune_recipe.py                      # every variant of experiments/tuning/variants.yaml
    python experiments/tune_recipe.py lr3e-3_grid2 base    # only these variants

Each variant is a list of run.py overrides. For each one the pipeline's own stages run (data, features,
pivot, experts: cached, so a rerun is free) and every expert and the pivot are scored on the val split
(never test) by k-way classification over ALL labels of a source (summed log-probability of each label's
caption, template 0; argmax) and by the caption NLL per token. Rows are appended to
experiments/tuning/results.jsonl (the record of the search, summarised in docs/method.md); the table of
every variant is printed at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TUNING = ROOT / "experiments" / "tuning"


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import open_dict

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=["logger=none", *overrides], return_hydra_config=True)
    with open_dict(cfg):
        out = TUNING / "runs" / time.strftime("%Y%m%d-%H%M%S")
        cfg.paths.root = str(ROOT)
        cfg.paths.output_dir = str(out)
        cfg.stages = ["data", "features", "pivot", "experts"]
        del cfg.hydra
    return cfg


def score_source(mllm, features, labels, source, rows: int | None, instruction: str) -> dict:
    """k-way accuracy (all labels of the source) and caption NLL per token on the given rows."""
    from pivotmerge.models.scoring import score_choices
    n = features.shape[0] if rows is None else min(rows, features.shape[0])
    vocab = sorted(source.labels())
    captions = [source.caption(label, 0) for label in vocab]
    scores = score_choices(mllm, features[:n], [instruction] * n, [captions] * n, batch_size=16, with_counts=True)
    truth = [vocab.index(label) for label in labels[:n]]
    predicted = [max(range(len(vocab)), key=lambda j: row[j]) for row in scores.logprobs]
    correct = sum(p == t for p, t in zip(predicted, truth))
    nll = -sum(row[t] for row, t in zip(scores.logprobs, truth)) / sum(row[t] for row, t in zip(scores.counts, truth))
    return {"kway_acc": correct / n, "nll": nll, "n": n, "k": len(vocab)}


def run_variant(name: str, overrides: list[str], rows: int | None) -> list[dict]:
    import torch

    from pivotmerge.model_id import PIVOT, ModelId, kind_of
    from pivotmerge.pipeline.data import instructions
    from pivotmerge.pipeline.runner import run

    cfg = compose(overrides)
    started = time.perf_counter()
    ctx = run(cfg)
    train_seconds = time.perf_counter() - started
    mllm = ctx.mllm
    out = []
    models = {str(PIVOT): ctx.pivot, **{str(ModelId.expert(k)): v for k, v in ctx.experts.items()}}
    for model, artifact in models.items():
        mllm.projector.load_state_dict(ctx.projector(artifact))
        for source, feats in ctx.features.items():
            if kind_of(model) == "expert" and model != str(ModelId.expert(source)):
                continue
            with torch.no_grad():
                result = score_source(mllm, feats.features["val"], feats.labels["val"], ctx.sources[source], rows,
                                      instructions(cfg)[0])
            out.append({"variant": name, "overrides": overrides, "model": model, "source": source, **result,
                        "train_seconds": round(train_seconds, 1)})
            print(f"  {name:<24} {model:<16} {source:<8} k-way {result['kway_acc']:.3f} (k={result['k']}) "
                  f"nll {result['nll']:.3f}", flush=True)
    return out


def main() -> None:
    from omegaconf import OmegaConf

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="*", help="names from the variants file (default: all)")
    parser.add_argument("--file", default=str(TUNING / "variants.yaml"))
    parser.add_argument("--rows", type=int, default=None, help="val rows per source (default: all)")
    args = parser.parse_args()
    variants = OmegaConf.to_container(OmegaConf.load(args.file))
    names = args.variants or list(variants)
    unknown = [n for n in names if n not in variants]
    if unknown:
        sys.exit(f"unknown variant(s) {unknown}; known: {list(variants)}")
    results = TUNING / "results.jsonl"
    for name in names:
        print(f"\n=== variant {name}: {' '.join(variants[name])}", flush=True)
        rows = run_variant(name, list(variants[name]), args.rows)
        with open(results, "a") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
