"""The task pools the eval stage draws from, chosen by `eval.suite._target_` (conf/eval/*.yaml).

`EmbeddedSuite` (conf/eval/embedded.yaml): local lmms-eval tasks (parquet + YAML) built from the sources' TEST
splits. Deterministic (eval/documents.py builds the rows), and the folder is cached as the artifact
`eval_suite/<key>` whose key hashes the data artifacts' keys (each source's config), the sources' caption
templates and `data.instructions`, the suite options and the code of the task files. The folder is self-contained:
`pm_*.yaml` + `pm_*.parquet` + the `_template_*` files and `utils.py` copied from `eval/tasks/`, with data
files given relative to the YAMLs, so it can be passed as `include_path` to lmms-eval (our `TaskManager`, or
`lmms-eval --include_path <folder>`). The eval stage prints the folder; `pivotmerge suite --print-path
[run.py overrides]` builds or reuses it without a run.

`LmmsTasks` (conf/eval/lmms_standard.yaml): lmms-eval's built-in benchmarks, named in `eval.tasks`, with the
metric each shows in the table (`primary_metrics`).

A pool's options are the keys of its YAML node (the only place their defaults live); its constructor checks
them. It answers `task_names(sources)` (what the preflight checks `eval.tasks` against; None = known only to
lmms-eval's registry) and `prepare(ctx, requested) -> TaskSet` (the eval stage).

Benchmarks of the embedded suite (names unique, prefixed `pm_`):
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
  pm_easyvqa       easy-VQA's own test questions, unchanged, k-way over its 13 answers (kind `vqa`; made
                   when an easy-VQA source is in the scenario, once for all its caption views).
  pm_vqa_<source>  a question of `vqa_questions[source]` ("What digit is this?") about each test image, k-way
                   over the source's labels (kind `vqa`; the benchmark of instruction-tuned models, stage 2).
"""
from __future__ import annotations

import hashlib
import inspect
import json
import shutil
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

from omegaconf import OmegaConf

from eval.documents import PRIMARY_METRIC, SuiteSource, build_documents, planned_task_names
from pivotmerge.errors import ConfigError, DataError

SUITE_VERSION = 1
TASKS_DIR = Path(__file__).resolve().parent / "tasks"
SUITE_FILE = "suite.json"


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


@dataclass
class TaskSet:
    """What the eval stage runs: task names, the TaskManager's arguments, metadata of every task of the pool
    (kind, primary metric, sources), and the key that names the pool's content in evaluation cache keys."""

    names: list[str]
    manager_args: dict
    meta: dict[str, dict]
    key: str
    include_path: str | None = None


def _plain(value):
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


# ---- the pools ---------------------------------------------------------------------------------------
@dataclass
class EmbeddedSuite:
    """The embedded benchmark suite; the fields are conf/eval/embedded.yaml's `suite` options."""

    seed: int
    items_per_task: int
    nll_items_per_task: int
    options: int
    mme_images_per_category: int
    kinds: list[str]
    instruction: str | None        # None: data.instructions[0], what the projectors were aligned with
    pope_question: str
    mme_question: str
    open_questions: dict[str, str] | None
    cross_pairs: list[list[str]] | None
    vqa_questions: dict[str, list[str]] | None
    needs_vision = False    # the suite's images are the test splits, whose features are cached

    def __post_init__(self):
        bad_kinds = sorted(set(self.kinds) - set(PRIMARY_METRIC))
        if bad_kinds:
            raise ConfigError(f"eval.suite.kinds has {bad_kinds}; known kinds: {sorted(PRIMARY_METRIC)}")
        if int(self.options) < 2:
            raise ConfigError("eval.suite.options must be at least 2")

    @property
    def settings(self) -> dict:
        """The options as one dict (in the suite's cache key and suite.json). An unset `vqa_questions` is left
        out, so that suites made before the option existed - and every evaluation keyed by them - stay valid."""
        options = {f.name: getattr(self, f.name) for f in self.__dataclass_fields__.values()}
        if options["vqa_questions"] is None:
            del options["vqa_questions"]
        return options

    def task_names(self, sources: list[str]) -> list[str]:
        return planned_task_names(self.settings, sources)

    def prepare(self, ctx, requested) -> TaskSet:
        from pivotmerge.pipeline.data import instructions

        settings = self.settings
        if settings["instruction"] is None:
            settings["instruction"] = instructions(ctx.cfg)[0]
        suite = build_or_reuse_suite(ctx, settings)
        return TaskSet(suite.select(requested), {"include_path": str(suite.folder), "include_defaults": False},
                       suite.tasks, suite.key, include_path=str(suite.folder))


