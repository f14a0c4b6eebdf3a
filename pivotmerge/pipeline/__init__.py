"""The pipeline: data -> features -> pivot -> experts -> merge -> eval -> report, one module per stage."""
