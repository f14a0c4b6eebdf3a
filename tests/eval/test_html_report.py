"""report.html: self-contained (every image inlined, nothing fetched), the table as table.md shows it, every
plot of the report and diagnostics folders, config and code version; in headless Chromium (Debian's
`chromium`, which .ci/run installs), a screenshot and every table and image rendered with nothing fetched."""
import base64
import io
import json
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
import torch

from eval.html_report import write_html_report
from eval.table import build_table, short_name
from eval.writers import to_markdown, write_report
from pivotmerge.merging.diagnostics import collect, write_diagnostics
from tests.helpers.merging import merge
from tests.helpers.rows import known_rows


class Page(HTMLParser):
    """Tables (rows of cell texts), image sources, captions and every attribute that could fetch something."""

    def __init__(self):
        super().__init__()
        self.tables, self.images, self.captions, self.links, self.text = [], [], [], [], []
        self._cell = self._caption = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.links += [v for k, v in attrs.items() if k in ("src", "href") and v]
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = ""
        elif tag == "img":
            self.images.append(attrs["src"])
        elif tag == "figcaption":
            self._caption = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append(self._cell)
            self._cell = None
        elif tag == "figcaption":
            self.captions.append(self._caption)
            self._caption = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell += data
        if self._caption is not None:
            self._caption += data


def png_bytes(color):
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture()
def run_folder(tmp_path):
    """A run folder as the pipeline leaves it: report files, a merged projector with diagnostics, config."""
    out = tmp_path / "outputs" / "exp" / "2026-01-01_00-00-00"
    table = build_table(known_rows())
    write_report(table, out / "report")
    (out / "report" / "retention_plot.png").write_bytes(png_bytes((200, 30, 30)))  # a plot another stage adds
    g = torch.Generator().manual_seed(0)
    pivot = {"0.weight": torch.randn(6, 4, generator=g), "0.bias": torch.randn(6, generator=g)}
    experts = [{k: v + torch.randn(v.shape, generator=g) for k, v in pivot.items()} for _ in range(2)]
    diag = {}
    merged = merge("pivotmerge_data_free", pivot, experts, diagnostics=diag)
    collect(pivot, experts, merged, diag)
    entry = tmp_path / "cache" / "merge" / "abc123"
    write_diagnostics(diag, entry / "diagnostics")
    (entry / "diagnostics" / "loss_barrier.png").write_bytes(png_bytes((30, 30, 200)))
    (out / "run_info.json").write_text(json.dumps({"experiment": "exp", "seeds": [0, 1], "code_version": "f4b8f87"}))
    (out / "resolved_config.yaml").write_text("experiment_name: exp\nmerge:\n  ties:\n    density: 0.2  # <b>\n")
    rows = [{"stage": "merge", "name": "pivotmerge", "status": "ran", "path": str(entry)}]
    return out, table, rows


def test_report_html_is_self_contained_and_complete(run_folder):
    out, table, rows = run_folder
    path = write_html_report(table, out, [out / "results"], rows)
    assert path == out / "report" / "report.html"
    page = Page()
    page.feed(path.read_text())
    # nothing that a browser would fetch: every image is inline data
    assert page.links and all(link.startswith("data:image/png;base64,") for link in page.links)
    for src in page.images:
        assert base64.b64decode(src.split(",", 1)[1])[:4] == b"\x89PNG"
    # the table: every column of Table, every cell as table.md shows it
    results = page.tables[0]
    assert results[0] == ["Model"] + [short_name(c) for c in table.columns]
    md_rows = [line.strip("|").split(" | ") for line in to_markdown(table).splitlines()[2:2 + len(table.models)]]
    assert [[c.strip() for c in r] for r in results[1:]] == [[c.strip().replace("**", "") for c in r] for r in md_rows]
    # plots of the report folder and of the merge's diagnostics folder, captions from the file names
    assert {"Scores (scores.png)", "Retention plot (retention_plot.png)", "Spectra (spectra.png)",
            "Layers (layers.png)", "Loss barrier (loss_barrier.png)"} <= set(page.captions)
    # per-layer diagnostics: conflict rates and layer weights, one row per layer
    layers = next(t for t in page.tables if t[0][0] == "layer")
    assert "sign_conflict_rate" in layers[0] and "layer_weight" in layers[0] and len(layers) == 2
    text = "".join(page.text)
    assert "Gain retention per source" in text   # what table.md adds below its legend comes along
    assert "f4b8f87" in text and "density: 0.2  # <b>" in text   # code version; config shown verbatim


def test_report_only_finds_merges_in_the_stores_run_folder(run_folder, tmp_path):
    out, table, rows = run_folder
    (out / "results").mkdir()
    (out / "stages.json").write_text(json.dumps(rows))
    later = out.parent / "2026-01-02_00-00-00"
    text = write_html_report(table, later, [out / "results"], []).read_text()
    assert "merge:pivotmerge" in text and "Spectra (spectra.png)" in text


CHROMIUM = shutil.which("chromium")
# Why the page is checked in a copy: the copy adds a Content-Security-Policy that lets nothing but inline data
# load (a request for anything else is blocked and reported), and a script that, once the page has loaded,
# writes what the browser rendered - each image decoded and laid out, each table laid out - into the DOM.
_PROBE_HEAD = """<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:;
 style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<script>window.__blocked = [];
document.addEventListener('securitypolicyviolation', e => window.__blocked.push(e.blockedURI));</script>"""
_PROBE_BODY = """<script>window.addEventListener('load', () => {
  const size = e => { const r = e.getBoundingClientRect(); return r.width > 0 && r.height > 0; };
  const out = document.createElement('pre');
  out.id = 'render-check';
  out.textContent = JSON.stringify({
    images: [...document.images].map(i => i.complete && i.naturalWidth > 0 && size(i)),
    tables: [...document.querySelectorAll('table')].map(t => size(t) ? t.rows.length : 0),
    requests: performance.getEntriesByType('resource').map(r => r.name),
    blocked: window.__blocked});
  document.body.appendChild(out);
});</script>"""


def chromium(tmp_path, *args):
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
                           *args], capture_output=True, text=True, timeout=120, check=True)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it as root: "
                                              "apt-get install -y chromium)")
def test_headless_browser_renders_every_table_and_image(run_folder, tmp_path):
    import html
    import re

    from PIL import Image

    out, table, rows = run_folder
    path = write_html_report(table, out, [out / "results"], rows)
    page = Page()
    page.feed(path.read_text())
    # the page as it is: a screenshot with text and tables on it, not a blank page
    shot = tmp_path / "shot.png"
    chromium(tmp_path, "--hide-scrollbars", "--window-size=1200,900", f"--screenshot={shot}", path.as_uri())
    image = Image.open(shot).convert("L")
    assert image.size == (1200, 900)
    low, high = image.getextrema()
    assert high - low > 100
    # what the browser rendered, from the probed copy
    text = path.read_text()
    assert "<head>" in text and "</body>" in text
    probe = path.with_name("probe.html")
    probe.write_text(text.replace("<head>", "<head>" + _PROBE_HEAD, 1).replace("</body>", _PROBE_BODY + "</body>", 1))
    dom = chromium(tmp_path, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()).stdout
    found = re.search(r'<pre id="render-check">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    rendered = json.loads(html.unescape(found.group(1)))
    assert rendered["images"] == [True] * len(page.images) and len(page.images) >= 5
    assert rendered["tables"] == [len(t) for t in page.tables] and len(page.tables) >= 2
    assert rendered["requests"] == [] and rendered["blocked"] == []   # nothing fetched, nothing tried
