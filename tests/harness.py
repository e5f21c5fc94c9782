"""The tests' way to start several gloo ranks: :func:`sparse_dist.distributed.spawn.run_distributed`, which
refuses to run inside a test not marked ``distributed`` (or ``e2e``), so that ``make test-fast``, which selects
by marks, cannot pick up a test that starts processes without saying so."""

from sparse_dist.distributed import spawn

__all__ = ["run_distributed"]

# The marks of the test being set up or run; conftest.py sets them before each test's fixtures run, so a
# module-scoped fixture that starts ranks is checked against the first test that asks for it.
current_marks: set[str] | None = None


def run_distributed(fn, world_size, *args, **kwargs):
    """:func:`sparse_dist.distributed.spawn.run_distributed`, inside a test marked ``distributed`` or ``e2e``."""
    if current_marks is not None and not current_marks & {"distributed", "e2e"}:
        raise RuntimeError("this test starts gloo ranks but is not marked `distributed`: add "
                           "@pytest.mark.distributed (and `slow` if it takes more than a minute), see tests/README.md")
    return spawn.run_distributed(fn, world_size, *args, **kwargs)
