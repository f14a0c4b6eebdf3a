"""The data-source adapter interface.

A source yields labelled images. Labels recur between train and test (classes, categories, words), so
that an alignment expert can learn them; captions are built from the label with several templates that
live in the source's config, next to the question phrasing the benchmarks use.
"""
from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass

from PIL import Image

from pivotmerge.errors import DataError


@dataclass(frozen=True)
class Example:
    image: Image.Image
    label: str
    group: str | None = None   # "test" / "train": a source's own split, kept by the data stage (easy-VQA)
    key: str = ""              # the source's own id of the image (e.g. easy-VQA's image id)


class DataSource(abc.ABC):
    """A named, deterministic stream of (image, label) examples."""

    #: modules the adapter imports when it reads its data (checked by the preflight before any stage runs)
    requires: tuple[str, ...] = ()

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


class CaptionedCorpusSource(DataSource):
    """A corpus of (key, caption, image) records where the caption itself is the label (CC12M, LAION,
    LLaVA-558K). Subclasses implement `iter_records(decode)`; `decode=False` skips image decoding, which
    is what caption clustering (`pivotmerge split-domains`) needs."""

    _labels: list[str] | None = None

    @abc.abstractmethod
    def iter_records(self, decode: bool = True) -> Iterator[tuple[str, str, Image.Image | None]]:
        """(key, caption, image or None) for every usable record, skipping and counting bad ones."""

    def iter_captions(self) -> Iterator[tuple[str, str]]:
        for key, caption, _ in self.iter_records(decode=False):
            yield key, caption

    def iter_examples(self) -> Iterator[Example]:
        for _, caption, image in self.iter_records(decode=True):
            yield Example(image, caption)

    def labels(self) -> list[str]:
        """Distinct captions of the first `max_examples` records."""
        if self._labels is None:
            seen: dict[str, None] = {}
            for n, (_, caption) in enumerate(self.iter_captions()):
                if self.max_examples is not None and n >= self.max_examples:
                    break
                seen.setdefault(caption, None)
            self._labels = list(seen)
        return list(self._labels)
