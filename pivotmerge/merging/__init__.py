"""Merging library: the method registry, input/option checks and the tensor pieces methods share.

A merge method is a pure function over state dicts::

    fn(pivot: dict[str, Tensor], experts: list[dict[str, Tensor]], *, <options>,
       diagnostics: dict | None = None) -> dict[str, Tensor]

It works on task vectors ``tau_k = expert_k - pivot``, never mutates its inputs, does no I/O and keeps
no global state. Floating-point tensors are computed in float32 (float64 stays float64) and returned in
the pivot's dtype; non-floating tensors (integer buffers) are copied from the pivot.

* :mod:`pivotmerge.merging.registry`: the methods are the files ``conf/merge/<name>.yaml`` (``_target_``
  = the function, keys = its options with their defaults).
* :mod:`pivotmerge.merging.spec`: what a method declares (``@merge_method``: options' kinds and ranges, its
  contract, the option a scale search varies, the statistics or loss it needs); the option checks come from it.
* :mod:`pivotmerge.merging.call`: :func:`merge`, the one way to run a method (by name or function).
* :mod:`pivotmerge.merging.ops`: task vectors, streaming, trim/sign election, per-layer grouping, SVD.
* :mod:`pivotmerge.merging.checks`: :func:`validate_inputs` and the checks of the option kinds.

Adding a method: one Python file with the function and one YAML naming it (docs/method.md).
"""

from pivotmerge.merging.call import merge
from pivotmerge.merging.checks import validate_inputs
from pivotmerge.merging.errors import MergeConfigError, MergeError, MergeInputError
from pivotmerge.merging.ops import (
    CHUNK,
    FlatTaskVectors,
    StateDict,
    chunks,
    compute_dtype,
    diag_layer,
    finalize,
    float_keys,
    group_layers,
    layer_name,
    stacked_task_vector,
    task_vectors,
)
from pivotmerge.merging.registry import (
    available,
    conf_dir,
    get_method,
    get_spec,
    method_defaults,
    needs_calibration,
)
from pivotmerge.merging.spec import Contract, MethodSpec, Options, merge_method, spec_of

__all__ = [
    "CHUNK",
    "Contract",
    "FlatTaskVectors",
    "MergeConfigError",
    "MergeError",
    "MergeInputError",
    "MethodSpec",
    "Options",
    "StateDict",
    "available",
    "chunks",
    "compute_dtype",
    "conf_dir",
    "diag_layer",
    "finalize",
    "float_keys",
    "get_method",
    "get_spec",
    "group_layers",
    "layer_name",
    "merge",
    "merge_method",
    "method_defaults",
    "needs_calibration",
    "spec_of",
    "stacked_task_vector",
    "task_vectors",
    "validate_inputs",
]
