"""Where a benchmark result came from: the command, the commit, whether the code had uncommitted
changes, and the machine. Every benchmark's JSON starts with this."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def code_version() -> dict:
    """The commit of the checkout and whether the code that runs (not results or docs) differs from it."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    code = ("sparse_dist", "launch", "configs", "benchmarks", ":!benchmarks/results")
    changed = git("status", "--porcelain", "--", *code)
    return {"commit": git("rev-parse", "HEAD"), "uncommitted_changes": bool(changed)}


def trainer_unchanged_since(commit: str) -> bool:
    """Whether the trainer (package, launcher, configs) at HEAD is the same as at ``commit``."""
    trainer = ("sparse_dist", "launch", "configs")
    diff = subprocess.run(["git", "diff", "--quiet", commit, "HEAD", "--", *trainer], cwd=REPO)
    return diff.returncode == 0


def provenance() -> dict:
    return {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        **code_version(),
        "machine": {"cpus": torch.get_num_threads(), "platform": platform.platform(), "torch": torch.__version__},
    }
