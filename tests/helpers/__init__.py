"""What the tests share, in one place (the fixtures are in tests/conftest.py):

* ``REPO``, ``CONF``, ``GOLDEN`` - the repository root, its Hydra configs, the golden report files;
* :mod:`tests.helpers.compose` - the real Hydra config composed for a test (tiny models, small real sources, tmp);
* :mod:`tests.helpers.tiny_models` - tiny random models saved on disk (also used by tools/tiny_table.py);
* :mod:`tests.helpers.merging` - the one merge call path with options as keywords;
* :mod:`tests.helpers.rows` - known rows of a results store and sweep job folders;
* :mod:`tests.helpers.shards` - webdataset shards written by hand;
* :mod:`tests.helpers.import_graph` - the project's import graph, its cycles and upward imports;
* ``reliability_worker.py``, ``scale_ddp_worker.py`` - pipeline runs that tests launch in their own processes.

Every test imports these as ``from tests.helpers... import ...``.
"""
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"
GOLDEN = Path(__file__).resolve().parent / "golden"

__all__ = ["CONF", "GOLDEN", "REPO"]
