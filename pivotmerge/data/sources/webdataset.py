"""Captioned image corpora stored as webdataset shards in img2dataset's layout (e.g. CC12M).

A shard is a ``.tar`` whose members are grouped into samples by key: ``000000012.jpg``, ``000000012.txt``
(the caption) and ``000000012.json`` (img2dataset's metadata: url, key, status, caption, ...). Shards are
streamed with the standard library's ``tarfile`` (no extra dependency), in the order given.

``shards`` takes one spec or a list of specs; each spec is a local path, a ``file://`` URL, a glob
(``/data/cc12m/*.tar``) or a webdataset-style brace pattern (``/data/cc12m/{00000..01242}.tar``, also
``{a,b}``). Remote URLs are refused with a message: download with img2dataset first (docs/scale.md).

A multi-hour run never dies on one bad sample: samples whose image is missing or does not decode, and
samples whose caption is missing, empty or not UTF-8, are skipped and counted, as are unreadable or
truncated shards; a summary is logged when the stream ends (also kept in ``last_stats``).

``domain`` + ``domain_index`` keep only the samples listed for that domain in a JSON file
``{domain: [sample key, ...]}``, as written by ``pivotmerge split-domains`` (pivotmerge.data.clustering).
The sample key is img2dataset's key (the member name before its first dot), unique across a download.
"""
from __future__ import annotations

import glob
import io
import json
import logging
import os
import re
import tarfile
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from PIL import Image

from pivotmerge.data.sources.base import CaptionedCorpusSource
from pivotmerge.errors import ConfigError, DataError

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
SKIP_REASONS = ("missing_image", "bad_image", "missing_caption", "empty_caption", "bad_caption")


# --------------------------------------------------------------------------------------- shared helpers
class SkipCounter:
    """Counts what a streaming source read, skipped (by reason) and filtered; renders a one-line summary."""

    def __init__(self, source: str, kind: str):
        self.source, self.kind = source, kind
        self.counts: Counter = Counter()

    def skip(self, reason: str, detail: str = "") -> None:
        self.counts[reason] += 1
        if self.counts[reason] <= 3:  # the first few of each kind, with the sample named; then only counts
            log.debug("%s source %r: skipped %s (%s)", self.kind, self.source, detail, reason)

    @property
    def skipped(self) -> int:
        return sum(v for k, v in self.counts.items() if k not in ("yielded", "filtered", "shards"))

    def as_dict(self) -> dict:
        return {"yielded": self.counts["yielded"], "skipped": self.skipped, "filtered": self.counts["filtered"],
                **{k: v for k, v in sorted(self.counts.items()) if k not in ("yielded", "filtered")}}

    def summary(self) -> str:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items())
                            if k not in ("yielded", "filtered", "shards"))
        text = f"{self.kind} source {self.source!r}: {self.counts['yielded']} samples"
        if "shards" in self.counts:
            text += f" from {self.counts['shards']} shard(s)"
        text += f"; skipped {self.skipped}" + (f" ({reasons})" if reasons else "")
        if self.counts["filtered"]:
            text += f"; {self.counts['filtered']} outside the domain"
        return text

    def report(self) -> dict:
        (log.warning if self.skipped else log.info)("%s", self.summary())
        return self.as_dict()


def clean_caption(raw) -> str | None:
    """Whitespace-normalised caption text, or None when it is empty / not text."""
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8")  # UnicodeDecodeError -> the caller counts a bad caption
    if not isinstance(raw, str):
        return None
    text = " ".join(raw.split())
    return text or None


def decode_image(data: bytes) -> Image.Image:
    """Fully decode once (catches truncated/corrupt files), then return a lazy image over the bytes.

    The lazy image costs only the compressed bytes in memory and keeps its format (JPEG stays JPEG when the
    data stage writes it); it decodes again when used.
    """
    with Image.open(io.BytesIO(data)) as probe:
        probe.load()
        if min(probe.size) < 1:
            raise ValueError("empty image")
    return Image.open(io.BytesIO(data))


def load_domain_keys(domain_index: str | os.PathLike, domain: str) -> set[str]:
    path = Path(domain_index).expanduser()
    if not path.is_file():
        raise ConfigError(f"domain index {path} not found: run `pivotmerge split-domains` first (docs/scale.md)")
    try:
        index = json.loads(path.read_text())
    except ValueError as exc:
        raise DataError(f"domain index {path} is not valid JSON: {exc}") from exc
    if not isinstance(index, dict) or domain not in index:
        names = sorted(index) if isinstance(index, dict) else []
        raise ConfigError(f"domain {domain!r} is not in {path}; domains there: {names}")
    return {str(k) for k in index[domain]}


# --------------------------------------------------------------------------------------- shard specs
_BRACE = re.compile(r"\{([^{}]*)\}")


def expand_braces(pattern: str) -> list[str]:
    """webdataset brace syntax: ``{000..012}`` (zero-padded like the left bound) and ``{a,b,c}``."""
    match = _BRACE.search(pattern)
    if match is None:
        return [pattern]
    body, head, tail = match.group(1), pattern[:match.start()], pattern[match.end():]
    range_match = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if range_match:
        lo, hi = range_match.groups()
        if int(hi) < int(lo):
            raise ConfigError(f"shard pattern {pattern!r}: empty range {{{body}}}")
        width = len(lo) if lo.startswith("0") else 0
        options = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    elif "," in body:
        options = body.split(",")
    else:
        options = ["{" + body + "}"]  # not a brace expression: keep literally
        return [head + options[0] + t for t in expand_braces(tail)]
    return [e for option in options for e in expand_braces(head + option + tail)]


