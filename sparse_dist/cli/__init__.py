"""The ``sparse-dist`` command line: one subcommand per module of this package.

    sparse-dist train --config configs/tiny_bert_sst2.yaml      # train (and prune); see sparse-dist train --help
    sparse-dist export --run-dir runs/smp_minilm_sst2           # export a run's latest checkpoint
    sparse-dist eval --model runs/smp_minilm_sst2/final/model --config runs/smp_minilm_sst2/config.yaml
    sparse-dist report runs/smp_minilm_sst2                     # draw a run's report (PNG and HTML)
    sparse-dist plan --config configs/pins_t5_large.yaml --world-size 8   # memory per rank, nothing allocated

Each module has ``main(argv, prog) -> exit status``; a subcommand is imported only when it runs, so
``--help`` stays quick. A process ends through :func:`exit_after` (the console scripts, ``python -m
sparse_dist.cli`` and ``launch/*.py``), never by returning into the interpreter's teardown after its ranks
met (see :func:`sparse_dist.distributed.env.finish_process`).
"""

from __future__ import annotations

import importlib
import sys
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

SUBCOMMANDS = {
    "train": ("sparse_dist.cli.train", "train (and prune) a model described by a YAML config"),
    "export": ("sparse_dist.cli.export", "export a run's latest checkpoint (dense, or compressed)"),
    "eval": ("sparse_dist.cli.eval", "score an exported model (or base model + mask) on its task's dev set"),
    "report": ("sparse_dist.cli.report", "draw a run's loss, metrics, sparsity and per-layer map (PNG, HTML)"),
    "plan": ("sparse_dist.cli.plan", "memory per rank of a run (weights, optimizer, pruning state, teacher)"),
}


EXAMPLES = [line for line in __doc__.splitlines() if line.startswith("    sparse-dist ")]


def usage() -> str:
    width = max(len(name) for name in SUBCOMMANDS)
    lines = ["usage: sparse-dist <command> [arguments]   (sparse-dist <command> --help for its own)", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in SUBCOMMANDS.items()]
    lines += ["", "examples:", *EXAMPLES]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"error: unknown command '{name}' (choose from {', '.join(SUBCOMMANDS)})", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    return module.main(rest, prog=f"sparse-dist {name}")


def exit_with(status: int) -> NoReturn:
    """End the process with ``status``: through :func:`~sparse_dist.distributed.env.finish_process` where
    this process may have started ranks (the module that starts them is loaded), else ``sys.exit``."""
    env = sys.modules.get("sparse_dist.distributed.env")
    if env is None:
        sys.exit(status)
    env.finish_process(status)


def exit_after(command: Callable[..., int], *args: Any, **kwargs: Any) -> NoReturn:
    """Run ``command(*args, **kwargs)`` and end the process with its status through :func:`exit_with`; an
    exception is printed and ends it with status 1 (never a rank aborted in the interpreter's teardown)."""
    try:
        status = command(*args, **kwargs)
    except Exception:  # noqa: BLE001 - any failure of the command: its traceback, then status 1
        traceback.print_exc()
        status = 1
    exit_with(status)


def run() -> NoReturn:
    """The ``sparse-dist`` console script: :func:`main` on ``sys.argv``, through :func:`exit_after`."""
    exit_after(main)
