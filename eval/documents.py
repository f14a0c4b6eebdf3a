"""The embedded suite's documents (pure): the sources' test images and labels + the suite options -> rows per task.

Deterministic: every task draws from its own `random.Random(f"{seed}:{task}")` and takes rows in split order.
The kinds and what they ask are listed in eval/suite.py; each kind is one builder below, and BUILDERS fixes
the order in which tasks are made (and listed).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from pivotmerge.errors import ConfigError, DataError

# The metric each benchmark kind shows in the paper table.
PRIMARY_METRIC = {"cls": "acc", "nll": "nll", "mc": "acc", "cross": "acc", "pope": "accuracy", "mme": "mme_score",
                  "open": "exact_match", "vqa": "acc"}
# A source's own VQA questions become one task per question set (sources that share images share it).
VQA_TASKS = {"easyvqa": "pm_easyvqa"}   # source-name prefix -> task


def vqa_task(source_name: str) -> str | None:
    return next((task for prefix, task in VQA_TASKS.items() if source_name.startswith(prefix)), None)


@dataclass
class SuiteSource:
    """What the suite needs from one source: its test images (encoded bytes) and labels."""

    name: str
    caption_templates: list[str]
    images: list[dict]         # {"bytes": ..., "path": ...} as stored by the HF Image feature
    labels: list[str]          # test label of each image
    extra_labels: list[str] = field(default_factory=list)   # vocabulary beyond the test labels
    questions: list[tuple[str, str, int]] = field(default_factory=list)   # (question, answer, test index)
    answers: list[str] = field(default_factory=list)        # the answer vocabulary of `questions`

    def caption(self, label: str) -> str:
        return self.caption_templates[0].format(label=label)

    @property
    def vocabulary(self) -> list[str]:
        return sorted(set(self.labels) | set(self.extra_labels))


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
    if "vqa" in kinds:
        names += list(dict.fromkeys(t for t in map(vqa_task, sources) if t))
        names += [f"pm_vqa_{s}" for s in sources if s in (options.get("vqa_questions") or {})]
    return names


def _row(source: SuiteSource, index: int, question: str, choices: list[str], answer: int, *, answer_text: str = "",
         category: str = "") -> dict:
    return {"image": source.images[index], "question": question, "choices": list(choices), "answer": int(answer),
            "answer_text": answer_text or choices[answer] if choices else answer_text,
            "source": source.name, "label": source.labels[index], "category": category or source.name,
            "image_id": f"{source.name}:{index}"}


def _mc_options(rng: random.Random, truth: str, pool: list[str], n: int) -> list[str]:
    others = [label for label in pool if label != truth]
    return rng.sample(others, min(n, len(others)))


def _rng(options: dict, task: str) -> random.Random:
    return random.Random(f"{int(options['seed'])}:{task}")


def _labelled(source: SuiteSource, what: str) -> list[str]:
    vocab = source.vocabulary
    if len(vocab) < 2:
        raise DataError(f"source {source.name!r} has fewer than 2 labels: no {what} possible")
    return vocab


# ---- one builder per kind: (sources, options) -> {task name: rows} ---------------------------------------
def _cls(sources: list[SuiteSource], options: dict) -> dict[str, list[dict]]:
    """k-way classification over every label of the source."""
    tasks = {}
    for source in sources:
        vocab = _labelled(source, "classification")
        captions = [source.caption(label) for label in vocab]
        tasks[f"pm_cls_{source.name}"] = [_row(source, index, options["instruction"], captions,
                                               vocab.index(source.labels[index]))
                                          for index in range(min(int(options["items_per_task"]), len(source.images)))]
    return tasks


def _nll(sources: list[SuiteSource], options: dict) -> dict[str, list[dict]]:
    """Held-out caption NLL: the true caption as the answer text."""
    tasks = {}
    for source in sources:
        n = min(int(options["nll_items_per_task"]), len(source.images))
        tasks[f"pm_nll_{source.name}"] = [_row(source, i, options["instruction"], [], 0,
                                               answer_text=source.caption(source.labels[i])) for i in range(n)]
    return tasks


def _mc(sources: list[SuiteSource], options: dict) -> dict[str, list[dict]]:
    """n-way multiple choice: the true caption and distractor labels of the same source."""
    tasks = {}
    for source in sources:
        name = f"pm_mc_{source.name}"
        rng, rows = _rng(options, name), []
        vocab = _labelled(source, "multiple choice")
        for index in range(min(int(options["items_per_task"]), len(source.images))):
            truth = source.labels[index]
            labels = [truth] + _mc_options(rng, truth, vocab, int(options["options"]) - 1)
            rng.shuffle(labels)
            rows.append(_row(source, index, options["instruction"], [source.caption(label) for label in labels],
                             labels.index(truth)))
        tasks[name] = rows
    return tasks


def _pope(sources: list[SuiteSource], options: dict) -> dict[str, list[dict]]:
    """Yes/no object existence across all sources, balanced answers."""
    name = "pm_pope"
    rng, rows = _rng(options, name), []
    per_source = max(1, int(options["items_per_task"]) // len(sources))
    picks = [(s, i) for s in sources for i in range(min(per_source, len(s.images)))]
    answers = [True, False] * (len(picks) // 2) + [True] * (len(picks) % 2)
    rng.shuffle(answers)
    for (source, index), is_yes in zip(picks, answers):
        truth = source.labels[index]
        if is_yes:
            caption = source.caption(truth)
        else:
            other_sources = [s for s in sources if s is not source]
            same = [label for label in source.vocabulary if label != truth]
            if other_sources and (not same or rng.random() < 0.5):
                other = rng.choice(other_sources)
                caption = other.caption(rng.choice(other.vocabulary))
            else:
                caption = source.caption(rng.choice(same))
        question = options["pope_question"].format(caption=caption)
        rows.append(_row(source, index, question, ["yes", "no"], 0 if is_yes else 1))
    return {name: rows}


def _mme(sources: list[SuiteSource], options: dict) -> dict[str, list[dict]]:
    """Yes/no perception by category (= source): one true and one false question per image."""
    name = "pm_mme"
    rng, rows = _rng(options, name), []
    for source in sources:
        for index in range(min(int(options["mme_images_per_category"]), len(source.images))):
            truth = source.labels[index]
            wrong = _mc_options(rng, truth, source.vocabulary, 1)
            if not wrong:
                raise DataError(f"source {source.name!r} has one label only: no MME negative question")
            for caption, answer in ((source.caption(truth), 0), (source.caption(wrong[0]), 1)):
                rows.append(_row(source, index, options["mme_question"].format(caption=caption), ["yes", "no"],
                                 answer))
    return {name: rows}


def _open(sources: list[SuiteSource], options: dict) -> dict[str, list[dict]]:
    """Open answers, exact match against the label, for the sources of `open_questions`."""
    by_name = {s.name: s for s in sources}
    tasks = {}
    for source_name, question in (options["open_questions"] or {}).items():
        if source_name not in by_name:
            continue
        source = by_name[source_name]
        tasks[f"pm_open_{source_name}"] = [_row(source, i, question, [], 0, answer_text=source.labels[i])
                                           for i in range(min(int(options["items_per_task"]), len(source.images)))]
    return tasks


def _cross_pairs(sources: list[SuiteSource], options: dict) -> list:
    by_name = {s.name: s for s in sources}
    pairs = options["cross_pairs"]
    if pairs is None:
        names = [s.name for s in sources]
        pairs = [names[i:i + 2] for i in range(0, len(names) - 1, 2)]
    for pair in pairs:
        missing = [p for p in pair if p not in by_name]
        if len(pair) != 2 or missing:
            raise ConfigError(f"eval.suite.cross_pairs entry {pair} must name two of the sources {sorted(by_name)}")
    return pairs


def _cross(sources: list[SuiteSource], options: dict) -> dict[str, list[dict]]:
    """Multiple choice whose options mix two sources' labels, items alternating between the two sources."""
    if len(sources) < 2:
        return {}
    by_name = {s.name: s for s in sources}
    pairs = _cross_pairs(sources, options)
    name = "pm_cross_mc"
    rng, rows = _rng(options, name), []
    n_options = int(options["options"])
    per_side, half = max(1, int(options["items_per_task"]) // (2 * len(pairs))), n_options // 2
    for a_name, b_name in pairs:
        a, b = by_name[a_name], by_name[b_name]
        for index in range(per_side):
            for own, other in ((a, b), (b, a)):
                if index >= len(own.images):
                    continue
                truth = own.labels[index]
                own_labels = [truth] + _mc_options(rng, truth, own.vocabulary, n_options - half - 1)
                other_labels = rng.sample(other.vocabulary, min(half, len(other.vocabulary)))
                captions = [own.caption(label) for label in own_labels] + [other.caption(label)
                                                                           for label in other_labels]
                correct = captions[0]
                rng.shuffle(captions)
                rows.append(_row(own, index, options["instruction"], captions, captions.index(correct)))
    return {name: rows}


def _vqa(sources: list[SuiteSource], options: dict) -> dict[str, list[dict]]:
    """A source's own test questions, unchanged, k-way over its answer vocabulary (easy-VQA: 13 answers);
    `items_per_task` questions drawn at random from those on the test images. Then `pm_vqa_<source>` for the
    sources of `vqa_questions`: one of its questions per test image (seeded), k-way over the source's labels -
    the questions instruction tuning asks about TRAIN images (pivotmerge/pipeline/sft.py), here on test ones."""
    tasks = _source_questions(sources, options)
    for source in sources:
        name = vqa_task(source.name)
        if name is None or name in tasks or not source.questions:
            continue
        picks = sorted(_rng(options, name).sample(range(len(source.questions)),
                                                  min(int(options["items_per_task"]), len(source.questions))))
        rows = []
        for pick in picks:
            question, answer, index = source.questions[pick]
            row = _row(source, index, question, source.answers, source.answers.index(answer))
            rows.append({**row, "label": answer, "category": name})
        tasks[name] = rows
    return tasks


def _source_questions(sources: list[SuiteSource], options: dict) -> dict[str, list[dict]]:
    tasks = {}
    asked = options.get("vqa_questions") or {}
    for source in sources:
        if not asked.get(source.name):
            continue
        name = f"pm_vqa_{source.name}"
        rng, vocab = _rng(options, name), _labelled(source, "question answering")
        rows = []
        for index in range(min(int(options["items_per_task"]), len(source.images))):
            row = _row(source, index, rng.choice(list(asked[source.name])), vocab, vocab.index(source.labels[index]))
            rows.append({**row, "category": name})
        tasks[name] = rows
    return tasks


BUILDERS = (("cls", _cls), ("nll", _nll), ("mc", _mc), ("pope", _pope), ("mme", _mme), ("open", _open),
            ("cross", _cross), ("vqa", _vqa))


def build_documents(sources: list[SuiteSource], options: dict) -> dict[str, tuple[str, list[dict]]]:
    """task name -> (kind, rows). Deterministic given the sources and options."""
    kinds = list(options["kinds"])
    tasks: dict[str, tuple[str, list[dict]]] = {}
    for kind, build in BUILDERS:
        if kind in kinds:
            tasks.update({name: (kind, rows) for name, rows in build(sources, options).items()})
    return tasks
