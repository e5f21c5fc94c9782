"""``python -m sparse_dist.cli <command> ...``: the ``sparse-dist`` command without its console script."""

import sys

from sparse_dist.cli import main

sys.exit(main())
