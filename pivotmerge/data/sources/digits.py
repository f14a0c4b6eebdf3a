"""Handwritten digits (scikit-learn's 8x8 `load_digits`, 1,797 images, 10 classes)."""
from __future__ import annotations

import numpy as np
from PIL import Image

from pivotmerge.data.sources.base import DataSource, Example

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


class DigitsSource(DataSource):
    requires = ("sklearn.datasets",)

    def iter_examples(self):
        from sklearn.datasets import load_digits

        digits = load_digits()
        for pixels, target in zip(digits.images, digits.target):
            gray = (255.0 - pixels * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)  # dark ink on white
            yield Example(Image.fromarray(gray, mode="L").resize((32, 32), Image.NEAREST),
                          DIGIT_NAMES[int(target)])

    def labels(self):
        return list(DIGIT_NAMES)
