"""The embedded benchmark suite: local lmms-eval tasks (parquet + YAML) built from the sources' TEST splits.

Deterministic: every task draws from its own `random.Random(f"{seed}:{task}")`, rows are taken in split
order, and the folder is cached as the artifact `eval_suite/<key>` whose key hashes the data artifacts'
keys (which include each source's config: caption templates, subject), the suite config and the code of
the task files. The folder is self-contained: `pm_*.yaml` + `pm_*.parquet` + the `_template_*` files and
`utils.py` copied from `eval/tasks/`, with data files given relative to the YAMLs, so it can be passed as
`include_path` to lmms-eval (our `TaskManager`, or `lmms-eval --include_path <folder>`). The eval stage
prints the folder; `pivotmerge suite --print-path [run.py overrides]` builds or reuses it without a run.

Benchmarks (names unique, prefixed `pm_`):
  pm_cls_<source>  k-way classification over ALL labels of the source: every label's caption (template 0) is a
                   choice, scored by loglikelihood; what an expert learned about its source, and what a merge
                   kept of it (chance = 1/k).
  pm_nll_<source>  held-out caption NLL: -log p(true caption | image) in nats per caption (lower is better).
  pm_mc_<source>   4-way multiple choice (MMBench/SEED style): the caption (template 0) of the true label
                   and of 3 distractor labels of the same source, scored by loglikelihood.
  pm_pope          yes/no object existence across all sources, balanced answers: "Is there <caption> in
                   the image?"; negatives name another label of the same source or one of another source.
  pm_mme           yes/no perception by category (= source), two questions per image (one yes, one no):
                   accuracy and accuracy+ per category, MME score (sum over categories of acc + acc+).
  pm_open_<source> open answer, exact match (TextVQA style), for the sources of `open_questions`.
  pm_cross_mc      4-way multiple choice whose options mix two sources' labels (2 + 2), items alternate
                   between the two sources' images: no single-source expert covers it alone.
"""
from __future__ import annotations

import hashlib
import json
import random
import shutil
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

from omegaconf import OmegaConf

from pivotmerge.cli import subcommand
from pivotmerge.errors import ConfigError, DataError

SUITE_VERSION = 1
TASKS_DIR = Path(__file__).resolve().parent / "tasks"
SUITE_FILE = "suite.json"
# The metric each benchmark kind shows in the paper table.
PRIMARY_METRIC = {"cls": "acc", "nll": "nll", "mc": "acc", "cross": "acc", "pope": "accuracy", "mme": "mme_score", "open": "exact_match"}
DEFAULTS = {
    "seed": 0,
    "items_per_task": 240,         # items per benchmark where the test split allows
    "nll_items_per_task": 64,      # pm_nll_*: a mean NLL is steady with fewer items
    "options": 4,                  # multiple-choice options
    "mme_images_per_category": 60, # MME: 2 questions per image -> 120 questions per category
    "instruction": "Describe the image briefly.",
    "pope_question": "Is there {caption} in the image? Answer yes or no.",
    "mme_question": "Is this {caption}? Please answer yes or no.",
    "open_questions": {"digits": "Which digit is this? Answer with one word.",
                       "words": "What word is written in the image? Answer with one word."},
    "cross_pairs": None,           # null: consecutive pairs of the sources ([s0, s1], [s2, s3], ...)
    "kinds": ["cls", "nll", "mc", "pope", "mme", "open", "cross"],
}


@dataclass
class SuiteSource:
    """What the suite needs from one source: its test images (encoded bytes) and labels."""

    name: str
    caption_templates: list[str]
    images: list[dict]         # {"bytes": ..., "path": ...} as stored by the HF Image feature
    labels: list[str]          # test label of each image
    extra_labels: list[str] = field(default_factory=list)   # vocabulary beyond the test labels

    def caption(self, label: str) -> str:
        return self.caption_templates[0].format(label=label)

    @property
    def vocabulary(self) -> list[str]:
        return sorted(set(self.labels) | set(self.extra_labels))


