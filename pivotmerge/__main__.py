"""``python -m pivotmerge`` = the ``pivotmerge`` command."""

import sys

from pivotmerge.cli import main

sys.exit(main())
