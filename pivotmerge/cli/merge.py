"""``pivotmerge merge``: merge projector checkpoints with a method of the merge registry.

``pivotmerge merge METHOD --base PIVOT --experts A B [C ...] --out MERGED [option=value ...]``
merges projector checkpoints (safetensors or torch ``.bin``/``.pt``) with a method configured in
``conf/merge/METHOD.yaml`` (the merge registry, :mod:`pivotmerge.merging.registry`); options are that
YAML's keys, values typed like YAML/Hydra overrides. Data-aware methods (RegMean, Fisher, ...) read each
expert's calibration statistics from ``--stats A.st B.st ...`` (written by ``pivotmerge stats``).
``pivotmerge merge --config merge.yaml`` reads the same from a file (method, base, experts with optional
per-expert weights, options, out; see docs/merge_cli.md); flags given next to it override the file.
A mergekit config (``merge_method``, ``base_model``, ``models``, ``parameters``, ``dtype``) is read as it
is, for the methods both have (:mod:`pivotmerge.interop.mergekit`).
A safetensors output carries its provenance (method, options, input hashes, version) in its metadata:
``pivotmerge info MERGED`` prints it. An existing output is only replaced with ``--force``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pivotmerge.cli import CLIError, subcommand


# ------------------------------------------------------------------------------------------- merge
def merge_config_names() -> list[str]:
    from pivotmerge.merging import available

    return available()


def load_merge_config(method: str) -> tuple[Callable, dict[str, Any]]:
    """(merge function, default options) of ``method`` from the registry (conf/merge/METHOD.yaml)."""
    from pivotmerge.merging import get_method, method_defaults

    return get_method(method), method_defaults(method)


_OPTION_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def parse_options(tokens: Sequence[str], defaults: dict[str, Any], method: str) -> dict[str, Any]:
    """``name=value`` tokens -> typed options (YAML typing, like Hydra overrides); validates names."""
    from omegaconf import OmegaConf

    out: dict[str, Any] = {}
    for tok in tokens:
        if not _OPTION_RE.match(tok):
            raise CLIError(f"unexpected argument {tok!r}; options are given as name=value")
        name, raw = tok.split("=", 1)
        check_option_name(name, defaults, method)
        try:
            value = OmegaConf.to_container(OmegaConf.from_dotlist([f"v={raw}"]))["v"]
        except Exception as e:
            raise CLIError(f"option {name}: cannot parse value {raw!r} ({e})") from e
        out[name] = typed_option(name, value, defaults)
    return out


def check_option_name(name: str, defaults: dict[str, Any], method: str) -> None:
    if name not in defaults:
        valid = ", ".join(sorted(defaults)) or "(none)"
        raise CLIError(f"unknown option {name!r} for merge method {method!r}; valid options: {valid}")


def typed_option(name: str, value: Any, defaults: dict[str, Any]) -> Any:
    # an int where the YAML has a float is fine (lam=1); keep floats floats
    if isinstance(defaults[name], float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


# ---- merge file (--config) ----------------------------------------------------------------------------
MERGE_FILE_KEYS = ("method", "base", "experts", "options", "out", "diagnostics")


@dataclass
class MergeRequest:
    """Everything one merge needs, from flags and/or a merge file."""

    method: str
    base: Path
    experts: list[Path]
    weights: list[float]          # per expert: its task vector is scaled by the weight (1 = unchanged)
    options: dict[str, Any]
    out: Path
    diagnostics: Path | None
    dtype: str | None = None        # inputs cast to it before merging (mergekit's `dtype`)
    out_dtype: str | None = None    # the written tensors' dtype (mergekit's `out_dtype`)
    origin: str | None = None       # where the request came from, when not a pivotmerge merge file


def read_merge_file(path: str | Path) -> dict[str, Any]:
    """A merge file (YAML) -> {method, base, experts: [(path, weight)], options, out, diagnostics}.

    Paths in the file are relative to the file's folder.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise CLIError(f"--config {path}: file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise CLIError(f"--config {path}: not valid YAML ({str(e).splitlines()[0]})") from e
    if not isinstance(data, dict):
        raise CLIError(f"--config {path}: expected a mapping with keys {', '.join(MERGE_FILE_KEYS)}")
    from pivotmerge.interop.mergekit import is_mergekit, read_mergekit

    if is_mergekit(data):
        return read_mergekit(data, path.parent, f"--config {path}")
    unknown = sorted(set(data) - set(MERGE_FILE_KEYS))
    if unknown:
        raise CLIError(f"--config {path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(MERGE_FILE_KEYS)}")
    folder = path.parent

    def file_path(value: Any, where: str) -> Path:
        if not isinstance(value, str) or not value:
            raise CLIError(f"--config {path}: {where} must be a file path, got {value!r}")
        return folder / Path(value).expanduser()

    out: dict[str, Any] = {}
    if data.get("method") is not None:
        if not isinstance(data["method"], str):
            raise CLIError(f"--config {path}: method must be a name from conf/merge/, got {data['method']!r}")
        out["method"] = data["method"]
    for key in ("base", "out", "diagnostics"):
        if data.get(key) is not None:
            out[key] = file_path(data[key], key)
    experts = data.get("experts")
    if experts is not None:
        if not isinstance(experts, list):
            raise CLIError(f"--config {path}: experts must be a list of paths or {{path: ..., weight: ...}}")
        out["experts"] = []
        for i, item in enumerate(experts):
            entry = item if isinstance(item, dict) else {"path": item}
            extra = sorted(set(entry) - {"path", "weight"})
            if extra:
                raise CLIError(f"--config {path}: experts[{i}] has unknown key(s) {', '.join(extra)}; "
                               "an expert is a path or {path: ..., weight: ...}")
            weight = entry.get("weight", 1.0)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
                raise CLIError(f"--config {path}: experts[{i}].weight must be a finite number, got {weight!r}")
            out["experts"].append((file_path(entry.get("path"), f"experts[{i}].path"), float(weight)))
    options = data.get("options")
    if options is not None and not isinstance(options, dict):
        raise CLIError(f"--config {path}: options must be a mapping option: value")
    out["options"] = dict(options or {})
    return out


