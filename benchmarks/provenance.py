"""Where a benchmark result came from: the command, the commit, whether the code had uncommitted
changes, and the machine. Every benchmark's JSON starts with this."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
TRAINER = ("sparse_dist", "launch", "configs")
"""The code a training run executes; with the benchmarks themselves, the code whose changes a result notes."""


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)


def code_version() -> dict:
    """The commit of the checkout and whether the code that runs (not results or docs) differs from it."""
    changed = _git("status", "--porcelain", "--", *TRAINER, "benchmarks", ":!benchmarks/results").stdout.strip()
    return {"commit": _git("rev-parse", "HEAD").stdout.strip(), "uncommitted_changes": bool(changed)}


def trainer_unchanged_since(commit: str) -> bool:
    """Whether the trainer (package, launcher, configs) at HEAD is the same as at ``commit``."""
    return _git("diff", "--quiet", commit, "HEAD", "--", *TRAINER).returncode == 0


def provenance() -> dict:
    return {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        **code_version(),
        "machine": {"cpus": torch.get_num_threads(), "platform": platform.platform(), "torch": torch.__version__},
    }
