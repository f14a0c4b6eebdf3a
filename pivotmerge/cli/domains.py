"""``pivotmerge split-domains``: a captioned corpus (webdataset shards or a LLaVA JSON) -> K domains by
clustering caption embeddings (pivotmerge/data/clustering.py)."""
from __future__ import annotations

import argparse
import time

from pivotmerge.cli import CLIError, subcommand
from pivotmerge.data.clustering import MiniLMEmbedder, split_domains, tfidf_embedder, write_split


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("format", choices=["webdataset", "llava-json"], help="corpus format")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="webdataset: shard paths/globs/brace patterns (quote them); llava-json: the JSON file")
    p.add_argument("--k", type=int, default=4, help="number of domains (default 4)")
    p.add_argument("--seed", type=int, default=0, help="k-means seed (default 0)")
    p.add_argument("--out", required=True, metavar="DIR", help="writes DIR/domains.json, report.json, report.md")
    p.add_argument("--max-samples", type=int, default=None,
                   help="cluster only the first N captions (the domain lists then cover those N)")
    p.add_argument("--embedder", choices=["minilm", "tfidf"], default="minilm",
                   help="minilm: all-MiniLM-L6-v2 sentence embeddings (default); tfidf: sparse word vectors")
    p.add_argument("--device", default=None, help="MiniLM device (default: cuda if available, else cpu)")
    p.add_argument("--batch-size", type=int, default=256, help="MiniLM batch size")


def _records(args):
    if args.format == "webdataset":
        from pivotmerge.data.sources.webdataset import WebDatasetSource

        return WebDatasetSource("split-domains", args.inputs).iter_captions()
    from pivotmerge.data.sources.llava_json import LlavaJsonSource

    if len(args.inputs) != 1:
        raise CLIError("llava-json takes exactly one JSON file")
    return LlavaJsonSource("split-domains", args.inputs[0], image_folder=".").iter_captions()


@subcommand("split-domains", help="split a captioned corpus into K domains by clustering caption embeddings",
            configure=_configure)
def run_split_domains(args: argparse.Namespace) -> int:
    started = time.perf_counter()

    def embed(texts):  # MiniLM loads only once the records are read: input errors surface first
        if args.embedder == "tfidf":
            return tfidf_embedder(texts)
        return MiniLMEmbedder(device=args.device, batch_size=args.batch_size)(texts)

    split = split_domains(_records(args), args.k, args.seed, embed_fn=embed, max_samples=args.max_samples,
                          embedder_name="all-MiniLM-L6-v2" if args.embedder == "minilm" else "tfidf")
    paths = write_split(split, args.out)
    print(f"pivotmerge split-domains: {split.report['samples']} captions -> {args.k} domains "
          f"in {time.perf_counter() - started:.1f}s")
    for name, info in split.report["domains"].items():
        print(f"  {name}: {info['size']:>8} ({info['share']:.1%})  {', '.join(info['top_words'][:6])}")
    print("  wrote " + ", ".join(str(p) for p in paths))
    return 0