def merge_request(args: argparse.Namespace) -> tuple[MergeRequest, Callable]:
    """(request, merge function). Flags override the merge file; options: defaults < file < option=value."""
    # option tokens may end up after --experts (nargs='+') or among the extras: move them over
    tokens = list(args.options) + list(getattr(args, "extra", []))
    cli_experts = []
    for e in args.experts or []:
        if _OPTION_RE.match(e) and not Path(e).exists():
            tokens.append(e)
        else:
            cli_experts.append(e)
    if args.method is not None and _OPTION_RE.match(args.method):   # `merge --config f.yaml lam=0.5`
        tokens.insert(0, args.method)
        args.method = None
    file = read_merge_file(args.config) if args.config else {}
    method = args.method or file.get("method")
    if method is None:
        raise CLIError("merge needs METHOD (a config in conf/merge/) or `method:` in --config")
    fn, defaults = load_merge_config(method)
    options = dict(defaults)
    for name, value in file.get("options", {}).items():
        check_option_name(str(name), defaults, method)
        options[name] = typed_option(name, value, defaults)
    options.update(parse_options(tokens, defaults, method))
    if cli_experts:
        experts, weights = [Path(e) for e in cli_experts], [1.0] * len(cli_experts)
    else:
        experts = [p for p, _ in file.get("experts", [])]
        weights = [w for _, w in file.get("experts", [])]
    base = Path(args.base) if args.base else file.get("base")
    out = Path(args.out) if args.out else file.get("out")
    for value, flag, key in ((base, "--base", "base"), (out, "--out", "out")):
        if value is None:
            raise CLIError(f"merge needs {flag} (or `{key}:` in --config)")
    diagnostics = Path(args.diagnostics) if args.diagnostics else file.get("diagnostics")
    return MergeRequest(method, base, experts, weights, options, out, diagnostics, file.get("dtype"),
                        file.get("out_dtype"), file.get("origin")), fn


def cast_floats(sd: dict, dtype: str | None) -> dict:
    """Floating tensors of ``sd`` in ``dtype`` (a torch dtype name); None leaves them as they are."""
    import torch

    if dtype is None:
        return sd
    dt = getattr(torch, dtype)
    return {k: v.to(dt) if v.is_floating_point() else v for k, v in sd.items()}


