"""Evaluation through lmms-eval: model adapter, embedded benchmark suite, results store, paper table."""
