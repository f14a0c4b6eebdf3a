"""The Hydra configs (config groups, one YAML per choice). Shipped inside the package as `pivotmerge.conf`
(pivotmerge/conf links here in a checkout), so Hydra finds them as `pkg://pivotmerge.conf` after any install."""
