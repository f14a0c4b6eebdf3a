"""One adapter per data source. Each is selected by `_target_` in `conf/data/source/<name>.yaml`."""
