"""Animal silhouettes (`animal-shape-mnist`, 10,000 28x28 images, 10 classes, MIT).

Its own loader imports TensorFlow, so we read the package's gzipped pickles directly.
"""
from __future__ import annotations

import gzip
import importlib.util
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from pivotmerge.data.sources.base import DataSource, Example
from pivotmerge.errors import DataError, MissingDependencyError

ANIMAL_NAMES = ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"]


class AnimalShapesSource(DataSource):
    def _files(self) -> tuple[Path, Path]:
        spec = importlib.util.find_spec("animal_shape_mnist")
        if spec is None or not spec.submodule_search_locations:
            raise MissingDependencyError("the animals source needs the package 'animal-shape-mnist' (make setup)")
        folder = Path(list(spec.submodule_search_locations)[0]) / "data" / "Animal Shape"
        return folder / "animal_data_version_3.gz", folder / "animal_label_version_3.gz"

    def iter_examples(self):
        data_file, label_file = self._files()
        try:
            with gzip.open(data_file, "rb") as handle:
                images = pickle.load(handle)
            with gzip.open(label_file, "rb") as handle:
                labels = pickle.load(handle)
        except (OSError, EOFError, pickle.UnpicklingError) as exc:
            raise DataError(f"cannot read {data_file}: {exc}; reinstall 'animal-shape-mnist'") from exc
        # Interleave classes so that a max_examples cut stays balanced.
        rank = np.empty(len(labels), dtype=np.int64)
        for value in np.unique(labels):
            members = np.flatnonzero(labels == value)
            rank[members] = np.arange(len(members))
        order = np.lexsort((labels, rank))
        for index in order:
            yield Example(Image.fromarray(images[index], mode="L"), ANIMAL_NAMES[int(labels[index])])

    def labels(self):
        return list(ANIMAL_NAMES)
