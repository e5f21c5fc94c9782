"""Simulate W ranks in one process with threads, for fast property tests of collective algorithms.

``run_ranks(fn, world_size)`` calls ``fn(comm)`` on W threads; each gets a communicator whose
``all_reduce`` combines the tensors of all W threads (sum or max), like the real collective.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch


class _Exchange:
    def __init__(self, world_size: int):
        self.world_size = world_size
        self.barrier = threading.Barrier(world_size)
        self.slots: list[torch.Tensor | None] = [None] * world_size
        self.calls = 0


class ThreadCommunicator:
    def __init__(self, exchange: _Exchange, rank: int):
        self._exchange = exchange
        self.rank = rank
        self.world_size = exchange.world_size
        self.device = torch.device("cpu")

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> None:
        exchange = self._exchange
        exchange.slots[self.rank] = tensor.clone()
        exchange.barrier.wait()
        stacked = torch.stack(exchange.slots)
        combined = stacked.sum(0) if op == "sum" else stacked.max(0).values
        exchange.barrier.wait()  # everybody has read the slots before they are reused
        if self.rank == 0:
            exchange.calls += 1
        tensor.copy_(combined)


def run_ranks(fn: Callable[[ThreadCommunicator], Any], world_size: int) -> list[Any]:
    """``fn(comm)`` on ``world_size`` simulated ranks; their results in rank order."""
    exchange = _Exchange(world_size)
    results: list[Any] = [None] * world_size
    errors: list[BaseException | None] = [None] * world_size

    def body(rank: int) -> None:
        try:
            results[rank] = fn(ThreadCommunicator(exchange, rank))
        except BaseException as error:  # noqa: BLE001
            errors[rank] = error
            exchange.barrier.abort()

    threads = [threading.Thread(target=body, args=(r,)) for r in range(world_size)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    first = next((e for e in errors if e is not None and not isinstance(e, threading.BrokenBarrierError)), None)
    if first is not None:
        raise first
    if any(errors):
        raise next(e for e in errors if e is not None)
    return results
