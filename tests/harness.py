"""The tests' way to start several gloo ranks: :func:`sparse_dist.distributed.spawn.run_distributed`."""

from sparse_dist.distributed.spawn import run_distributed

__all__ = ["run_distributed"]
