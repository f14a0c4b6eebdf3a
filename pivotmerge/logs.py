"""Console output: our own progress bars say what runs, so the libraries' per-shard bars and notices go."""
from __future__ import annotations


def quiet_libraries() -> None:
    import logging
    import warnings

    import datasets
    import transformers

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # The frozen LLM and vision tower are in eval mode on purpose; the pytree notice is Lightning-internal.
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    datasets.disable_progress_bars()
    transformers.logging.disable_progress_bar()
    transformers.logging.set_verbosity_error()
