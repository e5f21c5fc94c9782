"""Where a benchmark result came from: the command, the commit, whether the code had uncommitted
changes, and the machine. Every benchmark's JSON starts with this."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import torch


def provenance() -> dict:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True).stdout.strip()

    return {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "commit": git("rev-parse", "HEAD"),
        "uncommitted_changes": bool(git("status", "--porcelain", "--", "sparse_dist", "launch", "benchmarks",
                                        ":!benchmarks/results")),
        "machine": {"cpus": torch.get_num_threads(), "platform": platform.platform(), "torch": torch.__version__},
    }
