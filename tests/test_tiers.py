"""The tiers select tests by their marks (``make test-fast``: ``-m "not slow and not e2e"``); a test that
starts gloo ranks without the ``distributed`` mark is refused, so it cannot land in the wrong tier unseen.
``make test``'s two workers take whole modules, longest first, the SLURM modules as one unit."""

import re

import pytest

import conftest
import harness
from conftest import REPO, SLURM_MODULES, unit_of


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


def test_make_test_uses_the_module_scheduler_in_collection_order(request, monkeypatch):
    """``make test`` asks for ``--dist loadscope --no-loadscope-reorder`` (xdist's own reorder would sort
    units by their number of tests, which puts the SLURM unit last), and under ``loadscope`` the conftest's
    scheduler makes the units; other ``--dist`` modes are xdist's own."""
    recipe = re.search(r"^test: .*\n\t(.*)$", (REPO / "Makefile").read_text(), re.MULTILINE).group(1)
    assert "-n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder" in recipe, recipe
    if not request.config.pluginmanager.hasplugin("xdist"):
        pytest.skip("pytest-xdist is not active (-p no:xdist)")

    from xdist.scheduler import LoadScopeScheduling

    monkeypatch.setattr(request.config.option, "dist", "load")
    assert conftest.pytest_xdist_make_scheduler(request.config, log=None) is None
    monkeypatch.setattr(request.config.option, "dist", "loadscope")
    # Built for real only inside an xdist session (it reads the workers' specs); here, what the hook builds.
    monkeypatch.setattr(conftest, "ModuleScheduling", lambda config, log: ("module scheduling", config, log))
    assert conftest.pytest_xdist_make_scheduler(request.config, log="log") == ("module scheduling", request.config,
                                                                                "log")
    monkeypatch.undo()
    assert issubclass(conftest.ModuleScheduling, LoadScopeScheduling)
    scheduler = object.__new__(conftest.ModuleScheduling)  # _split_scope reads nothing of the instance
    assert scheduler._split_scope("tests/test_slurm_two_nodes.py::test_x") == "slurm"
    assert scheduler._split_scope("tests/test_real_weights.py::test_y[a]") == "tests/test_real_weights.py"