def weighted_experts(pivot: dict, experts: list[dict], weights: list[float]) -> list[dict]:
    """Scale each expert's task vector by its weight: pivot + w * (expert - pivot) on floating tensors."""
    import torch

    scaled = []
    for expert, weight in zip(experts, weights):
        if weight == 1.0:
            scaled.append(expert)
            continue
        out = {}
        for k, v in expert.items():
            if not v.is_floating_point() or k not in pivot:
                out[k] = v
                continue
            dtype = torch.promote_types(v.dtype, torch.float32)
            p = pivot[k].to(dtype)
            out[k] = (p + weight * (v.to(dtype) - p)).to(v.dtype)
        scaled.append(out)
    return scaled


def provenance(request: MergeRequest) -> dict[str, str]:
    """The safetensors metadata of a merged file: what made it, from which exact inputs."""
    from pivotmerge.io import sha256_file
    from pivotmerge.version import version_string

    inputs = {"base": {"path": str(request.base), "sha256": sha256_file(request.base)},
              "experts": [{"path": str(p), "sha256": sha256_file(p), "weight": w}
                          for p, w in zip(request.experts, request.weights)]}
    # a mergekit config's translation is only reproducible with what it was translated from
    inputs.update({k: v for k, v in (("origin", request.origin), ("dtype", request.dtype),
                                     ("out_dtype", request.out_dtype)) if v is not None})
    return {"format": "pt", "pivotmerge.method": request.method,
            "pivotmerge.options": json.dumps(request.options),
            "pivotmerge.inputs": json.dumps(inputs), "pivotmerge.version": version_string()}


def _configure_merge(p: argparse.ArgumentParser) -> None:
    p.add_argument("method", metavar="METHOD", nargs="?",
                   help="merge method = a config in conf/merge/ (e.g. ties, pivotmerge); or `method:` in --config")
    p.add_argument("--config", metavar="FILE", help="merge file (YAML: method, base, experts with optional "
                                                     "weights, options, out); flags override it")
    p.add_argument("--base", metavar="PIVOT", help="pivot projector state dict (.safetensors/.bin/.pt)")
    p.add_argument("--experts", nargs="+", metavar="EXPERT", help="two or more expert state dicts")
    p.add_argument("--out", metavar="MERGED", help="output file; format by extension")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--diagnostics", metavar="DIR", help="also write diagnostics.json and PNG plots into DIR")
    p.add_argument("--stats", nargs="+", metavar="STATS", help="data-aware methods: each expert's calibration "
                   "statistics (`pivotmerge stats`), in the order of --experts")
    p.add_argument("options", nargs="*", metavar="option=value", help="method options, named as in the YAML")


def _statistics_for(fn, method: str, stats_files, n_experts: int) -> list | None:
    """Each expert's statistics from --stats for a method that takes them, None otherwise.

    Without --stats a method that takes them gets none: whether it needs them may depend on its options
    (PivotMerge's task-vector reading does not), and one that does says so, naming --stats."""
    from pivotmerge.merging import spec_of
    from pivotmerge.merging.calibration import load_stats

    if "calibration" not in spec_of(fn).takes:
        if stats_files:
            raise CLIError(f"merge method {method!r} is data-free: it takes no --stats")
        return None
    if not stats_files:
        # whether the statistics are needed can depend on the options (pivotmerge_data_free takes the same
        # function); a method that needs them says so itself, naming --stats
        return None
    if len(stats_files) != n_experts:
        raise CLIError(f"--stats has {len(stats_files)} files for {n_experts} experts (one per expert, same order)")
    return [load_stats(path) for path in stats_files]


def _fmt(x: float) -> str:
    return f"{x:.4g}"


