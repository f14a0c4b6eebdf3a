"""Tensor pieces that merge methods share (methods import these, never each other), one module per kind:

* :mod:`~pivotmerge.merging.ops.state` - state dicts: :func:`compute_dtype`, :func:`float_keys`,
  :func:`task_vectors`, :func:`stacked_task_vector`, :func:`finalize`, per-layer grouping (:func:`layer_name`,
  :func:`group_layers`), :func:`diag_layer`;
* :mod:`~pivotmerge.merging.ops.stream` - streamed task vectors: :class:`FlatTaskVectors` and :func:`chunks`
  (no K x n temporary), :func:`summed_task_vector`, :func:`mean_task_vector`, :func:`apply_update` (the one
  final addition);
* :mod:`~pivotmerge.merging.ops.trim` - trim / sign election / disjoint merge (TIES and everything built on
  it): :func:`kth_largest_1d`, :func:`kth_largest`, :func:`global_thresholds`, :func:`ties_combine`;
* :mod:`~pivotmerge.merging.ops.svd` - matrices: :func:`is_matrix`, :func:`thin_svd` (LAPACK, or the smaller
  Gram matrix in float64 for elongated matrices) and :func:`polar` (orthogonal polar factor = Procrustes
  orthogonalisation).

Methods import every piece from here (``from pivotmerge.merging.ops import ...``). Floating-point tensors are
computed in float32 (float64 stays float64), see :func:`compute_dtype`.
"""

from pivotmerge.merging.ops.state import (
    StateDict,
    TaskVectorsOf,
    compute_dtype,
    diag_layer,
    finalize,
    float_keys,
    group_layers,
    layer_name,
    stacked_task_vector,
    task_vector,
    task_vectors,
)
from pivotmerge.merging.ops.stream import (
    CHUNK,
    FlatTaskVectors,
    apply_update,
    chunks,
    mean_task_vector,
    summed_task_vector,
)
from pivotmerge.merging.ops.svd import SVD_RTOL, is_matrix, polar, thin_svd
from pivotmerge.merging.ops.trim import (
    TIES_COMBINES,
    TIES_SCOPES,
    TIES_SIGNS,
    global_thresholds,
    kth_largest,
    kth_largest_1d,
    ties_combine,
)

__all__ = [
    "CHUNK",
    "SVD_RTOL",
    "TIES_COMBINES",
    "TIES_SCOPES",
    "TIES_SIGNS",
    "FlatTaskVectors",
    "StateDict",
    "TaskVectorsOf",
    "apply_update",
    "chunks",
    "compute_dtype",
    "diag_layer",
    "finalize",
    "float_keys",
    "global_thresholds",
    "group_layers",
    "is_matrix",
    "kth_largest",
    "kth_largest_1d",
    "layer_name",
    "mean_task_vector",
    "polar",
    "stacked_task_vector",
    "summed_task_vector",
    "task_vector",
    "task_vectors",
    "thin_svd",
    "ties_combine",
]
