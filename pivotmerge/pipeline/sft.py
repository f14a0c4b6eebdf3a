"""Stage 5b (sft): LLaVA stage 2, instruction tuning after merging.

Every stage-1 projector of a kind in `sft.models` (pivot, joint, each merge; experts optional) gets the same
tuning: the same instruction rows, steps, seed and schedule (`recipe`, one dict for all of them), so that the
tuned models differ only in where they started. A tuned projector is cached per (start projector, recipe) as
`sft/<key>` and resumes from its last checkpoint like every training stage (pipeline/train.py). It becomes the
model `sft:<stage-1 model>` (pivotmerge/model_id.py), which the eval stage scores beside its stage-1 self.

Instruction rows are (visual features of a TRAIN image, question, answer), never a val or test image:
  * templated questions per source (`sft.data.questions`), the answer the image's label;
  * easy-VQA's own train questions (`sft.data.easyvqa_questions`) on the train images of the easy-VQA source,
    matched by the package's image id (the data split's `key` column), once for all its caption views.
The LLM stays frozen (`sft.llm=frozen`) or is adapted with LoRA (`sft.llm=lora`, peft; pipeline/sft_lora.py).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from omegaconf import OmegaConf

from pivotmerge.errors import ConfigError
from pivotmerge.model_id import ModelId, kind_of
from pivotmerge.pipeline.stage import Stage
from pivotmerge.pipeline.train import run_training_stage, train_spec
from pivotmerge.preflight.schema import fail, rule
from pivotmerge.training import CaptionSource

EASYVQA_QUESTIONS = "easyvqa_questions"   # the instruction source of easy-VQA's own questions
ANSWER_TEMPLATE = ["{label}"]             # the answer is the label itself, as in the stage-1 captions
VAL_SPLIT = "val"


def tuned_models(ctx) -> dict[str, object]:
    """The stage-1 models the recipe is applied to: name -> projector artifact, in ctx.models() order."""
    kinds = set(ctx.cfg.sft.models)
    return {name: artifact for name, artifact in ctx.models().items() if kind_of(name) in kinds}


def _draw(rng: random.Random, n: int, k: int) -> list[int]:
    """k of n row indices, seeded, in split order (all of them when k >= n)."""
    return sorted(rng.sample(range(n), k)) if k < n else list(range(n))


def templated_source(ctx, name: str, split: str, questions: list[str], rows: int, seed: int) -> CaptionSource:
    """Rows of `split` of source `name`, each with one of `questions` and its label as the answer."""
    feats = ctx.features[name]
    rng = random.Random(f"{seed}:{name}:{split}")
    picks = _draw(rng, feats.features[split].shape[0], rows)
    return CaptionSource(f"{name}:{split}", feats.features[split][picks], [feats.labels[split][i] for i in picks],
                         list(ANSWER_TEMPLATE), prompts=[rng.choice(questions) for _ in picks])


def easyvqa_source(ctx, split: str, rows: int, seed: int) -> CaptionSource | None:
    """easy-VQA's own train questions on the easy-VQA source's `split` images (our train and val splits both
    hold package TRAIN images only); None without an easy-VQA source."""
    from pivotmerge.data.sources.easyvqa import EasyVQASource, read_questions
    from pivotmerge.pipeline.data import load_dataset_dict

    name = next((n for n in ctx.features if isinstance(ctx.sources.get(n), EasyVQASource)), None)
    if name is None:
        return None
    keys = list(load_dataset_dict(ctx.data[name].path)[split]["key"])
    row_of = {key: i for i, key in enumerate(keys)}
    pairs = [(q.text, q.answer, row_of[str(q.image_id)]) for q in read_questions("train")
             if str(q.image_id) in row_of]
    if not pairs:
        return None
    picks = _draw(random.Random(f"{seed}:{EASYVQA_QUESTIONS}:{split}"), len(pairs), rows)
    chosen = [pairs[i] for i in picks]
    features = ctx.features[name].features[split][[row for _, _, row in chosen]]
    return CaptionSource(f"{EASYVQA_QUESTIONS}:{split}", features, [answer for _, answer, _ in chosen],
                         list(ANSWER_TEMPLATE), prompts=[question for question, _, _ in chosen])


def instruction_sources(ctx, split: str) -> list[CaptionSource]:
    """The instruction rows of `split` (train: what the tuning trains on; val: its held-out loss)."""
    data = ctx.cfg.sft.data
    questions = OmegaConf.to_container(data.questions, resolve=True) or {}
    rows, seed = int(data.rows_per_source), int(ctx.cfg.sft.seed)
    out = [templated_source(ctx, name, split, list(questions[name]), rows, seed)
           for name in ctx.features if questions.get(name)]
    if data.easyvqa_questions and (easy := easyvqa_source(ctx, split, rows, seed)) is not None:
        out.append(easy)
    if not out:
        raise ConfigError(f"sft has no instruction data: sft.data.questions names none of the sources "
                          f"{list(ctx.features)} and there is no easy-VQA source")
    return out


def recipe(ctx) -> dict:
    """Everything the tuning of every projector shares; with the start projector's key, its cache key."""
    cfg = ctx.cfg
    sft = OmegaConf.to_container(cfg.sft, resolve=True)
    spec = {"features": {n: a.key for n, a in ctx.feature_artifacts.items()}, "data": sft["data"],
            "answer": ANSWER_TEMPLATE, "steps": sft["steps"], "train": {**train_spec(cfg), "lr": sft["lr"]},
            "seed": int(cfg.seed) * 1000 + sft["seed"], "llm": sft["llm"],
            "system_prompt": cfg.model.get("system_prompt")}
    if sft["llm"] == "lora":
        spec["lora"] = sft["lora"]
    return spec


