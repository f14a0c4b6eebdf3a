"""mergekit merge configs, read as they are, for the methods mergekit and pivotmerge share.

A mergekit file (``merge_method``, ``base_model``, ``models: [{model, parameters}]``, ``parameters``,
``dtype``, ``out_dtype``) becomes the same request a pivotmerge merge file gives: a method of
``conf/merge/``, the base, the experts with per-expert weights, every option of that method, and dtypes.
The translation is exact: with mergekit's defaults filled in, the merge computes what mergekit computes
(DARE's random masks aside: same distribution, our generator). Whatever cannot be computed exactly - a key
or parameter we do not implement, layer-dependent values, per-model weights a method cannot take - stops
with one line naming it; nothing is silently dropped.

mergekit's arithmetic, per tensor (task vectors tau_i = model_i - base, i over the models that are not
the base; weights w_i, densities d_i, ``lambda`` = lam):

* ``linear``: sum_j w_j theta_j over the models *and the base*, divided by sum_j w_j when ``normalize``.
* task-vector methods: delta_i = w_i * sparsify(tau_i, d_i); with a sign election (``ties``, ``dare_ties``)
  only the delta entries agreeing with sign(sum_i delta_i) count; mixed = sum of those, divided by the sum
  of their weights when ``normalize``; theta = base + lam * mixed. ``rescale`` divides DARE's kept entries
  by d.

Our CLI scales each expert's task vector by its weight before the method sees it (docs/merge_cli.md);
:data:`METHODS` maps the methods; docs/merge_cli.md has the table of every key and what it becomes here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pivotmerge.errors import ConfigError


class MergekitConfigError(ConfigError):
    """A mergekit config uses something pivotmerge cannot compute exactly (one line: the key and why)."""


@dataclass(frozen=True)
class Method:
    ours: str              # the conf/merge/ method
    normalize: bool        # mergekit's default for `normalize`
    rescale: bool          # mergekit's default for `rescale`
    sparsify: str | None   # None | "magnitude" (TIES trim) | "random" (DARE drop)
    elect: bool            # TIES sign election
    parameters: frozenset[str]


_TASK = frozenset({"weight", "density", "normalize", "rescale", "int8_mask", "lambda", "lam"})

# mergekit merge_method -> pivotmerge method; mergekit's defaults (its registry) next to it
METHODS: dict[str, Method] = {
    "linear": Method("average", normalize=True, rescale=False, sparsify=None, elect=False,
                     parameters=frozenset({"weight", "normalize", "int8_mask"})),
    "task_arithmetic": Method("task_arithmetic", False, False, None, False, _TASK),
    "ties": Method("ties", True, False, "magnitude", True, _TASK),
    "dare_linear": Method("dare_ta", False, True, "random", False, _TASK),
    "dare_ties": Method("dare_ties", False, True, "random", True, _TASK),
}

TOP_KEYS = ("merge_method", "base_model", "models", "parameters", "dtype", "out_dtype", "random_seed")
# mergekit keys with a meaning we cannot reproduce on a projector file
UNSUPPORTED = {
    "slices": "layer slices need a layered LLM; list whole projector files under models:",
    "modules": "per-module merges need a multi-module model; list whole projector files under models:",
    "tokenizer_source": "a projector has no tokenizer",
    "tokenizer": "a projector has no tokenizer",
    "chat_template": "a projector has no chat template",
}
DTYPES = {"float32": "float32", "fp32": "float32", "float": "float32", "float16": "float16",
          "fp16": "float16", "half": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float64": "float64"}


def is_mergekit(data: Mapping) -> bool:
    return "merge_method" in data


def read_mergekit(data: Mapping[str, Any], folder: Path, where: str) -> dict[str, Any]:
    """A parsed mergekit config -> {method, base, experts: [(path, weight)], options, dtype, out_dtype, origin}.

    ``where`` prefixes every error (e.g. ``--config merge.yml``); model paths are relative to ``folder``."""
    def fail(msg: str) -> MergekitConfigError:
        return MergekitConfigError(f"{where}: {msg}")

    for key in data:
        if key in UNSUPPORTED:
            raise fail(f"mergekit key {key!r} is not supported ({UNSUPPORTED[key]})")
        if key not in TOP_KEYS:
            raise fail(f"unknown key {key!r} in a mergekit config; supported: {', '.join(TOP_KEYS)}")
    name = data["merge_method"]
    if name not in METHODS:
        raise fail(f"merge_method {name!r} has no pivotmerge equivalent; supported: {', '.join(METHODS)}")
    m = METHODS[name]
    models = data.get("models")
    if not isinstance(models, list) or not models:
        raise fail("models must be a list of {model: PATH, parameters: {...}}")

    def params(value: Any, at: str, allowed: frozenset[str]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise fail(f"{at} must be a mapping name: value")
        for k, v in value.items():
            if k not in allowed:
                raise fail(f"{at}.{k} is not a parameter pivotmerge can honour for merge_method {name} "
                           f"(supported: {', '.join(sorted(allowed))})")
            if isinstance(v, (list, dict)):
                raise fail(f"{at}.{k}: layer-dependent values (gradient lists, filters) are not supported; "
                           "give one number")
        return dict(value)

    glob = params(data.get("parameters"), "parameters", m.parameters)
    if "lambda" in glob and "lam" in glob:
        raise fail("parameters has both lambda and lam; give one")

    def path(value: Any, at: str) -> Path:
        if isinstance(value, dict) or not isinstance(value, str) or not value:
            raise fail(f"{at} must be the path of a projector file, got {value!r}")
        if "+" in value and not (folder / value).exists():
            raise fail(f"{at} {value!r}: model+LoRA references are not supported; give a projector file")
        p = folder / Path(value).expanduser()
        if not p.exists() and Path(value).expanduser().exists():   # mergekit reads paths from the cwd
            p = Path(value).expanduser()
        if p.is_dir():   # a LLaVA checkpoint folder holds its projector as mm_projector.bin
            found = [p / f for f in ("mm_projector.safetensors", "mm_projector.bin") if (p / f).is_file()]
            if not found:
                raise fail(f"{at} {value!r} is a folder without mm_projector.safetensors/.bin; "
                           "give the projector file")
            p = found[0]
        return p

    base = path(data["base_model"], "base_model") if data.get("base_model") is not None else None
    entries = []   # (path, weight or None, density or None)
    for i, item in enumerate(models):
        if not isinstance(item, dict) or "model" not in item:
            raise fail(f"models[{i}] must be {{model: PATH, parameters: {{...}}}}")
        extra = sorted(set(item) - {"model", "parameters"})
        if extra:
            raise fail(f"models[{i}] has unknown key(s) {', '.join(extra)}; a model is {{model, parameters}}")
        own = params(item.get("parameters"), f"models[{i}].parameters",
                     m.parameters & frozenset({"weight", "density"}))
        p = path(item["model"], f"models[{i}].model")
        entries.append((p, _number(own.get("weight", glob.get("weight")), f"models[{i}] weight", fail),
                        _number(own.get("density", glob.get("density")), f"models[{i}] density", fail)))

    normalize = _flag(glob.get("normalize", m.normalize), "normalize", fail)
    rescale = _flag(glob.get("rescale", m.rescale), "rescale", fail)
    _flag(glob.get("int8_mask", False), "int8_mask", fail)
    lam = _number(glob.get("lambda", glob.get("lam", 1.0)), "lambda", fail)
    seed = data.get("random_seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise fail(f"random_seed must be an integer, got {seed!r}")

    if name == "linear":
        pivot, experts, weights, options = _linear(base, entries, glob, normalize, fail)
    else:
        if base is None:
            raise fail(f"merge_method {name} needs base_model (the projector every expert started from)")
        # mergekit skips the base among the models of a task-vector merge
        rows = [(p, w, d) for p, w, d in entries if p.resolve() != base.resolve()]
        for p, w, _ in rows:
            if w is None:
                raise fail(f"{p.name} has no weight (mergekit requires one per model, or parameters.weight)")
        pivot, experts = base, [p for p, _, _ in rows]
        weights, options = _task_vector(m, name, rows, normalize, rescale, lam, seed, fail)
    out = {"method": m.ours, "base": pivot, "experts": list(zip(experts, weights)), "options": options,
           "origin": f"mergekit config, merge_method {name} -> {m.ours}"}
    for key in ("dtype", "out_dtype"):
        if data.get(key) is not None:
            if data[key] not in DTYPES:
                names = ", ".join(sorted(set(DTYPES.values())))
                raise fail(f"{key} {data[key]!r} is not supported; use one of {names}")
            out[key] = DTYPES[data[key]]
    return out


def _linear(base, entries, glob, normalize, fail):
    """mergekit averages the models and the base (added with the global weight when not listed)."""
    rows = [(p, w) for p, w, _ in entries]
    if base is not None and all(p.resolve() != base.resolve() for p, _ in rows):
        rows.append((base, _number(glob.get("weight"), "base_model weight", fail)))
    for p, w in rows:
        if w is None:
            raise fail(f"{p.name} has no weight (mergekit's linear needs one for every model, the base included)")
    total = sum(w for _, w in rows)
    if normalize:
        if abs(total) < 1e-12:
            raise fail("linear: the weights sum to 0, so normalize: true cannot divide by them")
        coef = [w / total for _, w in rows]
    elif abs(total - 1.0) > 1e-6:
        # sum_j w_j theta_j with sum w != 1 rescales the whole projector: not a merge of task vectors
        raise fail(f"linear with normalize: false needs weights summing to 1 (got {total:.6g}); "
                   "pivotmerge's average is a convex combination")
    else:
        coef = [w for _, w in rows]
    # every model is pivot + tau (the base's tau is 0); average's weight c enters as mean_k(c tau_k)
    pivot = base if base is not None else rows[0][0]
    k = len(rows)
    weights = [1.0] * k if _equal(coef) else [c * k for c in coef]
    return pivot, [p for p, _ in rows], weights, {}


def _task_vector(m: Method, name, rows, normalize, rescale, lam, seed, fail):
    """(per-expert weights, options of m.ours) reproducing mergekit's arithmetic for this method."""
    w = [wt for _, wt, _ in rows]
    densities = [1.0 if d is None else d for _, _, d in rows]
    options: dict[str, Any] = {}
    if m.sparsify is not None:
        if not _equal(densities):
            raise fail(f"{name}: per-model densities differ ({', '.join(f'{d:g}' for d in densities)}); "
                       f"pivotmerge's {m.ours} has one density for every expert")
        d = densities[0]
        if not 0.0 <= d <= 1.0:
            raise fail(f"density must be in [0, 1], got {d:g}")
        if m.sparsify == "magnitude":
            if rescale:
                raise fail("ties with rescale: true is not supported (pivotmerge's TIES trim does not rescale)")
            options.update(density=d, scope="tensor")
        else:
            options.update(p=1.0 - d, seed=seed)
            if not rescale:   # DARE without its 1/density: a uniform factor, so it folds into lam
                lam *= d
            if m.elect:
                options.update(density=1.0, scope="tensor")
    if m.elect:
        options.update(sign="sum", combine="mean" if normalize else "sum")
        if normalize:
            # sum over agreeing experts of w_i delta_i / sum of their w_i: equal positive weights cancel
            if not (_equal(w) and w[0] > 0):
                raise fail(f"{name} with normalize: true divides by the agreeing models' weights, which "
                           f"pivotmerge's {m.ours} cannot (weights {', '.join(f'{x:g}' for x in w)}); "
                           "use equal positive weights or normalize: false")
            weights = [1.0] * len(w)
        elif _equal(w) and w[0] > 0:
            weights, lam = [1.0] * len(w), lam * w[0]
        else:
            weights = list(w)
    else:
        total = sum(w)
        coef = [x / total for x in w] if normalize and abs(total) >= 1e-8 else list(w)
        if _equal(coef):
            weights, lam = [1.0] * len(coef), lam * coef[0]
        else:
            weights = coef
    options["lam"] = float(lam)
    return weights, options


def _equal(xs: list[float]) -> bool:
    return all(math.isclose(x, xs[0], rel_tol=1e-9, abs_tol=1e-12) for x in xs)


def _number(value: Any, what: str, fail) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise fail(f"{what} must be a finite number, got {value!r}")
    return float(value)


def _flag(value: Any, what: str, fail) -> bool:
    if not isinstance(value, bool):
        raise fail(f"parameters.{what} must be true or false, got {value!r}")
    return value
