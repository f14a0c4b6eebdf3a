"""``pivotmerge info FILE``: a projector file's tensors and the provenance ``pivotmerge merge`` wrote into it."""
from __future__ import annotations

import argparse
import json

from pivotmerge.cli import CLIError, subcommand


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
