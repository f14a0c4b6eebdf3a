"""The two CPU-path choices behind the cold `make run` time, each side by side with what it replaced.

    python bench/bench_cpu_paths.py [--images 64] [--items 128] [--out bench/results/cpu_paths.json]

1. Frozen EfficientNet-Lite0 features (model.vision.encode_batch_size, fold_batchnorm): ms per image for
   the library model with BatchNorm at 64 images per forward (before) vs BN folded into the convs at 8 per
   forward (now), and the largest difference of the (layer-normed) visual tokens.
2. Multiple-choice scoring throughput (eval.workers): one process using every thread vs `--workers`
   spawned processes splitting the threads, each scoring the same items (the real SmolLM2, random visual
   features of the real shape, 4 caption options, eval.batch_size items per forward).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import random
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:   # imported where used: the bench starts without torch's import time
    import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bench_eval import LABELS  # noqa: E402 - the same caption options as the MC bench


def _time_tower(tower, pixels, batch: int) -> tuple[float, torch.Tensor]:
    import torch

    with torch.no_grad():
        tower(pixels[:batch])   # warm-up
        started = time.perf_counter()
        out = torch.cat([tower(pixels[s:s + batch]) for s in range(0, pixels.shape[0], batch)])
    return (time.perf_counter() - started) / pixels.shape[0] * 1000, out


def bench_features(images: int) -> dict:
    import torch
    from omegaconf import OmegaConf

    from pivotmerge.models.vision import VisionTower, _efficientnet_encode, _load_efficientnet_lite0, build_vision_tower

    cfg = OmegaConf.load(REPO / "conf" / "model" / "embedded.yaml").vision
    ours = build_vision_tower(cfg)
    unfolded = VisionTower(_load_efficientnet_lite0(), _efficientnet_encode, feature_dim=1280,
                           image_size=int(cfg.image_size), mean=(0.5,) * 3, std=(0.5,) * 3, grid=cfg.grid,
                           feature_norm=cfg.feature_norm, name="efficientnet-lite0 (BatchNorm kept)")
    torch.manual_seed(0)
    pixels = torch.randn(images, 3, int(cfg.image_size), int(cfg.image_size))
    before_ms, before = _time_tower(unfolded, pixels, 64)
    after_ms, after = _time_tower(ours, pixels, int(cfg.encode_batch_size))
    return {"images": images,
            "before": {"what": "BatchNorm kept, 64 images per forward", "ms_per_image": round(before_ms, 1)},
            "after": {"what": f"BN folded, {int(cfg.encode_batch_size)} images per forward",
                      "ms_per_image": round(after_ms, 1)},
            "speedup": round(before_ms / after_ms, 2), "max_abs_diff": float((before - after).abs().max())}


def _score_items(threads: int, items: int, batch: int, seed: int) -> float:
    """Items/s of score_choices in this process with `threads` threads (model load not timed)."""
    import torch
    from omegaconf import OmegaConf

    from pivotmerge.models.mllm import build_mllm
    from pivotmerge.models.scoring import score_choices

    torch.set_num_threads(threads)
    cfg = OmegaConf.load(REPO / "conf" / "model" / "embedded.yaml")
    mllm = build_mllm(cfg, str(REPO / ".cache" / "models"), seed=0).eval()
    rng = random.Random(seed)
    torch.manual_seed(seed)
    features = torch.nn.functional.layer_norm(torch.randn(items, 9, 1280), (1280,))
    instructions = ["Describe the image briefly."] * items
    choices = [[f"a handwritten digit {label}" for label in rng.sample(LABELS, 4)] for _ in range(items)]
    score_choices(mllm, features[:4], instructions[:4], choices[:4])
    started = time.perf_counter()
    score_choices(mllm, features, instructions, choices, batch_size=batch)
    return items / (time.perf_counter() - started)


def _worker(args) -> float:
    return _score_items(*args)


def bench_workers(items: int, batch: int, workers: int) -> dict:
    import torch

    threads = torch.get_num_threads()
    one = _score_items(threads, items, batch, 0)
    per = max(1, threads // workers)
    # Each worker loads the model first; they then score concurrently, so the sum of their rates is the
    # throughput of the pool (model loading is excluded on both sides).
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        rates = pool.map(_worker, [(per, items, batch, w) for w in range(workers)])
    torch.set_num_threads(threads)
    return {"items": items, "batch": batch,
            "one_process": {"threads": threads, "items_per_s": round(one, 2)},
            "workers": {"processes": workers, "threads_each": per, "items_per_s": round(sum(rates), 2),
                        "per_worker": [round(r, 2) for r in rates]},
            "speedup": round(sum(rates) / one, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--items", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32, help="items per forward (eval.batch_size)")
    parser.add_argument("--workers", type=int, default=2, help="eval.workers")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "cpu_paths.json"))
    args = parser.parse_args()

    import torch

    features = bench_features(args.images)
    print(f"\nEfficientNet-Lite0 features, {args.images} images, {torch.get_num_threads()} threads")
    for side in ("before", "after"):
        print(f"  {features[side]['what']:<42} {features[side]['ms_per_image']:6.1f} ms/image")
    print(f"  speed-up {features['speedup']:.2f}x, max |diff| of the visual tokens {features['max_abs_diff']:.1e}")
    workers = bench_workers(args.items, args.batch, args.workers)
    print(f"\nMC scoring, {args.items} items x 4 options per process, {args.batch} items per forward")
    print(f"  1 process x {workers['one_process']['threads']} threads        "
          f"{workers['one_process']['items_per_s']:6.2f} items/s")
    print(f"  {workers['workers']['processes']} processes x {workers['workers']['threads_each']} thread(s)      "
          f"{workers['workers']['items_per_s']:6.2f} items/s  ({workers['speedup']:.2f}x)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"features": features, "mc_scoring_workers": workers,
                               "machine": platform.platform(), "processor": platform.processor()}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
