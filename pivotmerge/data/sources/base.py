"""The data-source adapter interface.

A source yields labelled images. Labels recur between train and test (classes, categories, words), so
that an alignment expert can learn them; captions are built from the label with several templates that
live in the source's config, next to the question phrasing the benchmarks use.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Iterator

from PIL import Image

from pivotmerge.errors import DataError


@dataclass(frozen=True)
class Example:
    image: Image.Image
    label: str


class DataSource(abc.ABC):
    """A named, deterministic stream of (image, label) examples."""

    def __init__(self, name: str, caption_templates: list[str], subject: str,
                 max_examples: int | None = None):
        if not caption_templates or any("{label}" not in t for t in caption_templates):
            raise DataError(f"source {name!r}: caption_templates must be non-empty and each contain '{{label}}'")
        self.name = name
        self.caption_templates = list(caption_templates)
        self.subject = subject  # e.g. "handwritten digit": used by benchmark questions
        self.max_examples = max_examples

    @abc.abstractmethod
    def iter_examples(self) -> Iterator[Example]:
        """Every example the source has, in a fixed order."""

    @abc.abstractmethod
    def labels(self) -> list[str]:
        """All label values (the answer vocabulary of this source)."""

    def examples(self) -> list[Example]:
        out = []
        for example in self.iter_examples():
            out.append(example)
            if self.max_examples is not None and len(out) >= self.max_examples:
                break
        if not out:
            raise DataError(f"data source {self.name!r} produced no examples: check its files and config")
        return out

    def caption(self, label: str, template_index: int = 0) -> str:
        return self.caption_templates[template_index % len(self.caption_templates)].format(label=label)

    def fingerprint(self) -> dict:
        """What determines this source's content (feeds the cache key)."""
        return {"class": type(self).__qualname__, "name": self.name, "max_examples": self.max_examples}
