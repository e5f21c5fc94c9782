"""The collectives the pruning code uses, behind a small interface.

Pruning code talks to other ranks only through a :class:`Communicator`. The default one runs
``torch.distributed`` collectives on the default process group (NCCL tensors stay on the GPU, gloo
tensors on the CPU) and counts the bytes it moves, which the selection benchmark reports. Tests
substitute an in-process implementation to simulate many ranks with threads.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.distributed as dist


class Communicator(Protocol):
    rank: int
    world_size: int

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> None:
        """Reduce ``tensor`` in place over all ranks (``op`` is "sum" or "max"). All ranks must call."""
        ...


def ring_all_reduce_bytes(nbytes: int, world_size: int) -> int:
    """Bytes one rank sends (and receives) in a ring all-reduce of ``nbytes``: 2 (W-1)/W of the buffer."""
    return 0 if world_size == 1 else 2 * (world_size - 1) * nbytes // world_size


class TorchCommunicator:
    """Collectives on the default process group; counts the payload each rank sends and receives."""

    def __init__(self):
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        # gloo reduces CPU tensors; NCCL (and other accelerator backends) reduce device tensors.
        self.device = torch.device("cpu")
        if dist.get_backend() != "gloo":
            from deepspeed.accelerator import get_accelerator

            self.device = torch.device(get_accelerator().current_device_name())
        self.bytes_sent = 0
        self.calls = 0

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> None:
        reduce_op = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op]
        dist.all_reduce(tensor, op=reduce_op)
        self.calls += 1
        self.bytes_sent += ring_all_reduce_bytes(tensor.numel() * tensor.element_size(), self.world_size)
