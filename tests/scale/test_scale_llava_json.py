"""LLaVA pretraining JSON (558K format) written here, read back through the real loader (skips counted)."""
import io
import json

import pytest
from PIL import Image

from pivotmerge.data.sources.llava_json import LlavaJsonSource
from pivotmerge.errors import DataError


def _record(key, caption, image=None):
    turns = [{"from": "human", "value": "<image>\nRender a clear and concise summary of the photo."}]
    if caption is not None:
        turns.append({"from": "gpt", "value": caption})
    return {"id": key, "image": image if image is not None else f"{key[:5]}/{key}.jpg", "conversations": turns}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("llava558k")
    images = root / "images"
    records = [_record("004539375", "select luxury furniture 3 - inch gel memory foam mattress topper"),
               _record("002239345", "a grey watercolor painting of a bird"),
               _record("002239346", "a corrupt file"),        # image bytes are not an image
               _record("002239347", " \n "),                   # empty caption
               _record("002239348", "an image that was never downloaded"),  # file missing
               _record("002239349", None),                     # no gpt turn
               "not a record",                                 # malformed entry
               _record("002239350", "a red kite over the sea", image="")]   # no image path
    for i, record in enumerate(records[:3]):
        path = images / record["image"]
        path.parent.mkdir(parents=True, exist_ok=True)
        if i == 2:
            path.write_bytes(b"GIF89a garbage")
        else:
            buf = io.BytesIO()
            Image.new("RGB", (16, 12), (40 * i, 90, 200)).save(buf, format="JPEG")
            path.write_bytes(buf.getvalue())
    (root / "blip_laion_cc_sbu_558k.json").write_text(json.dumps(records))
    return root


def test_reads_captions_and_counts_skips(corpus):
    source = LlavaJsonSource("llava", corpus / "blip_laion_cc_sbu_558k.json", corpus / "images")
    examples = source.examples()
    assert [e.label for e in examples] == ["select luxury furniture 3 - inch gel memory foam mattress topper",
                                           "a grey watercolor painting of a bird"]
    assert examples[1].image.size == (16, 12)
    stats = source.last_stats
    assert stats["yielded"] == 2 and stats["skipped"] == 6
    assert (stats["bad_image"], stats["empty_caption"], stats["missing_image"], stats["missing_caption"],
            stats["bad_record"]) == (1, 1, 2, 1, 1)
    assert source.labels() == [e.label for e in examples] + ["a corrupt file", "an image that was never downloaded"]


def test_domain_filter_jsonl_and_errors(corpus, tmp_path):
    index = tmp_path / "domains.json"
    index.write_text(json.dumps({"d0": ["002239345"], "d1": ["004539375", "002239346"]}))
    source = LlavaJsonSource("llava_d1", corpus / "blip_laion_cc_sbu_558k.json", corpus / "images",
                             domain="d1", domain_index=str(index))
    assert len(source.examples()) == 1 and source.last_stats["bad_image"] == 1
    assert source.last_stats["filtered"] == 6
    records = json.loads((corpus / "blip_laion_cc_sbu_558k.json").read_text())
    lines = [json.dumps(r) for r in records[:2]] + ["{truncated"]
    (tmp_path / "part.jsonl").write_text("\n".join(lines))
    jsonl = LlavaJsonSource("llava", tmp_path / "part.jsonl", corpus / "images")
    assert len(jsonl.examples()) == 2 and jsonl.last_stats["bad_record"] == 1
    with pytest.raises(DataError, match="not found"):
        LlavaJsonSource("llava", tmp_path / "missing.json", corpus / "images").examples()
