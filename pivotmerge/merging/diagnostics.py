"""Per-layer merge diagnostics: spectra, shared energy, sign conflicts, layer weights; JSON + PNG plots.

Usage (pipeline or CLI)::

    diag = {}
    merged = fn(pivot, experts, diagnostics=diag)     # the method fills its own fields
    collect(pivot, experts, merged, diag)              # generic per-layer statistics
    write_diagnostics(diag, out_dir)                   # diagnostics.json, spectra.png, layers.png

Fields of ``diag['layers'][layer]`` written by :func:`collect`:
  ``params``, ``tau_norms`` (per expert), ``merged_update_norm`` (||merged - pivot||),
  ``sign_conflict_rate`` (among entries where >= 2 experts moved, the fraction with both signs),
  ``tau_spectra`` (singular values of each expert's layer matrix), ``merged_spectrum``,
  ``spectrum_truncated`` (True when only the top values were computed with a randomized SVD).
The layer matrix is the layer's >= 2-D weights reshaped to (out, -1) with 1-D tensors of length ``out``
(biases) appended as extra columns. PivotMerge adds ``stack_singular_values``, ``shared_rank``,
``shared_energy_ratio``, ``agreement``, ``layer_weight``, ... (see pivotmerge/pivotmerge_method/method.py).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pivotmerge.merging.ops import compute_dtype, diag_layer, float_keys, group_layers, stacked_task_vector

MAX_FULL_SVD = 1024  # exact svdvals up to this min(m, n); randomized top-TOPK above
TOPK = 64


def layer_matrix(tensors: Sequence[Tensor]) -> Tensor | None:
    """(out, cols) matrix of a layer: >=2-D tensors flattened to (out, -1), 1-D of length out as columns."""
    mats = [t.reshape(t.shape[0], -1) for t in tensors if t.dim() >= 2]
    if not mats:
        return None
    out = mats[0].shape[0]
    cols = [m for m in mats if m.shape[0] == out]
    cols += [t.reshape(out, 1) for t in tensors if t.dim() == 1 and t.shape[0] == out]
    return torch.cat(cols, 1)


def singular_values(m: Tensor, max_full: int = MAX_FULL_SVD, topk: int = TOPK) -> tuple[list[float], bool]:
    """Singular values of ``m`` (exact when small, top-``topk`` randomized otherwise; deterministic)."""
    m = m.float()
    if min(m.shape) <= max_full:
        return torch.linalg.svdvals(m).tolist(), False
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        _, s, _ = torch.svd_lowrank(m, q=min(topk, min(m.shape)), niter=2)
    return s.tolist(), True


def collect(
    pivot: Mapping[str, Tensor],
    experts: Sequence[Mapping[str, Tensor]],
    merged: Mapping[str, Tensor],
    diagnostics: dict | None = None,
    *,
    spectra: bool = True,
    max_full_svd: int = MAX_FULL_SVD,
    topk: int = TOPK,
) -> dict:
    """Add the generic per-layer statistics to ``diagnostics`` (created if None) and return it."""
    diag = {} if diagnostics is None else diagnostics
    diag.setdefault("n_experts", len(experts))
    for layer, keys in group_layers(float_keys(pivot)).items():
        rec = diag_layer(diag, layer)
        rec["params"] = {k: list(pivot[k].shape) for k in keys}
        sq = torch.zeros(len(experts), dtype=torch.float64)
        upd_sq = 0.0
        conflicts = eligible = 0
        taus, upds = [], []
        for k in keys:
            tau = stacked_task_vector(pivot, experts, k)
            flat = tau.reshape(len(experts), -1)
            sq += flat.double().pow(2).sum(1)
            pos, neg = (flat > 0).sum(0), (flat < 0).sum(0)
            eligible += int(((pos + neg) >= 2).sum())
            conflicts += int(((pos > 0) & (neg > 0)).sum())
            upd = merged[k].to(compute_dtype(pivot[k].dtype)) - pivot[k].to(compute_dtype(pivot[k].dtype))
            upd_sq += float(upd.double().pow(2).sum())
            if spectra:
                taus.append(tau)
                upds.append(upd)
            del flat
        rec["tau_norms"] = sq.sqrt().tolist()
        rec["merged_update_norm"] = math.sqrt(upd_sq)
        rec["sign_conflict_rate"] = conflicts / eligible if eligible else 0.0
        if spectra:
            mats = [layer_matrix([t[i] for t in taus]) for i in range(len(experts))]
            if mats and mats[0] is not None:
                res = [singular_values(m, max_full_svd, topk) for m in mats]
                rec["tau_spectra"] = [r[0] for r in res]
                rec["merged_spectrum"], trunc = singular_values(layer_matrix(upds), max_full_svd, topk)
                rec["spectrum_truncated"] = trunc or any(r[1] for r in res)
        del taus, upds
    return diag


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, Tensor):
        return _jsonable(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_diagnostics(diag: Mapping, out_dir: str | os.PathLike, *, plots: bool = True) -> list[Path]:
    """Write ``diagnostics.json`` and (if plots) ``spectra.png`` and ``layers.png`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    js = out / "diagnostics.json"

    def _dump(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(_jsonable(diag), f, indent=2)

    _atomic_write(js, _dump)
    written.append(js)
    if plots and diag.get("layers"):
        written += _plots(diag, out)
    return written


def _plots(diag: Mapping, out: Path) -> list[Path]:
    title = diag.get("method", "merge")
    written = [_spectra_plot(diag["layers"], title, out), _layers_plot(diag["layers"], title, out)]
    return [p for p in written if p is not None]


def _figure(width: float, height: float):
    """An Agg figure of this size in inches (at 200 dpi)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg, no global pyplot state
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=200)
    FigureCanvasAgg(fig)
    return fig


def _spectra_plot(layers: Mapping, title: str, out: Path) -> Path | None:
    """spectra.png: the singular values of each expert's task vector and of the merged update, per layer."""
    spec_layers = [name for name, rec in layers.items() if rec.get("tau_spectra")]
    if not spec_layers:
        return None
    n = len(spec_layers)
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    fig = _figure(4.2 * ncols, 3.3 * nrows)
    for idx, name in enumerate(spec_layers):
        ax = fig.add_subplot(nrows, ncols, idx + 1)
        rec = layers[name]
        for i, s in enumerate(rec["tau_spectra"]):
            ax.semilogy(range(1, len(s) + 1), [max(v, 1e-12) for v in s], lw=1.0, alpha=0.8, label=f"expert {i}")
        if rec.get("merged_spectrum"):
            s = rec["merged_spectrum"]
            ax.semilogy(range(1, len(s) + 1), [max(v, 1e-12) for v in s], "k--", lw=1.6, label="merged update")
        ax.set_title(f"layer {name}" + (" (top-k)" if rec.get("spectrum_truncated") else ""), fontsize=9)
        ax.set_xlabel("index", fontsize=8)
        ax.set_ylabel("singular value", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, which="both", alpha=0.3)
        if idx == 0:
            ax.legend(fontsize=7, frameon=False)
    fig.suptitle(f"{title}: singular-value spectra of task vectors and merged update", fontsize=10)
    fig.tight_layout()
    p = out / "spectra.png"
    _atomic_write(p, lambda tmp: fig.savefig(tmp, format="png"))
    return p


def _layers_plot(layers: Mapping, title: str, out: Path) -> Path | None:
    """layers.png: one bar chart per per-layer statistic that the method recorded."""
    panels = [
        (key, label)
        for key, label in (
            ("layer_weight", "ALM layer weight"),
            ("shared_energy_ratio", "shared-energy ratio"),
            ("sign_conflict_rate", "sign-conflict rate"),
            ("agreement", "task-vector agreement"),
        )
        if any(isinstance(rec.get(key), (int, float)) for rec in layers.values())
    ]
    if not panels:
        return None
    names = list(layers)
    fig = _figure(3.6 * len(panels), 3.2)
    for j, (key, label) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), j + 1)
        vals = [layers[n].get(key) if isinstance(layers[n].get(key), (int, float)) else 0.0 for n in names]
        ax.bar(range(len(names)), vals, color="#4C72B0")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=45 if len(names) > 4 else 0,
                           ha="right" if len(names) > 4 else "center", fontsize=7)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("layer", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(f"{title}: per-layer statistics", fontsize=10)
    fig.tight_layout()
    p = out / "layers.png"
    _atomic_write(p, lambda tmp: fig.savefig(tmp, format="png"))
    return p


__all__ = ["collect", "layer_matrix", "singular_values", "write_diagnostics"]
