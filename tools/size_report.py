"""Files over ~400 lines and functions over ~60 lines in the library code (the issue's size limits).

    python tools/size_report.py [--files 400] [--functions 60]

Scans pivotmerge/, baselines/, eval/, experiments/ and tools/ (tests, bench/ and generated files are exempt)
and prints each offender; the exit code is 1 when there is any.
"""
from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("pivotmerge", "baselines", "eval", "experiments", "tools")


def offenders(max_file: int, max_function: int) -> list[str]:
    out = []
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            text = path.read_text()
            name = path.relative_to(ROOT)
            lines = text.count("\n")
            if lines > max_file:
                out.append(f"{name}: {lines} lines")
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    length = node.end_lineno - node.lineno + 1
                    if length > max_function:
                        out.append(f"{name}:{node.lineno} {node.name}(): {length} lines")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=400)
    parser.add_argument("--functions", type=int, default=60)
    args = parser.parse_args(argv)
    found = offenders(args.files, args.functions)
    print("\n".join(found) if found else "no file or function over the limits")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
