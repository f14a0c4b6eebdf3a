"""``pivotmerge stats``: the calibration statistics of one expert's domain, for data-aware merges (``--stats``).

From a features file (a features cache entry's ``train.safetensors``) or a folder of images encoded with the
vision tower of ``--model-config``; optionally the diagonal Fisher of the caption loss (Fisher merging).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from pivotmerge.cli import CLIError, subcommand
from pivotmerge.errors import ConfigError


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
    p.add_argument("--data-config", default="embedded", metavar="NAME",
                   help="conf/data/NAME.yaml: its first instruction prompts the --fisher captions (default embedded)")
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
    from pivotmerge.config import model_config

    try:
        return model_config(name)
    except ConfigError as e:
        raise CLIError(f"--model-config {name}: {e}") from e


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
    from pivotmerge.config import compose
    from pivotmerge.models.mllm import build_mllm
    from pivotmerge.pipeline.calibration import diagonal_fisher
    from pivotmerge.pipeline.data import instructions

    try:
        captions = json.loads(Path(args.fisher).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CLIError(f"--fisher {args.fisher}: not a readable JSON list of captions ({e})") from e
    if not isinstance(captions, list) or len(captions) < min(args.fisher_rows, features.shape[0]):
        raise CLIError(f"--fisher {args.fisher}: need a list with a caption for each of the first "
                       f"{min(args.fisher_rows, features.shape[0])} rows")
    try:   # the instruction the experts were aligned with (data.instructions[0], inherited defaults included)
        instruction = instructions(compose([f"data={args.data_config}"]))[0]
    except ConfigError as e:
        raise CLIError(f"--data-config {args.data_config}: {e}") from e
    mllm = build_mllm(model_cfg, Path(".cache/models"))
    n = min(args.fisher_rows, features.shape[0])
    rows = features[:n] if features.ndim == 3 else features[:n].unsqueeze(1)
    texts = [mllm.encode_text(instruction, str(c)) for c in captions[:n]]
    return diagonal_fisher(mllm, state, rows, texts)
