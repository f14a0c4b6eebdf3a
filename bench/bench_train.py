"""Training-step throughput of the real pipeline vs the bare frozen-LLM forward+backward, in one run.

Both sides use the embedded MLLM and the same batch shape ([chat prefix][9 visual tokens][instruction +
caption], batch 16). The bare figure is the floor: the frozen LLM's forward and backward (gradient to its
inputs only), nothing else. The training figure is Lightning's loop with our data module, projector,
loss and AdamW step, timed between batches after warm-up. Goal: training >= 90% of bare tokens/s.

    python bench/bench_train.py [--steps 12] [--batch 16]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import lightning as L
import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]


class StepTimer(L.Callback):
    def __init__(self):
        self.stamps = []

    def on_train_batch_end(self, trainer, *args):
        self.stamps.append(time.perf_counter())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()

    import logging

    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from pivotmerge.models.mllm import build_mllm
    from pivotmerge.training import CaptionDataModule, CaptionSource, ProjectorAlignment

    model_cfg = OmegaConf.load(ROOT / "conf" / "model" / "embedded.yaml")
    mllm = build_mllm(model_cfg, ROOT / ".cache" / "models", seed=0)
    digits = OmegaConf.load(ROOT / "conf" / "data" / "source" / "digits.yaml")
    labels = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    generator = torch.Generator().manual_seed(0)
    n = args.batch * (args.steps + 1)
    features = torch.randn(n, model_cfg.vision.grid ** 2, model_cfg.vision.feature_dim, generator=generator)
    source = CaptionSource("digits", features, [labels[i % 10] for i in range(n)],
                           list(digits.caption_templates))
    instructions = list(OmegaConf.load(ROOT / "conf" / "data" / "embedded.yaml").instructions)
    datamodule = CaptionDataModule(mllm, [source], [source], batch_size=args.batch, max_steps=args.steps, seed=0,
                                   instructions=instructions, val_samples=0)

    # Bare floor: identical token batches, frozen LLM forward + backward to the input embeddings.
    batches = []
    loader = datamodule.train_dataloader()
    for batch in loader:
        batches.append(batch)
        if len(batches) == args.warmup + 4:
            break
    tokens_per_batch = [int(b["text_ids"].shape[0] * (mllm.num_head_tokens + b["features"].shape[1] +
                                                       b["text_ids"].shape[1])) for b in batches]
    bare = []
    for i, batch in enumerate(batches):
        with torch.no_grad():
            inputs, mask = mllm.embed(batch["features"], batch["text_ids"], batch["text_mask"])
        inputs = inputs.detach().requires_grad_(True)
        start = time.perf_counter()
        out = mllm.llm(inputs_embeds=inputs, attention_mask=mask)
        out.logits.float().mean().backward()
        if i >= args.warmup:
            bare.append(time.perf_counter() - start)
    bare_step = statistics.median(bare)
    tokens = statistics.median(tokens_per_batch)

    timer = StepTimer()
    module = ProjectorAlignment(mllm, lr=1e-3, weight_decay=0.0, warmup_ratio=0.1, max_steps=args.steps)
    trainer = L.Trainer(max_steps=args.steps, accelerator="cpu", devices=1, logger=False, callbacks=[timer],
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=datamodule)
    intervals = [b - a for a, b in zip(timer.stamps[args.warmup:], timer.stamps[args.warmup + 1:])]
    train_step = statistics.median(intervals)

    rows = [("bare frozen LLM fwd+bwd (floor)", bare_step, tokens / bare_step, 1.0),
            ("training step (Lightning, ours)", train_step, tokens / train_step, bare_step / train_step)]
    print(f"\nbatch {args.batch}, ~{tokens / args.batch:.0f} tokens/sequence, {torch.get_num_threads()} threads")
    print(f"{'what':<34}{'s/step':>9}{'tokens/s':>11}{'vs bare':>9}")
    for name, step, tps, ratio in rows:
        print(f"{name:<34}{step:>9.3f}{tps:>11.0f}{ratio:>8.0%}")
    out = ROOT / "bench" / "results" / "train.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"batch": args.batch, "tokens_per_batch": tokens, "bare_step_s": bare_step,
                               "train_step_s": train_step, "ratio": bare_step / train_step}, indent=2))


if __name__ == "__main__":
    main()