def expand_shards(shards: str | Iterable[str]) -> list[str]:
    """Shard specs -> ordered list of local paths (globs sorted; missing literal paths kept and counted later)."""
    specs = [shards] if isinstance(shards, (str, os.PathLike)) else list(shards)
    if not specs:
        raise ConfigError("no shards given: set the source's `shards` to a path, glob or brace pattern")
    out: list[str] = []
    for spec in specs:
        spec = str(spec)
        if spec.startswith("file://"):
            spec = spec[len("file://"):]
        if re.match(r"^[a-z][a-z0-9+.-]*:", spec) and not re.match(r"^[A-Za-z]:[\\/]", spec):
            raise ConfigError(
                f"shard {spec!r} is not a local path: download the corpus with img2dataset first "
                "(docs/scale.md) and point `shards` at the .tar files")
        for path in expand_braces(os.path.expanduser(spec)):
            if any(c in path for c in "*?["):
                out.extend(sorted(glob.glob(path)))
            else:
                out.append(path)
    return out


def iter_tar_samples(path: str, counter: SkipCounter) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) for each sample of one shard, streamed; a broken shard is counted, not raised."""
    current, members = None, {}
    try:
        with tarfile.open(path, mode="r|*") as tar:
            counter.counts["shards"] += 1
            for member in tar:
                if not member.isfile():
                    continue
                directory, base = os.path.split(member.name)
                if base.startswith(".") or "." not in base:
                    continue
                stem, ext = base.split(".", 1)
                key = f"{directory}/{stem}" if directory else stem
                if key != current:
                    if current is not None:
                        yield current, members
                    current, members = key, {}
                handle = tar.extractfile(member)
                members[ext.lower()] = handle.read() if handle is not None else b""
    except FileNotFoundError:
        counter.skip("missing_shard", path)
        log.warning("shard %s not found: skipped", path)
        return
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        counter.skip("bad_shard", path)
        log.warning("shard %s is unreadable or truncated (%s): skipped the rest of it", path, exc)
        return  # the sample being read when the shard broke is incomplete: dropped
    if current is not None:
        yield current, members


# --------------------------------------------------------------------------------------- the adapter
class WebDatasetSource(CaptionedCorpusSource):
    """Captioned images from img2dataset-layout webdataset shards; label = the caption."""

    def __init__(self, name: str, shards, caption_templates: list[str] | None = None,
                 subject: str = "photo", max_examples: int | None = None, domain: str | None = None,
                 domain_index: str | None = None, caption_ext: str = "txt",
                 image_exts: Iterable[str] = IMAGE_EXTS, max_caption_chars: int | None = None):
        super().__init__(name, list(caption_templates or ["{label}"]), subject, max_examples)
        self.shards = [shards] if isinstance(shards, str) else list(shards)
        self.domain, self.domain_index = domain, domain_index
        if (domain is None) != (domain_index is None):
            raise ConfigError(f"source {name!r}: set both `domain` and `domain_index`, or neither")
        self.caption_ext = caption_ext.lower()
        self.image_exts = tuple(e.lower() for e in image_exts)
        self.max_caption_chars = max_caption_chars
        self.last_stats: dict | None = None
        self._labels: list[str] | None = None

    # -- records --------------------------------------------------------------------------------------
    def _caption(self, sample: dict[str, bytes]) -> tuple[str | None, str | None]:
        """(caption, None) or (None, skip reason). Falls back to the json's `caption` field."""
        raw = sample.get(self.caption_ext)
        if raw is None and "json" in sample:
            try:
                raw = json.loads(sample["json"]).get("caption")
            except (ValueError, AttributeError):
                raw = None
        if raw is None:
            return None, "missing_caption"
        try:
            text = clean_caption(raw)
        except UnicodeDecodeError:
            return None, "bad_caption"
        if text is None:
            return None, "empty_caption"
        if self.max_caption_chars and len(text) > self.max_caption_chars:
            text = text[:self.max_caption_chars].rsplit(" ", 1)[0] or text[:self.max_caption_chars]
        return text, None

    def iter_records(self, decode: bool = True) -> Iterator[tuple[str, str, Image.Image | None]]:
        """(key, caption, image) for every usable sample; with decode=False the image is not read (None)."""
        counter = SkipCounter(self.name, "webdataset")
        keys = load_domain_keys(self.domain_index, self.domain) if self.domain is not None else None
        paths = expand_shards(self.shards)
        if not any(os.path.exists(p) for p in paths):
            raise DataError(f"source {self.name!r}: none of the {len(paths)} shard(s) exists "
                            f"(first: {paths[0] if paths else self.shards!r}); check `shards`")
        try:
            for path in paths:
                for key, sample in iter_tar_samples(path, counter):
                    if keys is not None and key not in keys:
                        counter.counts["filtered"] += 1
                        continue
                    caption, reason = self._caption(sample)
                    if reason:
                        counter.skip(reason, key)
                        continue
                    image = None
                    ext = next((e for e in self.image_exts if e in sample), None)
                    if ext is None:
                        counter.skip("missing_image", key)
                        continue
                    if decode:
                        try:
                            image = decode_image(sample[ext])
                        except Exception:  # any decoder failure: truncated, not an image, bomb check
                            counter.skip("bad_image", key)
                            continue
                    counter.counts["yielded"] += 1
                    yield key, caption, image
        finally:  # also runs when the consumer stops early (max_examples)
            self.last_stats = counter.report()

    def fingerprint(self) -> dict:
        return {**super().fingerprint(), "shards": self.shards, "domain": self.domain,
                "domain_index": self.domain_index, "caption_ext": self.caption_ext,
                "max_caption_chars": self.max_caption_chars}
