"""Embedding lookups read straight from ZeRO-3 partitions, without gathering the table.

Before running a module, ZeRO-3 gathers all of its parameters; for an embedding that is the whole
vocabulary table on the compute device (45 MiB for all-MiniLM-L6-v2, 126 MiB for t5-large: more than a
transformer layer) in order to read a few hundred rows. :func:`apply_partition_lookup` makes an embedding
read its rows from the partitions instead: the ranks' token ids are all-gathered (a few KiB), each rank
fills in the elements of every requested row that its own partition holds, zeros elsewhere, and one
all-reduce of the (all tokens x dim) result adds them up. Every element is held by exactly one rank, so
the sum is exact: each rank gets the gathered lookup of its own tokens, bit for bit.
Only for models that are not trained (the self-regularization teacher): no gradient flows to the table.
"""

from __future__ import annotations

import functools

import torch
import torch.distributed as dist
from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus


def apply_partition_lookup(model: torch.nn.Module) -> int:
    """Make every ``nn.Embedding`` of a ZeRO-3 partitioned, frozen model look up from partitions; return
    how many were switched. Call after ``deepspeed.initialize`` (its forward hooks on those modules are
    removed, so DeepSpeed no longer gathers them; other modules that share a table, such as a tied LM
    head, still gather it for themselves). All ranks call, and then every forward is collective. Stage 3.
    """
    switched = 0
    for module in model.modules():
        if not isinstance(module, torch.nn.Embedding):
            continue
        if not hasattr(module.weight, "ds_id"):
            raise ValueError(f"{type(module).__name__}: partition lookup needs a ZeRO-3 partitioned weight")
        if module.max_norm is not None:
            raise ValueError("partition lookup does not renormalise rows (nn.Embedding max_norm is set)")
        module._forward_pre_hooks.clear()  # DeepSpeed's fetch and release of the whole table
        module._forward_hooks.clear()
        if module.weight.ds_status == ZeroParamStatus.AVAILABLE:  # left gathered by model construction
            module.weight.partition()
        # The weight is bound here, not read as module.weight in the forward: DeepSpeed intercepts that
        # read of a partitioned parameter, gathers it and makes it an external parameter of the caller.
        module.forward = functools.partial(_lookup, module.weight, module.embedding_dim)
        switched += 1
    return switched


@torch.no_grad()
def _lookup(weight: torch.nn.Parameter, dim: int, ids: torch.Tensor) -> torch.Tensor:
    # Ranks look up different tokens (their own micro-batches): every rank's ids are gathered (padded with
    # -1, which no partition holds), each rank contributes the elements it holds for all of them, and one
    # all-reduce completes every rank's rows; each rank keeps its own.
    world, rank = dist.get_world_size(), dist.get_rank()
    flat = ids.reshape(-1)
    counts = [torch.zeros(1, dtype=torch.long, device=ids.device) for _ in range(world)]
    dist.all_gather(counts, torch.tensor([flat.numel()], device=ids.device))
    longest = int(max(c.item() for c in counts))
    padded = torch.full((longest,), -1, dtype=flat.dtype, device=ids.device)
    padded[:flat.numel()] = flat
    every = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(every, padded)

    partition = weight.ds_tensor.view(-1)
    per_rank = weight.ds_tensor.ds_numel
    start = rank * per_rank
    length = max(0, min(per_rank, weight.ds_numel - start))
    host = partition.device
    # Flat index of every element of every requested row, relative to this rank's partition.
    offsets = torch.cat(every).reshape(-1, 1).to(host) * dim + torch.arange(dim, device=host) - start
    owned = (offsets >= 0) & (offsets < length)
    if length:
        values = partition[offsets.clamp(0, length - 1)]
        rows = torch.where(owned, values, torch.zeros((), dtype=partition.dtype, device=host))
    else:
        rows = torch.zeros(offsets.shape, dtype=partition.dtype, device=host)
    rows = rows.to(ids.device)
    dist.all_reduce(rows)  # exactly one rank holds each element: a sum of one value and zeros
    return rows[rank * longest:rank * longest + flat.numel()].view(*ids.shape, dim)
