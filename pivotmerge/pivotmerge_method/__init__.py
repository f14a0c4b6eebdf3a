"""PivotMerge, the method (docs/method.md has the equations), one module per part:

* ``method.py``: ``pivotmerge_merge``, its spec (``@merge_method``) and the parts put together layer by layer;
* ``sdf.py``: SDF (shared-space decomposition and filtering) in the task-vector space;
* ``sdf_features.py``: SDF in the layers' input (feature) space, from calibration statistics;
* ``alm.py``: ALM, the alignment-guided layer weights (proxy scores, data probes, the measured search);

The alignment step the method starts from (experts mapped into the pivot's frame by hidden-unit permutations)
is every method's `align` option, so it lives with the merge call in ``pivotmerge/merging/align.py``: here it
would make the merging layer and this package import each other (tests/test_import_graph.py).
"""
