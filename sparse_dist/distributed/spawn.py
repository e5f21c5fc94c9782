"""Run a function on N freshly spawned local processes, as a real multi-rank job would (tests, benchmarks).

``run_distributed(fn, world_size, *args)`` starts ``world_size`` processes with the launcher's
environment variables set (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT), lets each join the
process group through :func:`sparse_dist.distributed.env.init_distributed`, calls ``fn(*args)`` and
returns the per-rank return values in rank order. A failure on any rank raises with that rank's
traceback. ``fn`` must be a module-level function (it is pickled by name).

Ranks are forked from a fork server that has imported torch, DeepSpeed, transformers and sparse_dist
once (``_PRELOAD``), so a call costs a fraction of a second instead of several CPU-seconds of imports per
rank; each rank starts with the caller's environment as it is at the call. Nothing in the fork server
runs torch operations, so no thread pool exists to be inherited.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import tempfile
import time
import traceback
from collections.abc import Callable
from multiprocessing import reduction
from pathlib import Path
from typing import Any

from sparse_dist.distributed.env import free_port


class _CallerFd:
    """One of the caller's file descriptors, duplicated into the rank when the rank is started (the fork
    server's own stdout and stderr are whatever they were when it started, not the caller's now)."""

    def __init__(self, fd: int):
        self.fd = fd

    def __reduce__(self):
        return _detach, (reduction.DupFd(self.fd),)


def _detach(duplicate) -> int:
    return duplicate.detach()


def _worker(fn: Callable, args: tuple, rank: int, world_size: int, port: int, out: str,
            environ: dict[str, str], streams: tuple[int, int]) -> None:
    for target, fd in zip((1, 2), streams):  # print where the caller's output goes now (pytest's capfd too)
        os.dup2(fd, target)
        os.close(fd)
    os.environ.clear()  # the caller's environment now, not the fork server's from when it started
    os.environ.update(environ)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:
        import torch.distributed as dist

        from sparse_dist.distributed.env import init_distributed, init_logging  # noqa: PLC0415 - in the child

        init_distributed()
        init_logging(rank)
        result = ("ok", fn(*args))
        if dist.is_initialized():  # an entry point (``sparse_dist.cli``'s commands) ends the group itself
            dist.barrier()
            dist.destroy_process_group()
    except BaseException:  # noqa: BLE001 - every failure must reach the parent
        result = ("error", traceback.format_exc())
    with open(out, "wb") as handle:
        pickle.dump(result, handle)


_PRELOAD = ["torch", "torch.distributed", "deepspeed", "transformers", "datasets", "sparse_dist.trainer"]
"""Imported once by the fork server; every rank is forked from it with these already loaded (importing
them afresh costs each rank several CPU-seconds)."""


def run_distributed(fn: Callable, world_size: int, *args: Any, timeout_s: float = 900) -> list[Any]:
    """``fn(*args)`` on ``world_size`` gloo ranks; the list of their results, rank 0 first."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        outputs = [str(Path(tmp) / f"rank{r}.pkl") for r in range(world_size)]
        processes = [context.Process(target=_worker,
                                     args=(fn, args, r, world_size, port, outputs[r], dict(os.environ),
                                           (_CallerFd(1), _CallerFd(2))))
                     for r in range(world_size)]
        for process in processes:
            process.start()
        deadline = time.monotonic() + timeout_s
        for process in processes:
            process.join(max(1.0, deadline - time.monotonic()))
        hung = [r for r, p in enumerate(processes) if p.is_alive()]
        for process in processes:
            if process.is_alive():
                process.kill()
        # The likeliest cause is reported: a rank that died without a result (killed, e.g. for memory) breaks
        # its peers' collectives; a rank that raised leaves its peers waiting until they time out.
        for rank, path in enumerate(outputs):
            if not Path(path).exists() and rank not in hung:
                raise RuntimeError(f"rank {rank} of {world_size} produced no result "
                                   f"({_exit_detail(processes[rank].exitcode)})")
        results = []
        for rank, path in enumerate(outputs):
            if not Path(path).exists():  # timed out: reported below, unless another rank's error explains it
                continue
            with open(path, "rb") as handle:
                status, value = pickle.load(handle)
            if status == "error":
                last = value.strip().splitlines()[-1] if value.strip() else "no traceback"
                raise RuntimeError(f"rank {rank} of {world_size} failed: {last}\n{value}")
            results.append(value)
        if hung:
            raise RuntimeError(f"rank {hung[0]} of {world_size} produced no result (timed out)")
        return results


def _exit_detail(exitcode: int | None) -> str:
    """A process's end in words: ``exit code 3``, or ``killed by SIGKILL (the kernel's OOM killer sends it
    when memory runs out)`` for a negative exit code."""
    if exitcode is None or exitcode >= 0:
        return f"exit code {exitcode}"
    try:
        name = signal.Signals(-exitcode).name
    except ValueError:  # a real-time signal has no name
        name = f"signal {-exitcode}"
    hint = " (the kernel's OOM killer sends it when memory runs out)" if -exitcode == signal.SIGKILL else ""
    return f"killed by {name}{hint}"
