"""Linear probes on the cached vision features: can the frozen encoder's features separate each source's labels?

    python experiments/feature_probe.py [CACHE_DIR]      # default: $PIVOTMERGE_CACHE or .cache/artifacts

For every `features/` cache entry: a multinomial logistic regression (L-BFGS, L2 1e-3, standardised inputs)
fitted on the first 800 TRAIN rows and scored on the remaining TRAIN rows (val and test are never read). It
bounds what the projector's alignment can reach and tells a weak recipe from weak features
(docs/method.md, the recipe search).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

FIT_ROWS = 800


def probe(folder: Path) -> tuple[str, float, int]:
    manifest = json.loads((folder / "manifest.json").read_text())
    rows = next(iter(load_file(str(folder / "train.safetensors")).values())).float()
    labels = json.loads((folder / "train.labels.json").read_text())
    x = rows.reshape(len(labels), -1)
    vocab = sorted(set(labels))
    y = torch.tensor([vocab.index(label) for label in labels])
    mean, std = x[:FIT_ROWS].mean(0), x[:FIT_ROWS].std(0) + 1e-6
    x = (x - mean) / std
    w = torch.zeros(x.shape[1], len(vocab), requires_grad=True)
    b = torch.zeros(len(vocab), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x[:FIT_ROWS] @ w + b, y[:FIT_ROWS]) + 1e-3 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    accuracy = float(((x[FIT_ROWS:] @ w + b).argmax(1) == y[FIT_ROWS:]).float().mean())
    return manifest["spec"]["vision"], accuracy, len(vocab)


def main(argv: list[str]) -> int:
    cache = Path(argv[0] if argv else os.environ.get("PIVOTMERGE_CACHE", ".cache/artifacts"))
    for folder in sorted((cache / "features").glob("*/")):
        labels = json.loads((folder / "train.labels.json").read_text())
        vision, accuracy, k = probe(folder)
        print(f"{folder.name}  {'/'.join(sorted(set(labels))[:2])}...  k={k}  probe acc {accuracy:.2f}  {vision}")
    return 0


if __name__ == "__main__":
    torch.manual_seed(0)
    sys.exit(main(sys.argv[1:]))
