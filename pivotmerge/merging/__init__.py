"""Merging library: the method registry, input/option checks and the tensor pieces methods share.

A merge method is a pure function over state dicts::

    fn(pivot: dict[str, Tensor], experts: list[dict[str, Tensor]], *, <options>,
       diagnostics: dict | None = None) -> dict[str, Tensor]

It works on task vectors ``tau_k = expert_k - pivot``, never mutates its inputs, does no I/O and keeps
no global state. Floating-point tensors are computed in float32 (float64 stays float64) and returned in
the pivot's dtype; non-floating tensors (integer buffers) are copied from the pivot.

* :mod:`pivotmerge.merging.registry`: the methods are the files ``conf/merge/<name>.yaml`` (``_target_``
  = the function, keys = its options with their defaults); :func:`merge` runs one by name.
* :mod:`pivotmerge.merging.ops`: task vectors, streaming, trim/sign election, per-layer grouping, SVD.
* :mod:`pivotmerge.merging.checks`: :func:`validate_inputs` and the option checks.

Adding a method: one Python file with the function and one YAML naming it (docs/method.md).
"""

from pivotmerge.merging.checks import (
    check_bool,
    check_choice,
    check_fraction,
    check_int,
    check_number,
    validate_inputs,
)
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
    NON_OPTIONS,
    Contract,
    accepted_extras,
    available,
    conf_dir,
    contract,
    contract_of,
    get_method,
    merge,
    method_defaults,
    method_options,
    needs_calibration,
)

__all__ = [
    "CHUNK",
    "NON_OPTIONS",
    "Contract",
    "FlatTaskVectors",
    "MergeConfigError",
    "MergeError",
    "MergeInputError",
    "StateDict",
    "accepted_extras",
    "available",
    "check_bool",
    "check_choice",
    "check_fraction",
    "check_int",
    "check_number",
    "chunks",
    "compute_dtype",
    "conf_dir",
    "contract",
    "contract_of",
    "diag_layer",
    "finalize",
    "float_keys",
    "get_method",
    "group_layers",
    "layer_name",
    "merge",
    "method_defaults",
    "method_options",
    "needs_calibration",
    "stacked_task_vector",
    "task_vectors",
    "validate_inputs",
]
