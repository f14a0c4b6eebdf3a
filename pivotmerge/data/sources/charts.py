"""Rendered charts (ChartQA-style domain): ten chart types drawn with matplotlib from random data.

White backgrounds, axes, tick labels and flat colour fills: image statistics unlike photos, icons or
silhouettes, and a caption vocabulary (chart types) shared with no other source. Seeded: the same config
always renders the same images.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from pivotmerge.data.sources.base import DataSource, Example

CHART_TYPES = ["bar chart", "line chart", "scatter plot", "pie chart", "area chart", "box plot", "heatmap",
               "donut chart", "radar chart", "stem plot"]
_PALETTES = ["tab10", "Set2", "Dark2", "viridis", "plasma", "coolwarm", "Paired", "Accent"]


def _draw(kind: str, rng: np.random.Generator, fig) -> None:
    cmap = __import__("matplotlib").colormaps[_PALETTES[rng.integers(len(_PALETTES))]]
    colors = [cmap(x) for x in rng.uniform(0, 1, 8)]
    polar = kind == "radar chart"
    ax = fig.add_subplot(111, projection="polar" if polar else None)
    n = int(rng.integers(4, 9))
    if kind == "bar chart":
        ax.bar(range(n), rng.uniform(1, 10, n), color=colors[:1] if rng.random() < 0.5 else colors[:n % 8 or 1])
    elif kind == "line chart":
        for s in range(int(rng.integers(1, 4))):
            ax.plot(np.cumsum(rng.normal(0, 1, 20)), color=colors[s], linewidth=rng.uniform(1, 3))
    elif kind == "scatter plot":
        m = int(rng.integers(20, 80))
        ax.scatter(rng.normal(0, 1, m), rng.normal(0, 1, m), s=rng.uniform(8, 40), color=colors[0])
    elif kind in ("pie chart", "donut chart"):
        wedge = {"width": rng.uniform(0.3, 0.5)} if kind == "donut chart" else None
        ax.pie(rng.uniform(1, 5, n), colors=[cmap(i / n) for i in range(n)], wedgeprops=wedge,
               startangle=float(rng.uniform(0, 360)))
    elif kind == "area chart":
        x = np.arange(20)
        ax.stackplot(x, *[np.abs(np.cumsum(rng.normal(0, 1, 20))) + 1 for _ in range(int(rng.integers(1, 4)))],
                     colors=colors[:3])
    elif kind == "box plot":
        ax.boxplot([rng.normal(rng.uniform(-2, 2), rng.uniform(0.5, 2), 30) for _ in range(int(rng.integers(2, 6)))])
    elif kind == "heatmap":
        ax.imshow(rng.uniform(0, 1, (int(rng.integers(5, 12)),) * 2), cmap=cmap)
    elif kind == "radar chart":
        angles = np.linspace(0, 2 * np.pi, n + 1)
        values = rng.uniform(1, 5, n + 1)
        values[-1] = values[0]
        ax.plot(angles, values, color=colors[0])
        ax.fill(angles, values, color=colors[0], alpha=0.3)
    elif kind == "stem plot":
        ax.stem(rng.normal(0, 1, int(rng.integers(8, 20))))
    if not polar and kind not in ("pie chart", "donut chart") and rng.random() < 0.4:
        ax.grid(alpha=0.4)


class ChartsSource(DataSource):
    requires = ("matplotlib",)

    def __init__(self, *args, count: int = 1400, image_size: int = 128, chart_types: list[str] | None = None,
                 render_seed: int = 2024, **kwargs):
        super().__init__(*args, **kwargs)
        self.count = count
        self.image_size = image_size
        self.chart_types = list(chart_types or CHART_TYPES)
        unknown = sorted(set(self.chart_types) - set(CHART_TYPES))
        if unknown:
            from pivotmerge.errors import ConfigError

            raise ConfigError(f"data source {self.name!r}: unknown chart_types {unknown}; known: {CHART_TYPES}")
        self.render_seed = render_seed

    def iter_examples(self):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rng = np.random.default_rng(self.render_seed)
        inches = 2.0
        for index in range(self.count):
            kind = self.chart_types[index % len(self.chart_types)]
            fig = plt.figure(figsize=(inches, inches), dpi=self.image_size / inches)
            try:
                _draw(kind, rng, fig)
                buffer = io.BytesIO()
                fig.savefig(buffer, format="png")
            finally:
                plt.close(fig)
            buffer.seek(0)
            image = Image.open(buffer).convert("RGB")
            image.load()
            yield Example(image, kind)

    def labels(self):
        return list(self.chart_types)

    def fingerprint(self):
        return {**super().fingerprint(), "count": self.count, "image_size": self.image_size,
                "chart_types": self.chart_types, "render_seed": self.render_seed}