@dataclass
class LmmsTasks:
    """lmms-eval's built-in tasks (those named in eval.tasks); they read raw images, so the vision tower runs."""

    primary_metrics: dict[str, str]
    needs_vision = True

    def task_names(self, sources: list[str]) -> None:
        return None   # lmms-eval's registry knows them; indexing it takes a while, so the eval stage asks it

    def prepare(self, ctx, requested) -> TaskSet:
        from lmms_eval.tasks import TaskManager

        tasks = [requested] if isinstance(requested, str) else list(requested or [])
        if not tasks:
            raise ConfigError("eval.tasks is empty: lmms-eval's built-in tasks run only when named "
                              "(e.g. eval.tasks=[mme,pope])")
        unknown = [t for t in tasks if t not in TaskManager(verbosity="WARNING").all_tasks]
        if unknown:
            raise ConfigError(f"eval.tasks names {unknown}, which lmms-eval does not know")
        meta = {t: {"kind": "standard", "primary": self.primary_metrics.get(t), "sources": []} for t in tasks}
        return TaskSet(tasks, {}, meta, "lmms_standard")


def make_pool(eval_cfg):
    """The task pool `eval.suite` names by `_target_`, built from its options (a ConfigError names a bad one)."""
    from hydra.utils import get_class

    node = _plain(eval_cfg.suite) if eval_cfg.get("suite") is not None else None
    if not isinstance(node, dict) or "_target_" not in node:
        raise ConfigError("eval.suite must name its task pool with _target_ (e.g. eval.suite.EmbeddedSuite; "
                          "see conf/eval/embedded.yaml)")
    options = {k: v for k, v in node.items() if not k.startswith("_")}
    try:
        pool = get_class(node["_target_"])
    except Exception as exc:   # hydra wraps the import error
        raise ConfigError(f"eval.suite._target_={node['_target_']!r} cannot be imported "
                          f"({str(exc).splitlines()[0]})") from exc
    known = [name for name in inspect.signature(pool).parameters]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(f"unknown eval.suite option(s) {unknown}; known: {sorted(known)}")
    missing = [name for name, p in inspect.signature(pool).parameters.items()
               if name not in options and p.default is inspect.Parameter.empty]
    if missing:
        raise ConfigError(f"eval.suite lacks option(s) {missing} (they come from conf/eval/; did an override "
                          "delete them?)")
    return pool(**options)


# ---- writing and reading the folder --------------------------------------------------------------
def code_fingerprint() -> str:
    digest = hashlib.sha256(f"suite-v{SUITE_VERSION}".encode())
    for path in sorted(TASKS_DIR.iterdir()):
        if path.is_file() and (path.name == "utils.py" or path.name.startswith("_template_")):
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _task_yaml(name: str, kind: str, categories: list[str]) -> str:
    template = {"cls": "_template_mc", "nll": "_template_nll", "mc": "_template_mc", "cross": "_template_mc",
                "pope": "_template_pope", "mme": "_template_mme", "open": "_template_open",
                "vqa": "_template_mc"}[kind]
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
        questions, answers = [], []
        if hasattr(source, "test_questions"):   # a source with its own VQA questions (easy-VQA)
            index_of = {key: i for i, key in enumerate(test["key"])}
            questions = [(q.text, q.answer, index_of[str(q.image_id)]) for q in source.test_questions()
                         if str(q.image_id) in index_of]
            answers = source.answer_vocabulary()
        out.append(SuiteSource(name, list(source.caption_templates), list(test["image"]), labels, extra,
                               questions, answers))
    return out


def build_or_reuse_suite(ctx, options: dict) -> Suite:
    from pivotmerge.pipeline.data import text_spec

    spec = {"data": {name: artifact.key for name, artifact in ctx.data.items()},
            "text": text_spec(ctx, ctx.data), "options": options,
            "code": code_fingerprint()}
    entry = ctx.store.entry("eval_suite", spec, lambda staging: write_suite(suite_sources(ctx), options, staging))
    return load_suite(ctx.store.verify("eval_suite", entry.key), entry.key)


def suite_for_config(cfg) -> Suite:
    """Build (or reuse) the embedded suite of a run config: the data stage of its sources, then the suite."""
    from types import SimpleNamespace

    from pivotmerge.artifacts import ArtifactStore
    from pivotmerge.pipeline.data import build_source, run_data_stage, selected_sources

    pool = make_pool(cfg.eval)
    if not isinstance(pool, EmbeddedSuite):
        raise ConfigError(f"eval.suite is {type(pool).__name__} (lmms-eval's built-in tasks): there is no suite "
                          "folder")
    ctx = SimpleNamespace(cfg=cfg, store=ArtifactStore(cfg.paths.cache_dir), data={}, sources={})
    for name in selected_sources(cfg):
        ctx.sources[name] = build_source(cfg.data.sources[name])
        ctx.data[name] = run_data_stage(ctx.store, name, cfg.data.sources[name], cfg.data.split)
    return build_or_reuse_suite(ctx, pool.settings)