@dataclass
class Suite:
    folder: Path
    key: str
    tasks: dict[str, dict]     # name -> {"kind", "primary", "sources", "items"}

    def select(self, names=None) -> list[str]:
        """Task names matching `names` (exact names or fnmatch patterns); unknown names are a ConfigError."""
        if names is None:
            return list(self.tasks)
        if isinstance(names, str):
            names = [names]
        selected = []
        for name in names:
            matches = [t for t in self.tasks if fnmatch(t, str(name))]
            if not matches:
                raise ConfigError(f"eval.tasks names benchmark {name!r}, which the embedded suite does not have; "
                                  f"available: {', '.join(self.tasks)}")
            selected += [m for m in matches if m not in selected]
        return selected


def suite_options(cfg_suite) -> dict:
    given = OmegaConf.to_container(cfg_suite, resolve=True) if cfg_suite is not None and not isinstance(
        cfg_suite, dict) else dict(cfg_suite or {})
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown eval.suite option(s) {unknown}; known: {sorted(DEFAULTS)}")
    options = {**DEFAULTS, **{k: v for k, v in given.items() if v is not None or k == "cross_pairs"}}
    bad_kinds = sorted(set(options["kinds"]) - set(PRIMARY_METRIC))
    if bad_kinds:
        raise ConfigError(f"eval.suite.kinds has {bad_kinds}; known kinds: {sorted(PRIMARY_METRIC)}")
    if int(options["options"]) < 2:
        raise ConfigError("eval.suite.options must be at least 2")
    return options


def code_fingerprint() -> str:
    digest = hashlib.sha256(f"suite-v{SUITE_VERSION}".encode())
    for path in sorted(TASKS_DIR.iterdir()):
        if path.is_file() and (path.name == "utils.py" or path.name.startswith("_template_")):
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def planned_task_names(options: dict, sources: list[str]) -> list[str]:
    """The task names `build_documents` makes for these sources (no data needed: the preflight's check)."""
    kinds = list(options["kinds"])
    names = []
    if "cls" in kinds:
        names += [f"pm_cls_{s}" for s in sources]
    if "nll" in kinds:
        names += [f"pm_nll_{s}" for s in sources]
    if "mc" in kinds:
        names += [f"pm_mc_{s}" for s in sources]
    if "pope" in kinds:
        names.append("pm_pope")
    if "mme" in kinds:
        names.append("pm_mme")
    if "open" in kinds:
        names += [f"pm_open_{s}" for s in (options["open_questions"] or {}) if s in sources]
    if "cross" in kinds and len(sources) >= 2:
        names.append("pm_cross_mc")
    return names


# ---- document construction (pure: sources + options -> rows per task) -------------------------------
def _row(source: SuiteSource, index: int, question: str, choices: list[str], answer: int, *, answer_text: str = "",
         category: str = "") -> dict:
    return {"image": source.images[index], "question": question, "choices": list(choices), "answer": int(answer),
            "answer_text": answer_text or choices[answer] if choices else answer_text,
            "source": source.name, "label": source.labels[index], "category": category or source.name,
            "image_id": f"{source.name}:{index}"}


def _mc_options(rng: random.Random, truth: str, pool: list[str], n: int) -> list[str]:
    others = [label for label in pool if label != truth]
    return rng.sample(others, min(n, len(others)))


