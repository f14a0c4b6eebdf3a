"""Stage 1 (data): each source's examples, split deterministically and saved as an HF dataset on disk."""
from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from hydra.utils import instantiate

from pivotmerge.artifacts import Artifact, ArtifactStore
from pivotmerge.data.sources.base import DataSource, Example
from pivotmerge.errors import ConfigError, DataError, PivotMergeError
from pivotmerge.pipeline.stage import Stage

SPLITS = ("train", "val", "test", "pool")


@dataclass
class SplitSizes:
    train: int
    val: int
    test: int
    pool: int = 0   # rows no expert trains on (the general pivot's data); 0: none


def build_source(source_cfg) -> DataSource:
    try:
        source = instantiate(source_cfg)
    except Exception as exc:  # hydra wraps import errors, bad kwargs and the adapter's own checks
        if isinstance(exc.__cause__, PivotMergeError):   # the adapter's own one-line message
            raise ConfigError(str(exc.__cause__)) from exc
        raise ConfigError(f"cannot build data source from {source_cfg.get('_target_')!r}: "
                          f"{str(exc).splitlines()[0]}") from exc
    if not isinstance(source, DataSource):
        raise ConfigError(f"{source_cfg.get('_target_')!r} is not a DataSource adapter")
    return source


def selected_sources(cfg) -> list[str]:
    names = list(cfg.scenario.sources)
    unknown = [n for n in names if n not in cfg.data.sources]
    if unknown:
        raise ConfigError(f"scenario.sources names {unknown}, which data={cfg.data.name} does not define; "
                          f"available: {sorted(cfg.data.sources)}")
    if not names:
        raise ConfigError("scenario.sources is empty: name at least one data source")
    return names


def stratified_split(examples: list[Example], sizes: SplitSizes, seed: int) -> dict[str, list[Example]]:
    """Shuffle within each label, interleave labels, then cut test, val, train and pool in that order.

    Test and val are therefore label-balanced, fixed by `seed` (the data seed, not the run seed), and
    disjoint from train; the pool (images no expert trains on) is disjoint from all three. A source with its
    own split (`Example.group`) keeps it instead: `source_split`.
    """
    if any(e.group is not None for e in examples):
        return source_split(examples, sizes)
    by_label: dict[str, list[Example]] = defaultdict(list)
    for example in examples:
        by_label[example.label].append(example)
    rng = random.Random(seed)
    queues = []
    for label in sorted(by_label):
        group = by_label[label]
        rng.shuffle(group)
        queues.append(group)
    interleaved = [q[i] for i in range(max(len(q) for q in queues)) for q in queues if i < len(q)]
    need = sizes.test + sizes.val + 1
    if len(interleaved) < need:
        raise DataError(f"source has {len(interleaved)} examples, fewer than test+val+1 = {need}: lower "
                        "data.split sizes or give the source more examples")
    test = interleaved[:sizes.test]
    return {"test": test, **_train_val_pool(interleaved[sizes.test:], sizes)}


def _train_val_pool(rest: list[Example], sizes: SplitSizes) -> dict[str, list[Example]]:
    train_end = sizes.val + sizes.train
    return {"val": rest[:sizes.val], "train": rest[sizes.val:train_end],
            "pool": rest[train_end:train_end + sizes.pool]}


def source_split(examples: list[Example], sizes: SplitSizes) -> dict[str, list[Example]]:
    """The source's own split, in the source's order and independent of the labels: test from its test
    group, val / train / pool from the rest. Caption views of one image set (easy-VQA's shape and colour)
    therefore get exactly the same images in every split."""
    test = [e for e in examples if e.group == "test"][:sizes.test]
    rest = [e for e in examples if e.group != "test"]
    if len(test) < sizes.test or len(rest) < sizes.val + 1:
        raise DataError(f"source has {len(test)} test and {len(rest)} other examples, fewer than data.split.test="
                        f"{sizes.test} and val+1={sizes.val + 1}: lower data.split sizes")
    return {"test": test, **_train_val_pool(rest, sizes)}


# Source options that shape only the caption text, never the images: kept out of the data (and so the
# feature) cache key, so that a caption change retrains without rebuilding images and features. What reads
# captions keys on them instead (`text_spec`: pivot, experts, joint, the benchmark suite).
CAPTION_KEYS = ("caption_templates",)


def data_spec(name: str, source_cfg, split_cfg) -> dict:
    source = {k: v for k, v in source_cfg.items() if k not in CAPTION_KEYS}
    return {"name": name, "source": source, "split": split_cfg}


def instructions(cfg) -> list[str]:
    """`data.instructions`: the user turns that ask for the caption in training (one drawn per sample) and,
    the first one, in calibration and the benchmark suite."""
    value = cfg.data.get("instructions")
    if value is None or isinstance(value, str) or not len(value):
        raise ConfigError(f"data.instructions must be a non-empty list of strings (\"\" for none), got {value!r}")
    return [str(v) for v in value]


def text_spec(ctx, names) -> dict:
    """The text side of training: caption templates of `names` and the instructions. Part of the cache key
    of everything trained or scored on captions."""
    return {"captions": {name: list(ctx.sources[name].caption_templates) for name in names},
            "instructions": instructions(ctx.cfg)}


def run_data_stage(store: ArtifactStore, name: str, source_cfg, split_cfg) -> Artifact:
    """Build (or reuse) the HF DatasetDict of one source: columns image, label, source, index."""
    from datasets import Dataset, DatasetDict, Features, Value
    from datasets import Image as ImageFeature

    spec = data_spec(name, source_cfg, split_cfg)

    def build(staging: Path) -> None:
        source = build_source(source_cfg)
        sizes = SplitSizes(int(split_cfg.train), int(split_cfg.val), int(split_cfg.test), int(split_cfg.pool))
        splits = stratified_split(source.examples(), sizes, int(split_cfg.seed))
        features = Features({"image": ImageFeature(), "label": Value("string"), "source": Value("string"),
                             "index": Value("int32"), "key": Value("string")})
        dataset = DatasetDict({
            split: Dataset.from_dict({"image": [e.image for e in rows], "label": [e.label for e in rows],
                                      "source": [name] * len(rows), "index": list(range(len(rows))),
                                      "key": [e.key for e in rows]},
                                     features=features)
            for split, rows in splits.items() if rows})   # an empty pool is no split (HF cannot reload one)
        dataset.save_to_disk(str(staging / "dataset"))

    return store.entry("data", spec, build)


def load_dataset_dict(folder: Path):
    from datasets import load_from_disk

    try:
        return load_from_disk(str(Path(folder) / "dataset"))
    except Exception as exc:
        raise DataError(f"cannot read the dataset in {folder}: {exc}; delete that folder to rebuild it") from exc


def run(ctx) -> None:
    """Each selected source's dataset (built once, then reused from the cache)."""
    for name in selected_sources(ctx.cfg):
        source_cfg = ctx.cfg.data.sources[name]
        ctx.source_cfgs[name] = source_cfg
        ctx.sources[name] = build_source(source_cfg)
        ctx.data[name] = ctx.produce("data", name, run_data_stage, ctx.store, name, source_cfg, ctx.cfg.data.split)


STAGE = Stage("data", run, produces={"sources": dict, "source_cfgs": dict, "data": dict}, all_ranks=True)
