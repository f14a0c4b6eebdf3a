"""Entry point: `python run.py experiment=pivotmerge_vs_ties` (see README for sweeps and scale).

The same as `pivotmerge-run ...` / `python -m pivotmerge.run ...` (pivotmerge/run.py), kept for the checkout."""
from pivotmerge.run import main

if __name__ == "__main__":
    main()
