"""Shared test setup: offline hub, a private cache for tiny models, paths to the real data, the marks of the
running test handed to ``harness`` (which refuses to start ranks in a test not marked ``distributed``), and
the order and grouping in which ``make test``'s two pytest-xdist workers take the modules."""

import os
from pathlib import Path

import pytest

import harness

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO.parent / "shared" / "data"

# Nothing in the tests may reach for the network; spawned ranks inherit these.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def _tiny_model_cache(tmp_path_factory):
    """Tiny checkpoints are written once per test session into a private directory."""
    os.environ["SPARSE_DIST_CACHE"] = str(tmp_path_factory.mktemp("sparse_dist_cache"))
    yield


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA_DIR.is_dir():
        pytest.fail(f"the shared data directory {DATA_DIR} is missing (it must sit beside the repository)")
    return DATA_DIR


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    harness.current_marks = {mark.name for mark in item.iter_markers()}


# Modules that start a SLURM cluster run one after the other on one worker, so that no two SLURM jobs run at
# once (each job's ranks would take both cores).
SLURM_MODULES = {"test_slurm.py", "test_slurm_two_nodes.py"}


def unit_of(nodeid: str) -> str:
    """The unit of work a test belongs to (``tests/test_x.py::test_y[z]``): its module's path, or "slurm" for
    the SLURM modules."""
    module = nodeid.split("::", 1)[0]
    return "slurm" if Path(module).name in SLURM_MODULES else module


@pytest.hookimpl(trylast=True)  # after -m and -k deselect: the order is that of the tests that will run
def pytest_collection_modifyitems(items):
    """Units of work in the order ``make test``'s two workers should take them, longest first, so that the
    last to start are short: the SLURM unit, then modules with a ``slow`` or ``e2e`` test, then the rest,
    each tier in collection order (``--no-loadscope-reorder`` keeps it). Modules stay whole, so each module's fixtures
    live once."""
    long_units = {unit_of(item.nodeid) for item in items
                  if item.get_closest_marker("slow") or item.get_closest_marker("e2e")}

    def tier(item) -> int:
        unit = unit_of(item.nodeid)
        return 0 if unit == "slurm" else 1 if unit in long_units else 2

    items.sort(key=tier)


try:
    from xdist.scheduler import LoadScopeScheduling
except ImportError:  # without pytest-xdist the suite runs in one process, in the order above
    pass
else:
    class ModuleScheduling(LoadScopeScheduling):
        """``--dist loadscope`` (each module whole on one worker, its module fixtures set up once), with the
        SLURM modules one unit between them."""

        def _split_scope(self, nodeid: str) -> str:
            return unit_of(nodeid)

    @pytest.hookimpl(optionalhook=True)  # pytest -p no:xdist: no such hook, and none needed
    def pytest_xdist_make_scheduler(config, log):
        """``make test``: ``-n 2 --dist loadscope --no-loadscope-reorder``; other ``--dist`` modes as xdist has them."""
        return ModuleScheduling(config, log) if config.getvalue("dist") == "loadscope" else None
