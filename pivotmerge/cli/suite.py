"""``pivotmerge suite [--print-path] [run.py overrides]``: build or reuse the embedded benchmark suite of a run
config and print its folder (for ``lmms-eval --include_path``) with its tasks."""
from __future__ import annotations

import argparse
import contextlib
import sys

from pivotmerge.cli import subcommand


def _configure_suite(p: argparse.ArgumentParser) -> None:
    p.add_argument("--print-path", action="store_true", help="print only the folder (for $(...) in a shell)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="run.py overrides that choose the suite (experiment=..., data=..., eval.suite.*)")


@subcommand("suite", help="build or reuse the embedded benchmark suite and print its folder "
                          "(for lmms-eval --include_path)", configure=_configure_suite)
def run_suite(args: argparse.Namespace) -> int:
    from eval.suite import suite_for_config
    from pivotmerge.config import compose

    with contextlib.redirect_stdout(sys.stderr):   # stdout holds the path alone
        suite = suite_for_config(compose(args.overrides))
    if args.print_path:
        print(suite.folder)
        return 0
    print(f"suite folder: {suite.folder}")
    for name, meta in suite.tasks.items():
        print(f"  {name:<20} {meta['kind']:<6} {meta['items']:>5} items  primary metric {meta['primary']}")
    print(f"lmms-eval --model pivotmerge --model_args projector=<file>,model_config=embedded "
          f"--tasks {','.join(suite.tasks)} --include_path {suite.folder}")
    return 0
