"""Types and ranges of every key a run uses: one dataclass schema per config group (a field's type and its
`rule(...)` are the whole check), the generic checker that walks the config along them, and the error.

Defaults are not repeated here: they live in conf/ only. A schema lists which keys must exist and what
values they may take.
"""
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Union, get_args, get_origin

from omegaconf import DictConfig, ListConfig, OmegaConf

from pivotmerge.errors import ConfigError

PRECISIONS = ("32-true", "32", "64-true", "64", "16-mixed", "bf16-mixed", "16-true", "bf16-true",
              "transformer-engine")


class PreflightError(ConfigError):
    """A config value that would make the run fail (or silently do nothing useful) later."""


def rule(*, ge=None, gt=None, le=None, lt=None, choices=None, fix: str = ""):
    """A schema field: its Python type is the type check, these are the range / choice checks."""
    return field(default=None, metadata={"ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices, "fix": fix})


# ---- schemas (one per config group; nested dataclasses are sub-nodes) ------------------------------------
@dataclass
class TrainerSchema:
    accelerator: str = rule()
    strategy: str = rule()
    precision: str = rule(choices=PRECISIONS)
    batch_size: int = rule(ge=1)
    accumulate_grad_batches: int = rule(ge=1)
    lr: float = rule(gt=0.0)
    weight_decay: float = rule(ge=0.0)
    warmup_ratio: float = rule(ge=0.0, lt=1.0)
    val_samples: int = rule(ge=0)
    checkpoint_every: int = rule(ge=1)
    log_every_n_steps: int = rule(ge=1)
    progress_bar: bool = rule()


@dataclass
class PivotSchema:
    init: str = rule(choices=("warmup", "seeded"))
    data: str = rule(choices=("experts", "general"))
    steps: int = rule(ge=0)
    samples_per_source: int = rule(ge=1)


@dataclass
class ExpertsSchema:
    start: str = rule(choices=("from_pivot", "independent"))
    steps: int = rule(ge=0)


@dataclass
class JointSchema:
    enabled: bool = rule()
    steps: int | None = rule(ge=1)


@dataclass
class ScenarioSchema:
    sources: list[str] = rule()
    pivot: PivotSchema = rule()
    experts: ExpertsSchema = rule()
    joint: JointSchema = rule()


@dataclass
class SplitSchema:
    train: int = rule(ge=1)
    val: int = rule(ge=1)
    test: int = rule(ge=1)
    pool: int = rule(ge=0)
    seed: int = rule()


@dataclass
class DataSchema:
    split: SplitSchema = rule()
    instructions: list[str] = rule(fix='a list of strings, [""] for no instruction')


@dataclass
class VisionSchema:
    kind: str = rule(choices=("efficientnet_lite0", "hf"))
    feature_dim: int = rule(ge=1)
    grid: int | None = rule(ge=1)
    feature_norm: str = rule(choices=("none", "layernorm"))


@dataclass
class LLMSchema:
    kind: str = rule(choices=("smollm2_gguf", "hf"))
    dtype: str = rule(choices=("float32", "float16", "bfloat16", "float64"))


@dataclass
class ModelSchema:
    vision: VisionSchema = rule()
    llm: LLMSchema = rule()


@dataclass
class CalibrationSchema:
    per_source: int = rule(ge=1)
    train_rows: int = rule(ge=1)
    sample_tokens: int = rule(ge=1)
    fisher_rows: int = rule(ge=1)
    loss_split: str = rule(choices=("train", "val"))
    loss_kind: str = rule(choices=("kway", "caption", "kway_guarded"))
    guard_se: float = rule(ge=0)


@dataclass
class MergeDiagnosticsSchema:
    lmc: bool = rule()
    lmc_points: int = rule(ge=2)


@dataclass
class MergeSearchSchema:
    enabled: bool = rule()
    budget: int = rule(ge=1)
    scale_values: list[float] | None = rule()
    val_check: bool = rule()


@dataclass
class RunSchema:
    seed: int = rule()
    seeds: list[int] | None = rule()
    num_experts_merged: int | None = rule(ge=1)
    align: str = rule(choices=("none", "weights", "activations"))
    stages: list[str] = rule()
    trainer: TrainerSchema = rule()
    scenario: ScenarioSchema = rule()
    data: DataSchema = rule()
    model: ModelSchema = rule()


# ---- the generic checker -----------------------------------------------------------------------------
def fail(key: str, value: Any, problem: str, fix: str = "") -> PreflightError:
    """The error for `key=value`: what is wrong with it and, when known, what would fix it."""
    shown = OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value
    return PreflightError(f"config {key}={shown!r} {problem}" + (f" ({fix})" if fix else ""))


def _type_ok(value: Any, annotation) -> bool:
    origin = get_origin(annotation)
    if origin is Union:
        return any(_type_ok(value, a) for a in get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin is list:
        (item,) = get_args(annotation)
        return isinstance(value, (list, ListConfig)) and all(_type_ok(v, item) for v in value)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    return True


def _type_name(annotation) -> str:
    origin = get_origin(annotation)
    if origin is Union:
        return " or ".join(_type_name(a) for a in get_args(annotation))
    if annotation is type(None):
        return "null"
    if origin is list:
        return f"a list of {_type_name(get_args(annotation)[0])}"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(annotation, str(annotation))


def check_schema(node, schema, prefix: str) -> None:
    """Raise PreflightError at the first key of `node` that violates `schema`."""
    for f in fields(schema):
        key = f"{prefix}{f.name}"
        if not isinstance(node, DictConfig) or f.name not in node:
            raise PreflightError(f"config key {key} is missing (it comes from the defaults in conf/; "
                                 "did an override delete it?)")
        value = node[f.name]
        if is_dataclass(f.type):
            check_schema(value, f.type, key + ".")
            continue
        if not _type_ok(value, f.type):
            raise fail(key, value, f"must be {_type_name(f.type)}", f.metadata.get("fix", ""))
        if value is None or isinstance(value, (bool, ListConfig, list)):
            continue
        meta = f.metadata
        bounds = [(">=", meta["ge"], lambda v, b: v >= b), (">", meta["gt"], lambda v, b: v > b),
                  ("<=", meta["le"], lambda v, b: v <= b), ("<", meta["lt"], lambda v, b: v < b)]
        for symbol, bound, ok in bounds:
            if bound is not None and not ok(value, bound):
                raise fail(key, value, f"must be {symbol} {bound}", meta.get("fix", ""))
        if meta["choices"] is not None and value not in meta["choices"]:
            raise fail(key, value, f"must be one of {list(meta['choices'])}")


__all__ = ["CalibrationSchema", "MergeDiagnosticsSchema", "MergeSearchSchema", "PreflightError", "RunSchema",
           "check_schema", "fail", "rule"]
