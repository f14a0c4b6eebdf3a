"""Caption clustering into domains: k-means on injected embeddings, reports, CLI, one real MiniLM smoke."""
import json

import numpy as np
import pytest

from pivotmerge.cli import main
from pivotmerge.data.clustering import MiniLMEmbedder, kmeans_labels, split_domains, write_split
from pivotmerge.errors import DataError

TOPICS = {
    "food": ["a bowl of pasta with tomato sauce", "fresh bread on a wooden table", "a plate of pasta and salad",
             "chocolate cake with strawberries", "a bowl of soup with bread"],
    "city": ["a busy street at night with cars", "tall buildings in the city centre", "a red bus on a street",
             "traffic lights over a street in the city", "a bridge over the river in the city"],
    "nature": ["a mountain lake at sunrise", "a forest trail covered in snow", "a waterfall in the forest",
               "a mountain covered in snow", "a lake surrounded by forest", "green hills under a blue sky"],
}


def _records():
    return [(f"{t}{i:03d}", c) for t, captions in TOPICS.items() for i, c in enumerate(captions)]


def fake_embed(texts):
    """Well-separated synthetic embeddings: one direction per topic, plus small noise."""
    rng = np.random.default_rng(0)
    centres = np.eye(3) * 5.0
    out = []
    for text in texts:
        topic = next(i for i, captions in enumerate(TOPICS.values()) if text in captions)
        out.append(centres[topic] + rng.normal(scale=0.1, size=3))
    return np.array(out)


def test_split_recovers_topics_and_orders_by_size(tmp_path):
    split = split_domains(_records(), k=3, seed=0, embed_fn=fake_embed)
    groups = [{key.rstrip("0123456789") for key in keys} for keys in split.domains.values()]
    assert all(len(g) == 1 for g in groups)  # each domain is exactly one topic
    assert split.sizes() == {"d0": 6, "d1": 5, "d2": 5}  # renamed by decreasing size: nature first
    assert groups[0] == {"nature"}
    assert split_domains(_records(), k=3, seed=0, embed_fn=fake_embed).domains == split.domains  # seeded
    report = split.report["domains"]
    assert {"mountain", "forest", "snow"} & set(report["d0"]["top_words"][:5])
    paths = write_split(split, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "domains.json").read_text()) == split.domains
    assert "| d0 | 6 |" in (tmp_path / "out" / "report.md").read_text()
    assert [p.name for p in paths] == ["domains.json", "report.json", "report.md"]
    with pytest.raises(DataError, match="at least k"):
        kmeans_labels(np.zeros((2, 3)), 3, 0)


def test_cli_on_webdataset_shards_and_round_trip_into_the_source(tmp_path, capsys):
    from pivotmerge.data.sources.webdataset import WebDatasetSource
    from tests.helpers.shards import jpeg, write_shard

    records = _records()
    write_shard(tmp_path / "00000.tar", [(k, c.encode(), jpeg((i * 10 % 255, 0, 0)))
                                         for i, (k, c) in enumerate(records[:8])])
    write_shard(tmp_path / "00001.tar", [(k, c.encode(), jpeg((0, i * 10 % 255, 0)))
                                         for i, (k, c) in enumerate(records[8:])])
    code = main(["split-domains", "webdataset", str(tmp_path / "{00000..00001}.tar"), "--k", "3",
                 "--embedder", "tfidf", "--out", str(tmp_path / "domains")])
    assert code == 0, capsys.readouterr().err
    domains = json.loads((tmp_path / "domains" / "domains.json").read_text())
    assert sorted(k for keys in domains.values() for k in keys) == sorted(k for k, _ in records)
    assert "d0:" in capsys.readouterr().out
    # the index feeds the loader: domain d1 reads back exactly its keys' captions
    source = WebDatasetSource("cc12m_d1", str(tmp_path / "*.tar"), domain="d1",
                              domain_index=str(tmp_path / "domains" / "domains.json"))
    captions = dict(records)
    assert [e.label for e in source.examples()] == [captions[k] for k in domains["d1"]]
    assert main(["split-domains", "llava-json", str(tmp_path / "missing.json"), "--out", str(tmp_path)]) == 2


def test_minilm_smoke_on_ten_captions():
    """The real all-MiniLM-L6-v2 from the wheel: unit vectors, and food vs city captions separate."""
    embed = MiniLMEmbedder(device="cpu")
    texts = TOPICS["food"] + TOPICS["city"]
    vectors = embed(texts)
    assert vectors.shape == (10, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    labels = kmeans_labels(vectors, 2, seed=0)
    assert len(set(labels[:5])) == 1 and len(set(labels[5:])) == 1 and labels[0] != labels[5]
