"""img2dataset-layout webdataset shards written here, read back through the real loader (skips counted)."""
import json
import logging

import pytest
from omegaconf import OmegaConf

from pivotmerge.data.sources.webdataset import WebDatasetSource, expand_braces, expand_shards
from pivotmerge.errors import ConfigError, DataError
from tests.helpers.shards import jpeg, write_shard


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("cc12m")
    write_shard(root / "00000.tar", [
        ("000000000", b"a red bus on a street", jpeg((200, 0, 0))),
        ("000000001", b"  a green   field  ", jpeg((0, 200, 0))),
        ("000000002", b"a broken photo", b"\xff\xd8\xff not really a jpeg"),   # corrupt image
        ("000000003", b"   ", jpeg((0, 0, 200))),                             # empty caption
    ])
    write_shard(root / "00001.tar", [
        ("000010000", b"a dog on a beach", jpeg((120, 120, 0))),
        ("000010001", None, jpeg((0, 120, 120))),                             # no caption at all
        ("000010002", b"a cat without a picture", None),                        # no image
        ("000010003", b"\xff\xfe bad utf8", jpeg((9, 9, 9))),                  # caption not UTF-8
        ("000010004", b"a lighthouse at dusk", jpeg((250, 200, 10))),
    ])
    return root


def test_expand_shard_specs(shards):
    assert expand_braces("s/{0008..0010}.tar") == ["s/0008.tar", "s/0009.tar", "s/0010.tar"]
    assert expand_braces("{a,b}-{1..2}") == ["a-1", "a-2", "b-1", "b-2"]
    assert expand_shards(f"file://{shards}/*.tar") == [str(shards / "00000.tar"), str(shards / "00001.tar")]
    with pytest.raises(ConfigError, match="img2dataset"):
        expand_shards("https://example.org/cc12m/{00000..00010}.tar")


def test_reads_good_samples_and_counts_skips(shards, caplog):
    source = WebDatasetSource("cc12m", str(shards / "{00000..00001}.tar"))
    with caplog.at_level(logging.INFO, logger="pivotmerge.data.sources.webdataset"):
        examples = source.examples()
    assert [e.label for e in examples] == ["a red bus on a street", "a green field", "a dog on a beach",
                                           "a lighthouse at dusk"]
    assert all(e.image.convert("RGB").size == (12, 10) for e in examples)
    stats = source.last_stats
    assert stats["yielded"] == 4 and stats["skipped"] == 5
    assert {k: stats[k] for k in ("bad_image", "empty_caption", "missing_caption", "missing_image",
                                  "bad_caption")} == dict.fromkeys(
        ("bad_image", "empty_caption", "missing_caption", "missing_image", "bad_caption"), 1)
    assert "skipped 5" in caplog.text and "bad_image 1" in caplog.text
    assert source.caption(examples[0].label) == "a red bus on a street"  # template "{label}"


def test_truncated_and_missing_shards_do_not_crash(shards, tmp_path):
    write_shard(tmp_path / "full.tar", [(f"{i:09d}", b"caption %d" % i, jpeg((i, 0, 0))) for i in range(5)])
    data = (tmp_path / "full.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[:len(data) // 2])  # a download killed mid-shard
    source = WebDatasetSource("cc12m", [str(tmp_path / "cut.tar"), str(tmp_path / "gone.tar"),
                                        str(shards / "00000.tar")])
    labels = [e.label for e in source.iter_examples()]
    assert labels == ["caption 0", "caption 1", "a red bus on a street", "a green field"]
    assert source.last_stats["bad_shard"] == 1 and source.last_stats["missing_shard"] == 1
    with pytest.raises(DataError, match="none of the"):
        next(WebDatasetSource("x", str(tmp_path / "nothing-*.tar")).iter_examples())


def test_domain_filter_and_max_examples(shards, tmp_path):
    index = tmp_path / "domains.json"
    index.write_text(json.dumps({"d0": ["000000001", "000010004", "000000002"], "d1": ["000000000"]}))
    source = WebDatasetSource("cc12m_d0", str(shards / "*.tar"), domain="d0", domain_index=str(index))
    assert [e.label for e in source.iter_examples()] == ["a green field", "a lighthouse at dusk"]
    assert source.last_stats["filtered"] == 6 and source.last_stats["bad_image"] == 1
    capped = WebDatasetSource("cc12m", str(shards / "*.tar"), max_examples=2)
    assert len(capped.examples()) == 2 and capped.last_stats["yielded"] == 2
    assert [k for k, _ in WebDatasetSource("c", str(shards / "00000.tar")).iter_captions()] == [
        "000000000", "000000001", "000000002"]  # captions only: the corrupt image is not decoded
    with pytest.raises(ConfigError, match="not in"):
        next(WebDatasetSource("x", str(shards / "*.tar"), domain="d9", domain_index=str(index)).iter_examples())


def test_data_stage_with_the_cc12m_domain_config(shards, tmp_path):
    """The shipped source config instantiates and the data stage writes a DatasetDict from it."""
    from pivotmerge.artifacts import ArtifactStore
    from pivotmerge.pipeline.data import load_dataset_dict, run_data_stage

    index = tmp_path / "domains.json"
    index.write_text(json.dumps({"d0": ["000000000", "000000001", "000010000", "000010004"]}))
    cfg = OmegaConf.load("conf/data/source/cc12m_domain.yaml")
    cfg.merge_with({"name": "cc12m_d0", "domain": "d0", "shards": str(shards / "*.tar"),
                    "domain_index": str(index)})
    split = OmegaConf.create({"train": 2, "val": 1, "test": 1, "pool": 0, "seed": 0})
    artifact = run_data_stage(ArtifactStore(tmp_path / "cache"), "cc12m_d0", cfg, split)
    dataset = load_dataset_dict(artifact.path)
    assert {k: len(v) for k, v in dataset.items()} == {"train": 2, "val": 1, "test": 1}
    assert dataset["train"][0]["image"].size == (12, 10)
