"""The ``pivotmerge`` command (also ``python -m pivotmerge``): one module per subcommand group.

  merge      pivotmerge/cli/merge.py    merge projector checkpoints (flags or a merge file)
  stats      pivotmerge/cli/stats.py    calibration statistics of one expert's domain (data-aware merges)
  info       pivotmerge/cli/info.py     a projector file's tensors and provenance
  export-llava, import-llava   pivotmerge/cli/llava.py   LLaVA's mm_projector.bin, both ways
  split-domains   pivotmerge/cli/domains.py   a captioned corpus -> K domains
  suite      pivotmerge/cli/suite.py    the embedded benchmark suite's folder (lmms-eval --include_path)

A subcommand is a function ``run(args) -> int`` registered with :func:`subcommand` together with a
``configure(parser)`` hook that adds its arguments; its module goes into ``SUBCOMMAND_MODULES``. The modules
only parse arguments and print: the work is done by library functions (which never import this package).
Every deliberate error (:class:`pivotmerge.errors.PivotMergeError`) is printed as one line on stderr with exit
code 2, without a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pivotmerge.errors import ConfigError, PivotMergeError

PROG = "pivotmerge"
SUBCOMMAND_MODULES: tuple[str, ...] = ("pivotmerge.cli.merge", "pivotmerge.cli.stats", "pivotmerge.cli.info",
                                       "pivotmerge.cli.llava", "pivotmerge.cli.domains", "pivotmerge.cli.suite")


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