def train_config(ctx):
    values = OmegaConf.to_container(ctx.cfg.trainer, resolve=True)
    return OmegaConf.create({**values, "steps": int(ctx.cfg.sft.steps), "lr": float(ctx.cfg.sft.lr)})


def run(ctx) -> None:
    models = tuned_models(ctx)
    if not models:
        raise ConfigError(f"sft.models={list(ctx.cfg.sft.models)} selects no projector of this run "
                          f"(it has {list(ctx.models())})")
    shared = recipe(ctx)
    train, val = instruction_sources(ctx, "train"), instruction_sources(ctx, VAL_SPLIT)
    train_cfg = train_config(ctx)
    logger_factory = ctx.logger_factory()
    lora = None
    if ctx.cfg.sft.llm == "lora":
        from pivotmerge.pipeline.sft_lora import LoraRecipe

        lora = LoraRecipe.from_config(ctx.cfg.sft.lora)
    for name, start in models.items():
        spec = {"projector": start.key, "recipe": shared}
        ctx.sft[name] = ctx.produce(
            "sft", str(ModelId.sft(name)), run_training_stage, ctx.store, "sft", name, spec, mllm=ctx.mllm,
            init_state=ctx.projector(start), train=train, val=val, train_cfg=train_cfg, seed=shared["seed"],
            instructions=[""], logger_factory=logger_factory, lora=lora,
            note=f"{shared['steps']} steps, llm {shared['llm']}")


def check_sft(cfg, sources: list[str]) -> None:
    """The stage's preflight: it selects known model kinds and LoRA targets known linear layers."""
    from pivotmerge.pipeline.sft_lora import LORA_MODULES

    sft = cfg.sft
    kinds = ("pivot", "joint", "merge", "expert")
    bad = [k for k in sft.models if k not in kinds]
    if bad or not len(sft.models):
        raise fail("sft.models", sft.models, f"names unknown model kind(s) {bad}" if bad else "is empty",
                   f"kinds: {', '.join(kinds)}")
    unknown = [m for m in sft.lora.target_modules if m not in LORA_MODULES]
    if unknown or not len(sft.lora.target_modules):
        raise fail("sft.lora.target_modules", sft.lora.target_modules,
                   f"names unknown module(s) {unknown}" if unknown else "is empty",
                   f"the LLM's linear layers: {', '.join(LORA_MODULES)}")


@dataclass
class SftLoraSchema:
    r: int = rule(ge=1)
    alpha: float = rule(gt=0.0)
    dropout: float = rule(ge=0.0, lt=1.0)
    lr: float = rule(gt=0.0)
    target_modules: list[str] = rule()


@dataclass
class SftDataSchema:
    rows_per_source: int = rule(ge=1)
    easyvqa_questions: bool = rule()
    questions: dict | None = rule()


@dataclass
class SftSchema:
    models: list[str] = rule()
    steps: int = rule(ge=1, fix="instruction tuning needs a budget, e.g. sft.steps=60; leave sft out of `stages` "
                              "for none")
    lr: float = rule(gt=0.0)
    seed: int = rule()
    llm: str = rule(choices=("frozen", "lora"))
    lora: SftLoraSchema = rule()
    data: SftDataSchema = rule()


STAGE = Stage("sft", run, needs=("merge",), produces={"sft": dict}, config={"sft": SftSchema},
              preflight=check_sft)   # LLaVA stage 2 after merging (experiment=stage2)
