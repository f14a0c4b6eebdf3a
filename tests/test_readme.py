"""The README cannot drift from the default config: what it states about `make run`'s configuration (visual
tokens, the sources and their sizes, the training budgets, the test count) is checked against the composed
config and the collected suite."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from tests.helpers import CONF, REPO

README = (REPO / "README.md").read_text()


@pytest.fixture(scope="module")
def cfg():
    """The config `make run` runs (Makefile: run.py experiment=pivotmerge_vs_ties)."""
    makefile = (REPO / "Makefile").read_text()
    experiment = re.search(r"run\.py experiment=(\S+)", makefile).group(1)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=[f"experiment={experiment}"])


def section(title: str) -> str:
    found = re.search(rf"^## {re.escape(title)}[^\n]*\n(.*?)(?=^## )", README, re.S | re.M)
    assert found, f"README has no section '## {title}'"
    return found.group(1)


def table_rows(text: str) -> list[list[str]]:
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()
            if line.startswith("|")]
    return [r for r in rows[2:]]    # below the header and its rule


def visual_tokens(cfg) -> int:
    assert cfg.model.vision.grid is not None, "the embedded default pools to a grid"
    return int(cfg.model.vision.grid) ** 2


def test_visual_tokens_match_the_grid(cfg):
    n = visual_tokens(cfg)
    stated = [int(m.group(1)) for m in re.finditer(r"(\d+) visual tokens?\b", README)]
    assert stated and all(s == n for s in stated), f"README states {stated} visual tokens; model.vision.grid " \
                                                   f"= {cfg.model.vision.grid} gives {n}"
    grids = re.findall(r"(\d+)x(\d+) = (\d+) visual tokens?", README)
    assert all(int(a) == int(b) == cfg.model.vision.grid for a, b, _ in grids), grids


def test_sources_table_lists_the_default_sources(cfg):
    rows = table_rows(section("The embedded default"))
    listed = [r[0].strip("`") for r in rows]
    assert listed == list(cfg.scenario.sources), f"README lists {listed}; scenario.sources = " \
                                                 f"{list(cfg.scenario.sources)}"
    for row in rows:   # a size the config sets is the size the table states
        source = cfg.data.sources[row[0].strip("`")]
        size = source.get("count") or source.get("max_examples")
        if size is not None:
            assert f"{int(size):,}" in row[-1], (row, size)


def test_budgets_match_the_config(cfg):
    pivot, expert, batch = cfg.scenario.pivot.steps, cfg.scenario.experts.steps, cfg.trainer.batch_size
    default = section("The embedded default")
    assert f"pivot warm-up of {pivot} steps" in default and f"{expert} steps per expert" in default
    assert f"batches of {batch}" in default
    timing = section("How long it takes")
    assert f"pivot warm-up, {pivot} steps x {batch}" in timing
    assert f"one expert, {expert} steps x {batch}" in timing
    assert f"{len(cfg.scenario.sources)} sources, pivot, {len(cfg.scenario.sources)} experts" in timing


@pytest.mark.slow   # collects the whole suite (~10 s)
def test_test_count_matches_the_suite():
    stated = re.search(r"`make test` \((\d+) tests", README)
    assert stated, "README states no test count"
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
                         cwd=REPO, capture_output=True, text=True, timeout=300).stdout
    collected = sum(int(m.group(1)) for m in re.finditer(r"^tests/\S+: (\d+)$", out, re.M))
    assert int(stated.group(1)) == collected, f"README says {stated.group(1)} tests; the suite has {collected}"
