"""Baseline merge methods: one pure function per file, named by its ``conf/merge/<name>.yaml``.

Methods import shared pieces from :mod:`pivotmerge.merging.ops` / :mod:`pivotmerge.merging.checks`,
never from each other.
"""
