"""easy-VQA (PyPI `easy-vqa` 1.0, MIT): 64x64 images of one shape (circle, rectangle, triangle) in one of 8
colours, 4,000 train / 1,000 test, with 38,575 / 9,673 questions over 13 answers.

One image set, several caption *views*: `view: shape` labels each image by its shape, `view: color` by its
colour. Two experts trained on the two views see the same images and learn complementary things - the
shared-input regime where conflicts cannot be told apart by the input subspace (shared/DESIGN.md).

Only images whose questions tell both shape and colour are used (3,542 train / 880 test), so that every
view has the same images. The package's own split is kept (`Example.group`): the test split is drawn from
its test images only, train and val from its train images, in image-id order, independent of the view.
Each image's shape and colour are read from the package's own questions and answers ("what is the blue
shape?" -> rectangle: a blue rectangle); `test_questions()` gives the package's test questions unchanged
for the `pm_easyvqa` benchmark.
"""
from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from PIL import Image

from pivotmerge.data.sources.base import DataSource, Example
from pivotmerge.errors import DataError, MissingDependencyError

VIEWS = ("shape", "color")
SHAPES = ("circle", "rectangle", "triangle")
COLORS = ("black", "blue", "brown", "gray", "green", "red", "teal", "yellow")
_NAMED = re.compile(r"\b(" + "|".join(SHAPES + COLORS) + r")\b")


@dataclass(frozen=True)
class Question:
    text: str
    answer: str
    image_id: int


def package_folder() -> Path:
    """The data folder inside the installed wheel (the package's own loader is not needed)."""
    spec = importlib.util.find_spec("easy_vqa")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError("the easy-VQA sources need the package 'easy-vqa' (make setup installs it)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    if not (folder / "answers.txt").is_file():
        raise DataError(f"the 'easy-vqa' package at {folder.parent} has no data/answers.txt: reinstall it "
                        "(pip install --force-reinstall easy-vqa==1.0)")
    return folder


def read_questions(split: str) -> list[Question]:
    path = package_folder() / split / "questions.json"
    try:
        rows = json.loads(path.read_text())
        return [Question(str(text), str(answer), int(image_id)) for text, answer, image_id in rows]
    except (OSError, ValueError, TypeError) as exc:
        raise DataError(f"cannot read easy-VQA's {path}: {exc}; reinstall 'easy-vqa'") from exc


def answers() -> list[str]:
    """The 13 answers of easy-VQA, in the package's order."""
    return [a.strip() for a in (package_folder() / "answers.txt").read_text().splitlines() if a.strip()]


def _facts(q: Question) -> list[str]:
    """The shapes and colours a question and its answer say the image has."""
    facts = [q.answer] if q.answer in SHAPES + COLORS else []
    named = _NAMED.findall(q.text)
    if q.answer in SHAPES + COLORS:
        facts += named      # "what is the blue shape?" -> rectangle: the image is blue too
    elif q.answer in ("yes", "no") and len(named) == 1:
        negated = " not " in f" {q.text} " or q.text.startswith("is no ")
        if (q.answer == "yes") != negated:
            facts += named  # "is there not a red shape?" -> no: the shape is red
    return facts


def image_labels(questions: list[Question]) -> dict[int, dict[str, str]]:
    """image id -> {"shape": ..., "color": ...} from what the image's questions and answers say."""
    out: dict[int, dict[str, str]] = {}
    for q in questions:
        for fact in _facts(q):
            view = "shape" if fact in SHAPES else "color"
            known = out.setdefault(q.image_id, {}).setdefault(view, fact)
            if known != fact:
                raise DataError(f"easy-VQA image {q.image_id}: its questions say both {known!r} and {fact!r}; "
                                "the package's questions.json is damaged: reinstall 'easy-vqa'")
    return out


class EasyVQASource(DataSource):
    """One caption view of easy-VQA's images (`view`: shape | color)."""

    requires = ()   # read from the wheel's files; package_folder() says when it is missing

    def __init__(self, name: str, caption_templates: list[str], subject: str, view: str,
                 max_examples: int | None = None):
        super().__init__(name, caption_templates, subject, max_examples)
        if view not in VIEWS:
            raise DataError(f"source {name!r}: view={view!r} is not an easy-VQA view; known: {', '.join(VIEWS)}")
        self.view = view

    @cached_property
    def _labels_by_split(self) -> dict[str, dict[int, dict[str, str]]]:
        return {split: image_labels(read_questions(split)) for split in ("train", "test")}

    def iter_examples(self):
        folder = package_folder()
        for split in ("test", "train"):   # the package's test images become our test split only
            labels = self._labels_by_split[split]
            for image_id in sorted(labels):
                if len(labels[image_id]) < len(VIEWS):
                    continue   # ~11 % of images: their questions do not tell both; every view keeps the same images
                label = labels[image_id][self.view]
                path = folder / split / "images" / f"{image_id}.png"
                try:
                    with Image.open(path) as image:
                        image.load()
                        rgb = image.convert("RGB")
                except OSError as exc:
                    raise DataError(f"cannot read easy-VQA image {path}: {exc}; reinstall 'easy-vqa'") from exc
                yield Example(rgb, label, group="test" if split == "test" else "train", key=str(image_id))

    def labels(self):
        return sorted({v[self.view] for split in self._labels_by_split.values() for v in split.values()
                       if self.view in v})

    def test_questions(self) -> list[Question]:
        """The package's test questions, unchanged (the pm_easyvqa benchmark)."""
        return read_questions("test")

    def answer_vocabulary(self) -> list[str]:
        return answers()

    def fingerprint(self) -> dict:
        return {**super().fingerprint(), "view": self.view}
