"""The tiers select tests by their marks (``make test-fast``: ``-m "not slow and not e2e"``); a test that
starts gloo ranks without the ``distributed`` mark is refused, so it cannot land in the wrong tier unseen.
``make test``'s two workers take whole modules, longest first, the SLURM modules as one unit."""

import pytest

import harness
from conftest import SLURM_MODULES, unit_of


def test_an_unmarked_test_cannot_start_ranks():
    with pytest.raises(RuntimeError, match="not marked `distributed`"):
        harness.run_distributed(print, 2)


@pytest.mark.distributed
def test_a_distributed_test_sees_its_mark():
    assert "distributed" in harness.current_marks


def test_modules_run_whole_and_longest_first_with_the_slurm_modules_one_unit(request):
    """The order this session collected in (the order the workers take units): each module's tests next to
    each other, then the SLURM modules first, modules with a ``slow`` or ``e2e`` test next, the rest last."""
    items = request.session.items
    modules = [item.path.name for item in items]
    runs = [m for i, m in enumerate(modules) if i == 0 or modules[i - 1] != m]
    assert len(runs) == len(set(runs)), runs
    long = {item.path.name for item in items if item.get_closest_marker("slow") or item.get_closest_marker("e2e")}
    tiers = [0 if m in SLURM_MODULES else 1 if m in long else 2 for m in runs]
    assert tiers == sorted(tiers), list(zip(runs, tiers))
    assert unit_of("tests/test_slurm.py::test_a[x]") == unit_of("tests/test_slurm_two_nodes.py::test_b") == "slurm"
    assert unit_of("tests/test_config.py::test_c[a::b]") == "tests/test_config.py"
