"""LLaVA stage-1 alignment with Lightning: only the projector trains, on cached visual features.

The data module precomputes the whole run's sample plan (which example, caption template and instruction
at every step) from the seed, so a run is deterministic and a resumed run continues the plan exactly
where the checkpoint stopped.
"""
from __future__ import annotations

import math
import random
import sys
import time
from dataclasses import dataclass

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from pivotmerge.errors import DataError
from pivotmerge.models.mllm import MLLM


class StageProgressBar(L.pytorch.callbacks.TQDMProgressBar):
    """Steps of one training stage, named by it ("expert digits 34/60"), with the loss; no epoch counter
    (a stage is a number of steps, so Lightning's "Epoch 0/-2" would only confuse).

    When stdout is not a terminal (`make run > f.log`, CI) a redrawn bar is carriage-return noise in a file,
    so the bar is replaced by one plain line every `percent` % of the steps or every `every_s` seconds."""

    def __init__(self, label: str, *, lines: bool | None = None, percent: int = 10, every_s: float = 60.0):
        super().__init__()
        self.label = label
        self.lines = (not sys.stdout.isatty()) if lines is None else lines
        self.percent, self.every_s = percent, every_s
        self._last_pct = self._last_t = self._t0 = None

    @property
    def is_disabled(self) -> bool:   # Lightning creates its tqdm bars disabled when this is true
        return super().is_disabled or self.lines

    def on_train_start(self, trainer, *args) -> None:
        super().on_train_start(trainer, *args)
        self._t0 = self._last_t = time.monotonic()
        self._last_pct = 0

    def on_train_epoch_start(self, trainer, *args) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description(self.label)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if not self.lines or self._t0 is None:
            return
        step, total = trainer.global_step, trainer.max_steps
        now = time.monotonic()
        pct = int(100 * step / total) if total and total > 0 else 0
        if step != total and pct < self._last_pct + self.percent and now - self._last_t < self.every_s:
            return
        self._last_pct, self._last_t = pct - pct % self.percent, now
        metrics = "".join(f", {k} {v:.4g}" if isinstance(v, float) else f", {k} {v}"
                          for k, v in self.get_metrics(trainer, pl_module).items())
        elapsed = now - self._t0
        print(f"{self.label}: step {step}/{total} ({pct}%){metrics}, {elapsed:.0f}s elapsed", flush=True)

    def get_metrics(self, trainer, pl_module):
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics


@dataclass
class CaptionSource:
    """A source's cached train features with the caption templates that turn labels into text.

    `prompts`: each row's own user turn (instruction tuning, LLaVA stage 2: the row's question, its label the
    answer); None: the user turn is one of the run's instructions, drawn per sample (stage 1)."""

    name: str
    features: torch.Tensor  # [N, T, D]
    labels: list[str]
    templates: list[str]
    weight: float = 1.0
    prompts: list[str] | None = None

    def __post_init__(self):
        if self.features.shape[0] == 0 or len(self.labels) != self.features.shape[0]:
            raise DataError(f"source {self.name!r} has {self.features.shape[0]} feature rows and "
                            f"{len(self.labels)} labels: nothing to train on")
        if self.prompts is not None and len(self.prompts) != len(self.labels):
            raise DataError(f"source {self.name!r} has {len(self.prompts)} prompts for {len(self.labels)} rows")

    def text(self, row: int, template: int, instructions: list[str], instruction: int) -> tuple[str, str]:
        """(user turn, answer) of one planned sample."""
        user = self.prompts[row] if self.prompts is not None else instructions[instruction]
        return user, self.templates[template].format(label=self.labels[row])


class PlannedCaptions(Dataset):
    """Item i of the plan -> (features, encoded text); the plan covers the whole run.

    `offset` starts the items at that plan position without changing the length: a run resumed mid-epoch
    keeps the epoch length Lightning restored its in-epoch counters for (a shorter loader would end that
    epoch early and restart it from the offset, repeating batches). Positions past the end wrap around;
    only the data fetcher's look-ahead reaches them."""

    def __init__(self, mllm: MLLM, sources: list[CaptionSource], plan: list[tuple[int, int, int, int]],
                 instructions: list[str], offset: int = 0):
        self.mllm, self.sources, self.plan, self.instructions = mllm, sources, plan, instructions
        self.offset = offset
        self._text_cache: dict[tuple[str, str], tuple[list[int], int]] = {}

    def __len__(self):
        return len(self.plan)

    def __getitem__(self, i):
        source_index, row, template, instruction = self.plan[(i + self.offset) % len(self.plan)]
        source = self.sources[source_index]
        user, answer = source.text(row, template, self.instructions, instruction)
        key = (user, answer)
        if key not in self._text_cache:
            self._text_cache[key] = self.mllm.encode_text(user, answer)
        return source.features[row], self._text_cache[key]


