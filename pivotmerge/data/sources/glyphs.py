"""Rendered words (OCR-style): a fixed vocabulary drawn in DejaVu fonts with random size, colour,
position and slight rotation. Fonts ship inside matplotlib's wheel; the images are generated, seeded."""
from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from pivotmerge.data.sources.base import DataSource, Example

WORDS = ["apple", "river", "storm", "piano", "tiger", "cloud", "bread", "stone", "light", "green",
         "ocean", "chair"]
FONTS = ["DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf"]


class RenderedWordsSource(DataSource):
    requires = ("matplotlib",)

    def __init__(self, *args, count: int = 1600, image_size: int = 96, words: list[str] | None = None,
                 render_seed: int = 1234, **kwargs):
        super().__init__(*args, **kwargs)
        self.count = count
        self.image_size = image_size
        self.words = list(words or WORDS)
        self.render_seed = render_seed

    def _font(self, name: str, size: int):
        import matplotlib

        path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name
        if path.is_file():
            return ImageFont.truetype(str(path), size)
        return ImageFont.load_default(size=size)

    def iter_examples(self):
        rng = random.Random(self.render_seed)
        for index in range(self.count):
            word = self.words[index % len(self.words)]
            background = tuple(rng.randint(150, 255) for _ in range(3))
            ink = tuple(rng.randint(0, 90) for _ in range(3))
            canvas = Image.new("RGB", (self.image_size, self.image_size), background)
            font = self._font(rng.choice(FONTS), rng.randint(self.image_size // 6, self.image_size // 4))
            draw = ImageDraw.Draw(canvas)
            left, top, right, bottom = draw.textbbox((0, 0), word, font=font)
            width, height = right - left, bottom - top
            x = rng.randint(0, max(0, self.image_size - width)) - left
            y = rng.randint(0, max(0, self.image_size - height)) - top
            draw.text((x, y), word, fill=ink, font=font)
            canvas = canvas.rotate(rng.uniform(-12, 12), resample=Image.BICUBIC, fillcolor=background)
            yield Example(canvas, word)

    def labels(self):
        return list(self.words)

    def fingerprint(self):
        return {**super().fingerprint(), "count": self.count, "image_size": self.image_size,
                "words": self.words, "render_seed": self.render_seed}
