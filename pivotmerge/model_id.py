"""Which projector a result belongs to: the pivot, an expert, the joint projector or a merged one.

Results stores, tables, reports and W&B name a model by `str(ModelId)` - "pivot", "joint", "expert:<source>",
"merge:<method>" - and read it back with `ModelId.parse`; this is the only place that knows that spelling.
"""
from __future__ import annotations

from dataclasses import dataclass

KINDS = ("pivot", "expert", "joint", "merge")   # also the order of the rows of a table


@dataclass(frozen=True, order=False)
class ModelId:
    kind: str
    name: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"model kind must be one of {KINDS}, got {self.kind!r}")
        if (self.kind in ("expert", "merge")) != bool(self.name):
            raise ValueError(f"{self.kind!r} models {'need' if self.kind in ('expert', 'merge') else 'have no'} name")

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}" if self.name else self.kind

    @classmethod
    def parse(cls, text: str) -> ModelId | None:
        """The id of a model name, or None for a name that is none of the four kinds."""
        kind, _, name = str(text).partition(":")
        try:
            return cls(kind, name)
        except ValueError:
            return None

    @classmethod
    def expert(cls, source: str) -> ModelId:
        return cls("expert", source)

    @classmethod
    def merge(cls, method: str) -> ModelId:
        return cls("merge", method)

    @property
    def rank(self) -> int:
        return KINDS.index(self.kind)


PIVOT = ModelId("pivot")
JOINT = ModelId("joint")


def kind_of(text: str) -> str | None:
    parsed = ModelId.parse(text)
    return parsed.kind if parsed else None


def name_of(text: str) -> str:
    parsed = ModelId.parse(text)
    return parsed.name if parsed else str(text)


def file_stem(text: str) -> str:
    """A model name as a file name ("merge:ties" -> "merge_ties")."""
    return str(text).replace(":", "_").replace("/", "_")


def short_label(text: str) -> str:
    """An expert or merge by its source or method ("expert:digits" -> "digits"); anything else as it is."""
    parsed = ModelId.parse(text)
    return parsed.name if parsed and parsed.name else str(text)


def model_order(models) -> list[str]:
    """Model names in table order: pivot, experts, joint, merges, then anything else; stable within a kind."""
    seen = list(dict.fromkeys(models))

    def rank(name: str) -> int:
        parsed = ModelId.parse(name)
        return parsed.rank if parsed else len(KINDS)

    return sorted(seen, key=lambda name: (rank(name), seen.index(name)))
