"""PivotMerge, the method (docs/method.md has the equations), one module per part:

* ``method.py``: ``pivotmerge_merge``, its spec (``@merge_method``) and the parts put together layer by layer;
* ``sdf.py``: SDF (shared-space decomposition and filtering) in the task-vector space;
* ``sdf_features.py``: SDF in the layers' input (feature) space, from calibration statistics;
* ``alm.py``: ALM, the alignment-guided layer weights (proxy scores, data probes, the measured search);
* ``align.py``: the alignment step before any merge (every method's ``align``): experts mapped into the
  pivot's frame by hidden-unit permutations.

Nothing is imported here, so that ``pivotmerge.merging`` can use ``align`` without importing the method.
"""
