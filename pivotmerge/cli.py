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
YAML's keys, values typed like YAML/Hydra overrides.
"""

from __future__ import annotations

import argparse
import importlib
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
SUBCOMMAND_MODULES: tuple[str, ...] = ("pivotmerge.interop.llava", "pivotmerge.data.clustering")  # register subcommands


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
        if name not in defaults:
            valid = ", ".join(sorted(defaults)) or "(none)"
            raise CLIError(f"unknown option {name!r} for merge method {method!r}; valid options: {valid}")
        try:
            value = OmegaConf.to_container(OmegaConf.from_dotlist([f"v={raw}"]))["v"]
        except Exception as e:
            raise CLIError(f"option {name}: cannot parse value {raw!r} ({e})") from e
        default = defaults[name]
        # an int where the YAML has a float is fine (lam=1); keep floats floats
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        out[name] = value
    return out


def _configure_merge(p: argparse.ArgumentParser) -> None:
    p.add_argument("method", metavar="METHOD", help="merge method = a config in conf/merge/ (e.g. ties, pivotmerge)")
    p.add_argument("--base", required=True, metavar="PIVOT", help="pivot projector state dict (.safetensors/.bin/.pt)")
    p.add_argument("--experts", required=True, nargs="+", metavar="EXPERT", help="two or more expert state dicts")
    p.add_argument("--out", required=True, metavar="MERGED", help="output file; format by extension")
    p.add_argument("--diagnostics", metavar="DIR", help="also write diagnostics.json and PNG plots into DIR")
    p.add_argument("options", nargs="*", metavar="option=value", help="method options, named as in the YAML")


def _fmt(x: float) -> str:
    return f"{x:.4g}"


@subcommand("merge", help="merge expert projector checkpoints into one", configure=_configure_merge, accepts_extra=True)
def run_merge(args: argparse.Namespace) -> int:
    from pivotmerge.io import load_state_dict, save_state_dict
    from pivotmerge.merging import validate_inputs
    from pivotmerge.merging.diagnostics import collect, write_diagnostics

    t0 = time.perf_counter()
    # option tokens may end up after --experts (nargs='+') or among the extras: move them over
    experts, tokens = [], list(args.options) + list(getattr(args, "extra", []))
    for e in args.experts:
        if _OPTION_RE.match(e) and not Path(e).exists():
            tokens.append(e)
        else:
            experts.append(e)
    fn, defaults = load_merge_config(args.method)
    options = {**defaults, **parse_options(tokens, defaults, args.method)}
    if len(experts) < 2:
        raise CLIError(f"merge needs at least two --experts, got {len(experts)}")
    out = Path(args.out)
    if out.suffix.lower() not in (".safetensors", ".bin", ".pt", ".pth", ".ckpt"):
        raise CLIError(f"--out {out}: unsupported extension; use .safetensors, .bin, .pt or .pth")
    pivot = load_state_dict(args.base)
    expert_sds = [load_state_dict(e) for e in experts]
    t_load = time.perf_counter() - t0
    validate_inputs(pivot, expert_sds, min_experts=2, method=args.method, labels=[args.base, *experts])
    diag: dict = {}
    t1 = time.perf_counter()
    merged = fn(pivot, expert_sds, **options, diagnostics=diag)
    t_merge = time.perf_counter() - t1
    save_state_dict(merged, out)
    diag_paths: list[Path] = []
    if args.diagnostics:
        collect(pivot, expert_sds, merged, diag)
        diag.setdefault("options", options)
        diag.update(cli=dict(method=args.method, base=str(args.base), experts=experts, out=str(out)))
        diag_paths = write_diagnostics(diag, args.diagnostics)
    _print_summary(args.method, options, pivot, expert_sds, merged, diag, out, diag_paths, t_load, t_merge,
                   time.perf_counter() - t0)
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
    lines.append(f"  output : {out}")
    if diag_paths:
        lines.append(f"  diagnostics: {', '.join(str(p) for p in diag_paths)}")
    lines.append(f"  time   : load {t_load:.2f}s, merge {t_merge:.2f}s, total {t_total:.2f}s")
    print("\n".join(lines))


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
