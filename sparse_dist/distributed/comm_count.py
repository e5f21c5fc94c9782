"""Count the collectives a piece of code issues, and the bytes they deliver, whoever issues them.

:class:`CollectiveCounter` sees every ``torch.distributed`` collective run inside it on this rank, whether
called directly, through ``deepspeed.comm`` or from a module's forward hooks: it intercepts the c10d
operators themselves at the dispatcher (a ``TorchDispatchMode``), below every wrapper. An async collective
is counted when it is issued. For measurements (tests, benchmarks); any stage, any backend.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_SKIPPED = {"barrier", "monitored_barrier"}
"""c10d operators that deliver no data."""


def _tensor_bytes(value) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


class CollectiveCounter(TorchDispatchMode):
    """``with CollectiveCounter() as counter:`` counts this rank's collectives in the block.

    - ``calls``: collectives issued (an ``all_gather`` of a list of tensors is one);
    - ``bytes``: bytes of their result buffers (the gathered tensor of an all-gather, the reduced tensor of
      an all-reduce, the received tensor of an all-to-all), summed;
    - ``largest_bytes``: the largest of those buffers;
    - ``by_op``: ``calls`` per c10d operator (``allgather_``, ``_allgather_base_``, ``allreduce_``, ...).

    The counts accumulate over every ``with`` block the same counter enters.
    """

    def __init__(self):
        super().__init__()
        self.calls = 0
        self.bytes = 0
        self.largest_bytes = 0
        self.by_op: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "c10d":
            name = func.__name__.split(".")[0]
            if name not in _SKIPPED:
                # Every c10d collective takes its result buffer(s) first: output tensor(s) of a gather or an
                # all-to-all, the tensors reduced in place by an all-reduce or filled by a broadcast.
                size = _tensor_bytes(args[0]) if args else 0
                self.calls += 1
                self.bytes += size
                self.largest_bytes = max(self.largest_bytes, size)
                self.by_op[name] += 1
        return func(*args, **(kwargs or {}))
