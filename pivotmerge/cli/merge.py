"""The ``pivotmerge`` command (also ``python -m pivotmerge``).

Subcommands are registered with the :func:`subcommand` decorator: a function ``run(args) -> int`` plus a
``configure(parser)`` hook that adds its arguments. To add one, write both functions (here or in a
module listed in ``SUBCOMMAND_MODULES``) and decorate ``run``::

    def _configure_eval(p): p.add_argument(...)

    @subcommand("eval", help="...", configure=_configure_eval)
    def _run_eval(args) -> int: ...

Every deliberate error (:class:`pivotmerge.errors.PivotMergeError`) is printed as one line on stderr
with exit code 2, without a traceback.

``pivotmerge merge METHOD --base PIVOT --experts A B [C ...] --out MERGED [option=value ...]``
merges projector checkpoints (safetensors or torch ``.bin``/``.pt``) with a method configured in
``conf/merge/METHOD.yaml`` (the merge registry, :mod:`pivotmerge.merging.registry`); options are that
YAML's keys, values typed like YAML/Hydra overrides. Data-aware methods (RegMean, Fisher, ...) read each
expert's calibration statistics from ``--stats A.st B.st ...`` (written by ``pivotmerge stats``).
``pivotmerge merge --config merge.yaml`` reads the same from a file (method, base, experts with optional
per-expert weights, options, out; see docs/merge_cli.md); flags given next to it override the file.
A safetensors output carries its provenance (method, options, input hashes, version) in its metadata:
``pivotmerge info MERGED`` prints it. An existing output is only replaced with ``--force``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pivotmerge.errors import ConfigError, PivotMergeError

PROG = "pivotmerge"
SUBCOMMAND_MODULES: tuple[str, ...] = ("pivotmerge.interop.llava", "pivotmerge.data.clustering",
                                       "eval.suite")  # register subcommands


@dataclass
class Subcommand:
    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    accepts_extra: bool = False  # pass unparsed trailing tokens as args.extra


SUBCOMMANDS: dict[str, Subcommand] = {}


def subcommand(
    name: str,
    *,
    help: str,  # noqa: A002
    configure: Callable[[argparse.ArgumentParser], None],
    accepts_extra: bool = False,
) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    """Register ``run`` as subcommand ``name``."""

    def deco(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        SUBCOMMANDS[name] = Subcommand(name, help, configure, run, accepts_extra)
        return run

    return deco


class CLIError(ConfigError):
    """Bad command-line usage detected after argument parsing."""


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
    return MergeRequest(method, base, experts, weights, options, out, diagnostics), fn


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


def _calibration_for(fn, method: str, stats_files, n_experts: int) -> dict:
    """{"calibration": [ExpertStats, ...]} for a data-aware method, {} otherwise."""
    from pivotmerge.merging import accepted_extras
    from pivotmerge.merging.calibration import load_stats

    if "calibration" not in accepted_extras(fn):
        if stats_files:
            raise CLIError(f"merge method {method!r} is data-free: it takes no --stats")
        return {}
    if not stats_files:
        raise CLIError(f"merge method {method!r} is data-aware: pass --stats with one file per expert, written by "
                       "`pivotmerge stats --projector EXPERT --features F | --images DIR ...`")
    if len(stats_files) != n_experts:
        raise CLIError(f"--stats has {len(stats_files)} files for {n_experts} experts (one per expert, same order)")
    return {"calibration": [load_stats(path) for path in stats_files]}


def _fmt(x: float) -> str:
    return f"{x:.4g}"


@subcommand("merge", help="merge expert projector checkpoints into one", configure=_configure_merge, accepts_extra=True)
def run_merge(args: argparse.Namespace) -> int:
    from pivotmerge.io import load_state_dict, save_state_dict
    from pivotmerge.merging import validate_inputs
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
    calibration = _calibration_for(fn, request.method, args.stats, len(request.experts))
    pivot = load_state_dict(request.base)
    expert_sds = [load_state_dict(e) for e in request.experts]
    t_load = time.perf_counter() - t0
    labels = [str(request.base), *map(str, request.experts)]
    validate_inputs(pivot, expert_sds, min_experts=2, method=request.method, labels=labels)
    expert_sds = weighted_experts(pivot, expert_sds, request.weights)
    diag: dict = {}
    t1 = time.perf_counter()
    merged = fn(pivot, expert_sds, **request.options, diagnostics=diag, **calibration)
    t_merge = time.perf_counter() - t1
    save_state_dict(merged, out, metadata=provenance(request))
    diag_paths: list[Path] = []
    if request.diagnostics:
        collect(pivot, expert_sds, merged, diag)
        diag.setdefault("options", request.options)
        diag.update(cli=dict(method=request.method, base=str(request.base), experts=labels[1:],
                             weights=request.weights, out=str(out)))
        diag_paths = write_diagnostics(diag, request.diagnostics)
    _print_summary(request.method, request.options, pivot, expert_sds, merged, diag, out, diag_paths, t_load,
                   t_merge, time.perf_counter() - t0)
    return 0


def _print_summary(method, options, pivot, experts, merged, diag, out, diag_paths, t_load, t_merge, t_total) -> None:
    from pivotmerge.merging import compute_dtype, float_keys, group_layers

    n_params = sum(v.numel() for v in pivot.values())
    lines = [
        f"pivotmerge merge: {method}",
        "  options: " + (", ".join(f"{k}={v}" for k, v in options.items()) or "(none)"),
        f"  inputs : pivot + {len(experts)} experts, {len(pivot)} tensors, {n_params:,} values, "
        f"dtype {next(iter(pivot.values())).dtype}",
    ]
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


# ------------------------------------------------------------------------------------------- stats
def _configure_stats(p: argparse.ArgumentParser) -> None:
    p.add_argument("--projector", required=True, metavar="EXPERT", help="the expert's projector state dict")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--features", metavar="FILE", help="visual features of the expert's domain: a "
                        "safetensors file with a tensor 'features' [N, T, D] or [rows, D] (e.g. a features cache "
                        "entry's train.safetensors)")
    source.add_argument("--images", metavar="DIR", help="a folder of the expert's domain images, encoded with the "
                        "vision tower of --model-config")
    p.add_argument("--model-config", default="embedded", metavar="NAME",
                   help="conf/model/NAME.yaml: the vision tower for --images, the LLM for --fisher (default embedded)")
    p.add_argument("--out", required=True, metavar="STATS", help="output file (.safetensors)")
    p.add_argument("--rows", type=int, default=None, help="use the first ROWS feature rows / images")
    p.add_argument("--sample-tokens", type=int, default=4096, help="visual tokens kept for methods that run the "
                   "projector (RegMean++, learned coefficients)")
    p.add_argument("--fisher", metavar="CAPTIONS", help="also the diagonal Fisher of the caption loss (Fisher "
                   "merging): a JSON list of captions, one per feature row / sorted image file")
    p.add_argument("--fisher-rows", type=int, default=64, help="rows for the Fisher (default 64)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")


@subcommand("stats", help="calibration statistics of one expert's domain, for data-aware merges (--stats)",
            configure=_configure_stats)
def run_stats(args: argparse.Namespace) -> int:
    from pivotmerge.io import load_state_dict
    from pivotmerge.merging.calibration import compute_stats, save_stats

    out = Path(args.out)
    if out.exists() and not args.force:
        raise CLIError(f"--out {out} exists; pass --force to replace it")
    state = load_state_dict(args.projector)
    model_cfg = _model_config(args.model_config)
    features, names = _stats_features(args, model_cfg)
    stats = compute_stats({k: v.float() for k, v in state.items() if v.is_floating_point()}, features,
                          sample_tokens=args.sample_tokens,
                          meta={"projector": str(args.projector), "features": str(args.features or args.images),
                                "rows": int(features.shape[0])})
    if args.fisher:
        stats.fisher = _cli_fisher(args, model_cfg, state, features, names)
    save_stats(stats, out)
    layers = ", ".join(f"{layer or 'linear'}: {tuple(g.shape)}" for layer, g in stats.grams.items())
    print(f"pivotmerge stats: {features.shape[0]} rows, {stats.counts[next(iter(stats.counts))]} tokens; Grams {layers}"
          f"; {0 if stats.inputs is None else stats.inputs.shape[0]} sampled tokens"
          f"{'; Fisher' if stats.fisher else ''} -> {out}")
    return 0


def _model_config(name: str):
    from omegaconf import OmegaConf

    path = Path(__file__).resolve().parents[1] / "conf" / "model" / f"{name}.yaml"
    if not path.is_file():
        raise CLIError(f"--model-config {name}: no conf/model/{name}.yaml")
    return OmegaConf.load(path)


def _stats_features(args, model_cfg):
    """(features [rows, T, D] or [rows, D], image names or None)."""
    import torch

    if args.features:
        from safetensors.torch import load_file

        try:
            tensors = load_file(args.features)
        except Exception as e:
            raise CLIError(f"--features {args.features}: cannot read ({type(e).__name__}: {e})") from e
        if "features" not in tensors:
            raise CLIError(f"--features {args.features}: no tensor named 'features' (it has {sorted(tensors)})")
        features = tensors["features"].float()
        return (features if args.rows is None else features[:args.rows]), None
    from PIL import Image

    from pivotmerge.models.vision import build_vision_tower

    folder = Path(args.images)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp", ".bmp"))
    files = files if args.rows is None else files[:args.rows]
    if not files:
        raise CLIError(f"--images {folder}: no .png/.jpg/.jpeg/.webp/.bmp files")
    tower = build_vision_tower(model_cfg.vision)
    chunks = [tower.encode_images([Image.open(p) for p in files[i:i + 16]]) for i in range(0, len(files), 16)]
    return torch.cat(chunks), [p.name for p in files]


def _cli_fisher(args, model_cfg, state, features, names):
    from pivotmerge.models.mllm import build_mllm
    from pivotmerge.pipeline.calibration import diagonal_fisher
    from pivotmerge.training import DEFAULT_INSTRUCTIONS

    try:
        captions = json.loads(Path(args.fisher).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CLIError(f"--fisher {args.fisher}: not a readable JSON list of captions ({e})") from e
    if not isinstance(captions, list) or len(captions) < min(args.fisher_rows, features.shape[0]):
        raise CLIError(f"--fisher {args.fisher}: need a list with a caption for each of the first "
                       f"{min(args.fisher_rows, features.shape[0])} rows")
    mllm = build_mllm(model_cfg, Path(".cache/models"))
    n = min(args.fisher_rows, features.shape[0])
    rows = features[:n] if features.ndim == 3 else features[:n].unsqueeze(1)
    texts = [mllm.encode_text(DEFAULT_INSTRUCTIONS[0], str(c)) for c in captions[:n]]
    return diagonal_fisher(mllm, state, rows, texts)


# ------------------------------------------------------------------------------------------- info
def provenance_lines(metadata: dict[str, str]) -> list[str]:
    """The provenance that `merge` writes, one fact per line."""
    if "pivotmerge.method" not in metadata:
        return ["provenance: none recorded" + ("" if metadata else " (no metadata in this file)")]
    lines = ["provenance:", f"  method : {metadata['pivotmerge.method']}"]
    try:
        options = json.loads(metadata.get("pivotmerge.options", "{}"))
        inputs = json.loads(metadata.get("pivotmerge.inputs", "{}"))
    except json.JSONDecodeError as e:
        raise CLIError(f"the file's pivotmerge metadata is not valid JSON ({e})") from e
    lines.append("  options: " + (", ".join(f"{k}={v}" for k, v in options.items()) or "(none)"))
    base = inputs.get("base") or {}
    lines.append(f"  base   : {base.get('path')}  sha256 {base.get('sha256')}")
    for expert in inputs.get("experts", []):
        weight = expert.get("weight", 1.0)
        lines.append(f"  expert : {expert.get('path')}  sha256 {expert.get('sha256')}" +
                     (f"  weight {weight:g}" if weight != 1.0 else ""))
    lines.append(f"  made by: {metadata.get('pivotmerge.version', 'unknown')}")
    return lines


def _configure_info(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="a projector state dict (.safetensors/.bin/.pt)")


@subcommand("info", help="print a projector file's tensors and provenance (what merged it, from what)",
            configure=_configure_info)
def run_info(args: argparse.Namespace) -> int:
    from pivotmerge.io import load_state_dict, read_metadata

    state = load_state_dict(args.file)
    metadata = read_metadata(args.file)
    dtypes = sorted({str(v.dtype).replace("torch.", "") for v in state.values()})
    lines = [f"{args.file}: {len(state)} tensors, {sum(v.numel() for v in state.values()):,} values, "
             f"dtype {', '.join(dtypes)}"]
    lines += [f"  {k:<40} {tuple(v.shape)}" for k, v in list(state.items())[:16]]
    if len(state) > 16:
        lines.append(f"  ... {len(state) - 16} more tensors")
    lines += provenance_lines(metadata)
    other = {k: v for k, v in metadata.items() if not k.startswith("pivotmerge.") and k != "format"}
    if other:
        lines.append("other metadata: " + ", ".join(f"{k}={v}" for k, v in other.items()))
    print("\n".join(lines))
    return 0


# ------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    broken = []
    for mod in SUBCOMMAND_MODULES:
        try:
            importlib.import_module(mod)
        except ImportError as e:  # a broken optional module must not take `merge` down with it
            broken.append(f"{mod} ({e})")
    epilog = ("subcommands unavailable: " + "; ".join(broken)) if broken else None
    parser = argparse.ArgumentParser(prog=PROG, description="PivotMerge: merge cross-modal projector experts.",
                                     epilog=epilog)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for sc in SUBCOMMANDS.values():
        sc.configure(sub.add_parser(sc.name, help=sc.help, description=sc.help))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    sc = SUBCOMMANDS[args.command]
    if extra and not sc.accepts_extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    try:
        return int(sc.run(args) or 0)
    except PivotMergeError as e:
        print(f"{PROG} {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
