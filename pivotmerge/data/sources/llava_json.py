"""LLaVA's pretraining JSON (``blip_laion_cc_sbu_558k.json`` format) with its image folder.

The file is a list of records::

    {"id": "004539375", "image": "00453/004539375.jpg",
     "conversations": [{"from": "human", "value": "<image>\\nRender a clear and concise summary of the photo."},
                       {"from": "gpt", "value": "select luxury furniture 3 - inch gel memory foam mattress topper"}]}

The label is the first ``gpt`` turn (the caption); ``image`` is relative to ``image_folder``. A ``.jsonl`` file
(one record per line) is read the same way. Records with a missing or undecodable image or a missing/empty
caption are skipped and counted, with a summary when the stream ends (``last_stats``), as for webdataset
shards. ``domain`` + ``domain_index`` keep the records whose ``id`` is listed for that domain (see
``pivotmerge split-domains``).
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from pivotmerge.data.sources.base import CaptionedCorpusSource
from pivotmerge.data.sources.webdataset import SkipCounter, clean_caption, decode_image, load_domain_keys
from pivotmerge.errors import ConfigError, DataError

IMAGE_TOKEN = "<image>"


def read_records(path: str | os.PathLike) -> list:
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"LLaVA JSON {path} not found: download it (docs/scale.md) or fix `json_path`")
    try:
        if path.suffix == ".jsonl":
            # one bad line must not lose the rest: undecodable lines become None and are counted
            return [_loads_or_none(line) for line in path.read_text().splitlines() if line.strip()]
        records = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a JSON list of records, found {type(records).__name__}")
    return records


def _loads_or_none(line: str):
    try:
        return json.loads(line)
    except ValueError:
        return None


def record_caption(record) -> tuple[str | None, str | None]:
    """(caption, None) or (None, skip reason) from a record's first gpt turn."""
    if not isinstance(record, dict) or not isinstance(record.get("conversations"), list):
        return None, "bad_record"
    for turn in record["conversations"]:
        if isinstance(turn, dict) and turn.get("from") in ("gpt", "assistant"):
            try:
                text = clean_caption(str(turn.get("value") or "").replace(IMAGE_TOKEN, " "))
            except UnicodeDecodeError:  # pragma: no cover - JSON text is already decoded
                return None, "bad_caption"
            return (text, None) if text else (None, "empty_caption")
    return None, "missing_caption"


class LlavaJsonSource(CaptionedCorpusSource):
    """Captioned images from a LLaVA pretraining JSON; label = the caption."""

    def __init__(self, name: str, json_path: str, image_folder: str, caption_templates: list[str] | None = None,
                 subject: str = "photo", max_examples: int | None = None, domain: str | None = None,
                 domain_index: str | None = None, max_caption_chars: int | None = None):
        super().__init__(name, list(caption_templates or ["{label}"]), subject, max_examples)
        if (domain is None) != (domain_index is None):
            raise ConfigError(f"source {name!r}: set both `domain` and `domain_index`, or neither")
        self.json_path, self.image_folder = str(json_path), str(image_folder)
        self.domain, self.domain_index = domain, domain_index
        self.max_caption_chars = max_caption_chars
        self.last_stats: dict | None = None
        self._labels: list[str] | None = None

    def iter_records(self, decode: bool = True) -> Iterator[tuple[str, str, Image.Image | None]]:
        """(key = record id, caption, image) for every usable record; decode=False skips reading images."""
        counter = SkipCounter(self.name, "llava-json")
        keys = load_domain_keys(self.domain_index, self.domain) if self.domain is not None else None
        records = read_records(self.json_path)
        folder = Path(self.image_folder).expanduser()
        if decode and not folder.is_dir():
            raise DataError(f"source {self.name!r}: image folder {folder} does not exist")
        try:
            for position, record in enumerate(records):
                key = str(record.get("id", position)) if isinstance(record, dict) else str(position)
                if keys is not None and key not in keys:
                    counter.counts["filtered"] += 1
                    continue
                caption, reason = record_caption(record)
                if reason:
                    counter.skip(reason, key)
                    continue
                if self.max_caption_chars and len(caption) > self.max_caption_chars:
                    caption = caption[:self.max_caption_chars].rsplit(" ", 1)[0] or caption[:self.max_caption_chars]
                relative = record.get("image")
                if not isinstance(relative, str) or not relative:
                    counter.skip("missing_image", key)
                    continue
                image = None
                if decode:
                    try:
                        data = (folder / relative).read_bytes()
                    except OSError:
                        counter.skip("missing_image", key)
                        continue
                    try:
                        image = decode_image(data)
                    except Exception:
                        counter.skip("bad_image", key)
                        continue
                counter.counts["yielded"] += 1
                yield key, caption, image
        finally:
            self.last_stats = counter.report()

    def fingerprint(self) -> dict:
        return {**super().fingerprint(), "json_path": self.json_path, "image_folder": self.image_folder,
                "domain": self.domain, "domain_index": self.domain_index,
                "max_caption_chars": self.max_caption_chars}
