"""Which projector a result belongs to: the pivot, an expert, the joint projector or a merged one.

Results stores, tables, reports and W&B name a model by `str(ModelId)` - "pivot", "joint", "expert:<source>",
"merge:<method>", and "sft:<model>" for a model after the instruction-tuning stage (LLaVA stage 2,
pivotmerge/pipeline/sft.py), e.g. "sft:merge:ties" - and read it back with `ModelId.parse`; this is the only
place that knows that spelling.
"""
from __future__ import annotations

from dataclasses import dataclass

KINDS = ("pivot", "expert", "joint", "merge", "sft")   # also the order of the rows of a table


@dataclass(frozen=True, order=False)
class ModelId:
    kind: str
    name: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"model kind must be one of {KINDS}, got {self.kind!r}")
        named = self.kind in ("expert", "merge", "sft")
        if named != bool(self.name):
            raise ValueError(f"{self.kind!r} models {'need' if named else 'have no'} name")
        if self.kind == "sft" and (ModelId.parse(self.name) is None or self.name.startswith("sft:")):
            raise ValueError(f"'sft' names a stage-1 model (pivot, joint, expert:<s>, merge:<m>), got {self.name!r}")

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

    @classmethod
    def sft(cls, model) -> ModelId:
        """`model` (a stage-1 model name or id) after instruction tuning."""
        return cls("sft", str(model))

    @property
    def base(self) -> ModelId:
        """The stage-1 model an `sft` model was tuned from (itself for any other kind)."""
        return ModelId.parse(self.name) if self.kind == "sft" else self

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
