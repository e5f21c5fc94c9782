"""Shared test setup: offline hub, a private cache for tiny models, paths to the real data, and the marks of
the running test handed to ``harness`` (which refuses to start ranks in a test not marked ``distributed``)."""

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