def build_documents(sources: list[SuiteSource], options: dict) -> dict[str, tuple[str, list[dict]]]:
    """task name -> (kind, rows). Deterministic given the sources and options."""
    seed, items, n_options = int(options["seed"]), int(options["items_per_task"]), int(options["options"])
    kinds = list(options["kinds"])
    by_name = {s.name: s for s in sources}
    tasks: dict[str, tuple[str, list[dict]]] = {}

    def rng_for(task: str) -> random.Random:
        return random.Random(f"{seed}:{task}")

    if "cls" in kinds:
        for source in sources:
            vocab = source.vocabulary
            if len(vocab) < 2:
                raise DataError(f"source {source.name!r} has fewer than 2 labels: no classification possible")
            captions = [source.caption(label) for label in vocab]
            rows = [_row(source, index, options["instruction"], captions, vocab.index(source.labels[index]))
                    for index in range(min(items, len(source.images)))]
            tasks[f"pm_cls_{source.name}"] = ("cls", rows)

    if "nll" in kinds:
        for source in sources:
            n = min(int(options["nll_items_per_task"]), len(source.images))
            rows = [_row(source, i, options["instruction"], [], 0, answer_text=source.caption(source.labels[i]))
                    for i in range(n)]
            tasks[f"pm_nll_{source.name}"] = ("nll", rows)

    if "mc" in kinds:
        for source in sources:
            name = f"pm_mc_{source.name}"
            rng, rows = rng_for(name), []
            vocab = source.vocabulary
            if len(vocab) < 2:
                raise DataError(f"source {source.name!r} has fewer than 2 labels: no multiple choice possible")
            for index in range(min(items, len(source.images))):
                truth = source.labels[index]
                labels = [truth] + _mc_options(rng, truth, vocab, n_options - 1)
                rng.shuffle(labels)
                rows.append(_row(source, index, options["instruction"], [source.caption(l) for l in labels],
                                 labels.index(truth)))
            tasks[name] = ("mc", rows)

    if "pope" in kinds:
        name = "pm_pope"
        rng, rows = rng_for(name), []
        per_source = max(1, items // len(sources))
        picks = [(s, i) for s in sources for i in range(min(per_source, len(s.images)))]
        answers = [True, False] * (len(picks) // 2) + [True] * (len(picks) % 2)
        rng.shuffle(answers)
        for (source, index), is_yes in zip(picks, answers):
            truth = source.labels[index]
            if is_yes:
                caption = source.caption(truth)
            else:
                other_sources = [s for s in sources if s is not source]
                same = [l for l in source.vocabulary if l != truth]
                if other_sources and (not same or rng.random() < 0.5):
                    other = rng.choice(other_sources)
                    caption = other.caption(rng.choice(other.vocabulary))
                else:
                    caption = source.caption(rng.choice(same))
            question = options["pope_question"].format(caption=caption)
            rows.append(_row(source, index, question, ["yes", "no"], 0 if is_yes else 1))
        tasks[name] = ("pope", rows)

    if "mme" in kinds:
        name = "pm_mme"
        rng, rows = rng_for(name), []
        for source in sources:
            for index in range(min(int(options["mme_images_per_category"]), len(source.images))):
                truth = source.labels[index]
                wrong = _mc_options(rng, truth, source.vocabulary, 1)
                if not wrong:
                    raise DataError(f"source {source.name!r} has one label only: no MME negative question")
                for caption, answer in ((source.caption(truth), 0), (source.caption(wrong[0]), 1)):
                    rows.append(_row(source, index, options["mme_question"].format(caption=caption), ["yes", "no"],
                                     answer))
        tasks[name] = ("mme", rows)

    if "open" in kinds:
        for source_name, question in (options["open_questions"] or {}).items():
            if source_name not in by_name:
                continue
            source = by_name[source_name]
            rows = [_row(source, i, question, [], 0, answer_text=source.labels[i])
                    for i in range(min(items, len(source.images)))]
            tasks[f"pm_open_{source_name}"] = ("open", rows)

    if "cross" in kinds and len(sources) >= 2:
        pairs = options["cross_pairs"]
        if pairs is None:
            names = [s.name for s in sources]
            pairs = [names[i:i + 2] for i in range(0, len(names) - 1, 2)]
        for pair in pairs:
            missing = [p for p in pair if p not in by_name]
            if len(pair) != 2 or missing:
                raise ConfigError(f"eval.suite.cross_pairs entry {pair} must name two of the sources "
                                  f"{sorted(by_name)}")
        name = "pm_cross_mc"
        rng, rows = rng_for(name), []
        per_side = max(1, items // (2 * len(pairs)))
        half = n_options // 2
        for a_name, b_name in pairs:
            a, b = by_name[a_name], by_name[b_name]
            for index in range(per_side):
                for own, other in ((a, b), (b, a)):
                    if index >= len(own.images):
                        continue
                    truth = own.labels[index]
                    own_labels = [truth] + _mc_options(rng, truth, own.vocabulary, n_options - half - 1)
                    other_labels = rng.sample(other.vocabulary, min(half, len(other.vocabulary)))
                    captions = [own.caption(l) for l in own_labels] + [other.caption(l) for l in other_labels]
                    correct = captions[0]
                    rng.shuffle(captions)
                    rows.append(_row(own, index, options["instruction"], captions, captions.index(correct)))
        tasks[name] = ("cross", rows)
    return tasks


# ---- writing ----------------------------------------------------------------------------------------
def _task_yaml(name: str, kind: str, categories: list[str]) -> str:
    template = {"cls": "_template_mc", "nll": "_template_nll", "mc": "_template_mc", "cross": "_template_mc", "pope": "_template_pope", "mme": "_template_mme",
                "open": "_template_open"}[kind]
    lines = [f"include: {template}", f"task: {name}", "dataset_kwargs:", "  data_files:",
             f"    test: {name}.parquet"]
    if kind == "mme":
        lines.append("metric_list:")
        metrics = [("acc", "mean"), ("acc_plus", "!function utils.agg_acc_plus"),
                   ("mme_score", "!function utils.agg_mme_score")]
        for category in categories:
            metrics += [(f"acc_{category}", "mean"), (f"acc_plus_{category}", "!function utils.agg_acc_plus"),
                        (f"score_{category}", "!function utils.agg_mme_score")]
        for metric, aggregation in metrics:
            lines += [f"  - metric: {metric}", f"    aggregation: {aggregation}", "    higher_is_better: true"]
    return "\n".join(lines) + "\n"


def write_suite(sources: list[SuiteSource], options: dict, folder: Path) -> dict[str, dict]:
    """Write parquet + YAML of every task, the templates and utils.py into `folder`; return task metadata."""
    from datasets import Dataset, Features, Image, Sequence, Value

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    features = Features({"image": Image(), "question": Value("string"), "choices": Sequence(Value("string")),
                         "answer": Value("int32"), "answer_text": Value("string"), "source": Value("string"),
                         "label": Value("string"), "category": Value("string"), "image_id": Value("string")})
    meta = {}
    for name, (kind, rows) in build_documents(sources, options).items():
        if not rows:
            continue
        columns = {key: [row[key] for row in rows] for key in features}
        Dataset.from_dict(columns, features=features).to_parquet(str(folder / f"{name}.parquet"))
        categories = sorted({row["category"] for row in rows})
        (folder / f"{name}.yaml").write_text(_task_yaml(name, kind, categories))
        meta[name] = {"kind": kind, "primary": PRIMARY_METRIC[kind], "items": len(rows),
                      "sources": sorted({row["source"] for row in rows}), "categories": categories}
    for path in TASKS_DIR.iterdir():
        if path.is_file() and (path.name == "utils.py" or path.name.startswith("_template_")):
            shutil.copy2(path, folder / path.name)
    (folder / SUITE_FILE).write_text(json.dumps({"version": SUITE_VERSION, "options": options, "tasks": meta},
                                                indent=2, default=str))
    return meta


def load_suite(folder: Path, key: str = "") -> Suite:
    folder = Path(folder)
    try:
        meta = json.loads((folder / SUITE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{folder} is not a benchmark suite ({exc}); delete it to rebuild") from exc
    return Suite(folder, key, meta["tasks"])


# ---- pipeline entry -----------------------------------------------------------------------------------
def suite_sources(ctx) -> list[SuiteSource]:
    from datasets import Image

    from pivotmerge.pipeline.data import load_dataset_dict

    out = []
    for name, artifact in ctx.data.items():
        test = load_dataset_dict(artifact.path)["test"].cast_column("image", Image(decode=False))
        source = ctx.sources[name]
        labels = list(test["label"])
        extra = [] if len(set(labels)) >= 4 else list(source.labels())
        out.append(SuiteSource(name, list(source.caption_templates), list(test["image"]), labels, extra))
    return out


def build_or_reuse_suite(ctx) -> Suite:
    from pivotmerge.pipeline.artifacts import content_key

    options = suite_options(ctx.cfg.eval.get("suite"))
    spec = {"data": {name: artifact.key for name, artifact in ctx.data.items()}, "options": options,
            "code": code_fingerprint()}
    key = content_key("eval_suite", spec)
    store = ctx.store
    with store.claim("eval_suite", key) as staging:
        if staging is not None:
            write_suite(suite_sources(ctx), options, staging)
            store.commit("eval_suite", key, spec)
    folder = store.verify("eval_suite", key)
    return load_suite(folder, key)


# ---- `pivotmerge suite`: the folder to pass to `lmms-eval --include_path` --------------------------------
def compose_run_config(overrides: list[str]):
    """The config `python run.py <overrides>` would run with, from this working directory."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    root = Path.cwd()
    base = [f"paths.root='{root}'", f"paths.output_dir='{root / 'outputs' / 'suite'}'"]
    try:
        with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"):
            return compose(config_name="config", overrides=base + list(overrides))
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(f"cannot compose the config from {' '.join(overrides) or '(no overrides)'}: "
                          f"{str(exc).splitlines()[0]}") from exc


def suite_for_config(cfg) -> Suite:
    """Build (or reuse) the embedded suite of a run config: the data stage of its sources, then the suite."""
    from types import SimpleNamespace

    from pivotmerge.pipeline.artifacts import ArtifactStore
    from pivotmerge.pipeline.data import build_source, run_data_stage, selected_sources

    if str(cfg.eval.get("name", "embedded")) == "lmms_standard":
        raise ConfigError("eval=lmms_standard runs lmms-eval's built-in tasks: there is no suite folder")
    ctx = SimpleNamespace(cfg=cfg, store=ArtifactStore(cfg.paths.cache_dir), data={}, sources={})
    for name in selected_sources(cfg):
        ctx.sources[name] = build_source(cfg.data.sources[name])
        ctx.data[name] = run_data_stage(ctx.store, name, cfg.data.sources[name], cfg.data.split)
    return build_or_reuse_suite(ctx)


def _configure_suite(p) -> None:
    p.add_argument("--print-path", action="store_true", help="print only the folder (for $(...) in a shell)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="run.py overrides that choose the suite (experiment=..., data=..., eval.suite.*)")


@subcommand("suite", help="build or reuse the embedded benchmark suite and print its folder "
                          "(for lmms-eval --include_path)", configure=_configure_suite)
def run_suite(args) -> int:
    import contextlib
    import sys

    with contextlib.redirect_stdout(sys.stderr):   # stdout holds the path alone
        suite = suite_for_config(compose_run_config(args.overrides))
    if args.print_path:
        print(suite.folder)
        return 0
    print(f"suite folder: {suite.folder}")
    for name, meta in suite.tasks.items():
        print(f"  {name:<20} {meta['kind']:<6} {meta['items']:>5} items  primary metric {meta['primary']}")
    print(f"lmms-eval --model pivotmerge --model_args projector=<file>,model_config=embedded "
          f"--tasks {','.join(suite.tasks)} --include_path {suite.folder}")
    return 0
