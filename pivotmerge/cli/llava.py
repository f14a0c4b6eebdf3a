"""``pivotmerge export-llava`` / ``import-llava``: a projector as LLaVA's mm_projector.bin and back
(pivotmerge/interop/llava.py does the conversion)."""
from __future__ import annotations

import argparse

import torch

from pivotmerge.cli import subcommand
from pivotmerge.interop.llava import DTYPES, export_llava, import_llava


def _describe(state: dict[str, torch.Tensor]) -> str:
    shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in state.items())
    dtype = next(iter(state.values())).dtype
    return f"{len(state)} tensors, {sum(v.numel() for v in state.values()):,} values, {dtype}: {shapes}"


def _configure_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", metavar="IN", help="projector state dict (pivot, expert or merged; .safetensors/.bin)")
    p.add_argument("output", metavar="OUT", help="LLaVA mm_projector.bin to write")
    p.add_argument("--dtype", default="keep", choices=["keep", *DTYPES],
                   help="cast floating tensors (LLaVA-1.5 trains in bfloat16); default: keep")


@subcommand("export-llava", help="export a projector as LLaVA's mm_projector.bin (pretrain_mm_mlp_adapter)",
            configure=_configure_export)
def run_export(args: argparse.Namespace) -> int:
    state = export_llava(args.input, args.output, args.dtype)
    print(f"pivotmerge export-llava: wrote {args.output} ({_describe(state)})")
    return 0


def _configure_import(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", metavar="IN",
                   help="LLaVA mm_projector.bin, a full LLaVA checkpoint file, or a checkpoint folder")
    p.add_argument("output", metavar="OUT", help="projector state dict to write (.safetensors or .bin)")
    p.add_argument("--dtype", default="keep", choices=["keep", *DTYPES], help="cast floating tensors")


@subcommand("import-llava", help="import a LLaVA projector (or full checkpoint) as a pivot/expert state dict",
            configure=_configure_import)
def run_import(args: argparse.Namespace) -> int:
    state = import_llava(args.input, args.output, args.dtype)
    print(f"pivotmerge import-llava: wrote {args.output} ({_describe(state)})")
    return 0