def make_plan(sources: list[CaptionSource], num_samples: int, seed: int, num_instructions: int):
    """Seeded sample plan: sources mixed by weight, rows in reshuffled epochs, random template/instruction."""
    rng = random.Random(seed)
    weights = [s.weight for s in sources]
    orders = [[] for _ in sources]
    plan = []
    for _ in range(num_samples):
        s = rng.choices(range(len(sources)), weights=weights)[0] if len(sources) > 1 else 0
        if not orders[s]:
            orders[s] = list(range(sources[s].features.shape[0]))
            rng.shuffle(orders[s])
        plan.append((s, orders[s].pop(), rng.randrange(len(sources[s].templates)),
                     rng.randrange(num_instructions)))
    return plan


class CaptionDataModule(L.LightningDataModule):
    def __init__(self, mllm: MLLM, train: list[CaptionSource], val: list[CaptionSource], *, batch_size: int,
                 max_steps: int, seed: int, instructions: list[str], val_samples: int = 64):
        super().__init__()
        self.mllm, self.train_sources, self.val_sources = mllm, train, val
        self.batch_size, self.max_steps, self.seed = batch_size, max_steps, seed
        self.instructions = list(instructions)   # data.instructions (pivotmerge.pipeline.data.instructions)
        self.val_samples = val_samples
        self._plan: list | None = None

    @property
    def world_size(self) -> int:
        return self.trainer.world_size if self.trainer is not None else 1

    @property
    def plan(self) -> list:
        """The global plan: every rank's samples of every step (DDP shards it by rank, in order)."""
        if self._plan is None:
            self._plan = make_plan(self.train_sources, self.batch_size * self.max_steps * self.world_size,
                                   self.seed, len(self.instructions))
        return self._plan

    def _collate(self, items):
        features = torch.stack([f for f, _ in items])
        return {"features": features, **self.mllm.collate_text([t for _, t in items])}

    def train_dataloader(self):
        start = (self.trainer.global_step if self.trainer is not None else 0) * self.batch_size * self.world_size
        dataset = PlannedCaptions(self.mllm, self.train_sources, self.plan, self.instructions, offset=start)
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=False, collate_fn=self._collate)

    def val_dataloader(self):
        # Fixed held-out rows (first template, first instruction), the same for every model compared.
        plan = []
        for s, source in enumerate(self.val_sources):
            plan += [(s, row, 0, 0) for row in range(min(self.val_samples, source.features.shape[0]))]
        dataset = PlannedCaptions(self.mllm, self.val_sources, plan, self.instructions)
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=False, collate_fn=self._collate)


class ProjectorAlignment(L.LightningModule):
    """Trains `mllm.projector` with the caption (next-token) loss; everything else stays frozen."""

    def __init__(self, mllm: MLLM, *, lr: float, weight_decay: float, warmup_ratio: float, max_steps: int,
                 extra: tuple[list[torch.nn.Parameter], float] | None = None):
        """`extra`: (parameters, their lr) trained beside the projector, e.g. LoRA adapters of the LLM in
        instruction tuning (pivotmerge/pipeline/sft_lora.py); checkpoints keep them."""
        super().__init__()
        self.mllm = mllm
        self.lr, self.weight_decay, self.warmup_ratio, self.max_steps = lr, weight_decay, warmup_ratio, max_steps
        self.extra = extra
        self.strict_loading = False  # checkpoints hold the projector (and `extra`) only
        self.val_losses: list[float] = []

    def training_step(self, batch, _):
        loss = self.mllm.caption_loss(**batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["features"].shape[0])
        return loss

    def validation_step(self, batch, _):
        loss = self.mllm.caption_loss(**batch)
        self.log("val/loss", loss, prog_bar=True, batch_size=batch["features"].shape[0])

    def configure_optimizers(self):
        groups = [{"params": [p for p in self.mllm.projector.parameters() if p.requires_grad], "lr": self.lr}]
        if self.extra is not None:
            groups.append({"params": list(self.extra[0]), "lr": self.extra[1]})
        optimizer = torch.optim.AdamW(groups, lr=self.lr, weight_decay=self.weight_decay)
        warmup = max(1, int(self.warmup_ratio * self.max_steps))

        def schedule(step):
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(1, self.max_steps - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, schedule),
                                 "interval": "step"}}

    def on_save_checkpoint(self, checkpoint):
        extra = {id(p) for p in self.extra[0]} if self.extra is not None else set()
        extra_names = {name for name, p in self.named_parameters() if id(p) in extra}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items()
                                    if k.startswith("mllm.projector.") or k in extra_names}