@subcommand("merge", help="merge expert projector checkpoints into one", configure=_configure_merge, accepts_extra=True)
def run_merge(args: argparse.Namespace) -> int:
    from pivotmerge.io import load_state_dict, save_state_dict
    from pivotmerge.merging import merge, validate_inputs
    from pivotmerge.merging.diagnostics import collect, write_diagnostics

    t0 = time.perf_counter()
    request, fn = merge_request(args)
    if len(request.experts) < 2:
        raise CLIError(f"merge needs at least two --experts, got {len(request.experts)}")
    out = request.out
    if out.suffix.lower() not in (".safetensors", ".bin", ".pt", ".pth", ".ckpt"):
        raise CLIError(f"--out {out}: unsupported extension; use .safetensors, .bin, .pt or .pth")
    if out.exists() and not args.force:
        raise CLIError(f"--out {out} exists; pass --force to replace it")
    statistics = _statistics_for(fn, request.method, args.stats, len(request.experts))
    pivot = cast_floats(load_state_dict(request.base), request.dtype)
    expert_sds = [cast_floats(load_state_dict(e), request.dtype) for e in request.experts]
    t_load = time.perf_counter() - t0
    labels = [str(request.base), *map(str, request.experts)]
    validate_inputs(pivot, expert_sds, min_experts=2, method=request.method, labels=labels)
    expert_sds = weighted_experts(pivot, expert_sds, request.weights)
    diag: dict = {}
    t1 = time.perf_counter()
    merged = cast_floats(merge(fn, pivot, expert_sds, request.options, statistics=statistics, diagnostics=diag),
                         request.out_dtype)
    t_merge = time.perf_counter() - t1
    save_state_dict(merged, out, metadata=provenance(request))
    diag_paths: list[Path] = []
    if request.diagnostics:
        collect(pivot, expert_sds, merged, diag)
        diag.setdefault("options", request.options)
        diag.update(cli=dict(method=request.method, base=str(request.base), experts=labels[1:],
                             weights=request.weights, out=str(out)))
        diag_paths = write_diagnostics(diag, request.diagnostics)
    _print_summary(request, pivot, expert_sds, merged, diag, diag_paths, t_load, t_merge,
                   time.perf_counter() - t0)
    return 0


def _print_summary(request, pivot, experts, merged, diag, diag_paths, t_load, t_merge, t_total) -> None:
    from pivotmerge.merging import compute_dtype, float_keys, group_layers

    out = request.out
    n_params = sum(v.numel() for v in pivot.values())
    lines = [
        f"pivotmerge merge: {request.method}" + (f"  (from a {request.origin})" if request.origin else ""),
        "  options: " + (", ".join(f"{k}={v}" for k, v in request.options.items()) or "(none)"),
        f"  inputs : pivot + {len(experts)} experts, {len(pivot)} tensors, {n_params:,} values, "
        f"dtype {next(iter(pivot.values())).dtype}",
    ]
    if any(w != 1.0 for w in request.weights):
        lines.append("  weights: " + ", ".join(_fmt(w) for w in request.weights) + " (task-vector scales)")
    layers = group_layers(float_keys(pivot))
    lines.append(f"  {'layer':<32} {'|tau_k| (per expert)':<34} {'|merged-pivot|':>14} {'weight':>7}")
    shown = list(layers.items())[:16]
    for layer, keys in shown:
        taus = [0.0] * len(experts)
        upd = 0.0
        for k in keys:
            dt = compute_dtype(pivot[k].dtype)
            p = pivot[k].to(dt)
            for i, e in enumerate(experts):
                taus[i] += float((e[k].to(dt) - p).double().pow(2).sum())
            upd += float((merged[k].to(dt) - p).double().pow(2).sum())
        w = diag.get("layers", {}).get(layer, {}).get("layer_weight")
        tau_s = " ".join(_fmt(math.sqrt(t)) for t in taus)
        lines.append(
            f"  {layer[-32:]:<32} {tau_s[:34]:<34} {_fmt(math.sqrt(upd)):>14} {(_fmt(w) if w is not None else '-'):>7}"
        )
    if len(layers) > len(shown):
        lines.append(f"  ... {len(layers) - len(shown)} more layers")
    lines.append(f"  output : {out}" + ("  (provenance in its metadata: pivotmerge info)"
                                         if Path(out).suffix.lower() == ".safetensors" else
                                         "  (no provenance: only .safetensors files carry metadata)"))
    if diag_paths:
        lines.append(f"  diagnostics: {', '.join(str(p) for p in diag_paths)}")
    lines.append(f"  time   : load {t_load:.2f}s, merge {t_merge:.2f}s, total {t_total:.2f}s")
    print("\n".join(lines))
