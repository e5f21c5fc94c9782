"""``python -m sparse_dist.cli <command> ...``: the ``sparse-dist`` command without its console script."""

from sparse_dist.cli import run

run()
