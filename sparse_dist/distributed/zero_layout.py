"""How DeepSpeed lays out tensors over ranks, as arithmetic on sizes: no DeepSpeed object is needed.

The memory planner (:mod:`sparse_dist.plan`) counts bytes from these rules; the fragments a rank owns
(:mod:`sparse_dist.distributed.fragments`) follow the same ones, which the planner's test checks against
real engines. Sizes are element counts; ``rank`` is in ``[0, world_size)``.

- ZeRO-3 (``partition_parameters.py``): each parameter of ``n`` elements is padded to a multiple of the
  world size and split evenly, so every rank holds ``ceil(n / W)`` elements of it; the optimizer's flat
  buffers are concatenations of those partitions. A parameter of at most
  ``stage3_param_persistence_threshold`` elements (DeepSpeed's default 1e5) is also kept whole on every rank.
- ZeRO-1/2 and DeepSpeed's bf16 optimizer (``stage_1_and_2.py``): the trainable parameters of one optimizer
  group are concatenated into one flat buffer, padded to a multiple of ``2 W`` (``nccl_start_alignment_factor``
  2), and rank r's fp32 partition is the r-th of W equal slices of it.
- Replicated (ZeRO-0 in fp32, frozen weights below ZeRO-3): every rank holds everything; pruning state
  splits each weight evenly into ``ceil(n / W)``-element ranges.
"""

from __future__ import annotations

from collections.abc import Sequence

DEFAULT_PERSISTENCE_THRESHOLD = 100_000
"""DeepSpeed's ``stage3_param_persistence_threshold`` default (elements)."""
DEFAULT_REDUCE_BUCKET_SIZE = 500_000_000
"""DeepSpeed's ``reduce_bucket_size`` default (elements)."""
NCCL_START_ALIGNMENT_FACTOR = 2
"""ZeRO-1/2 pad each flat group to a multiple of this times the world size (``stage_1_and_2.py``)."""


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def even_range(numel: int, world_size: int, rank: int) -> tuple[int, int]:
    """``(start, count)`` of rank ``rank``'s range when ``numel`` elements are split in ``ceil(n / W)`` pieces:
    a ZeRO-3 partition (without its padding) and a replicated weight's pruning fragment alike."""
    share = ceil_div(numel, world_size)
    start = min(rank * share, numel)
    return start, max(0, min(share, numel - start))


def zero3_partition_numel(numel: int, world_size: int) -> int:
    """Elements of one parameter every rank allocates under ZeRO-3, padding included: ``ceil(n / W)``."""
    return ceil_div(numel, world_size)


def is_persistent(numel: int, threshold: int = DEFAULT_PERSISTENCE_THRESHOLD) -> bool:
    """Whether ZeRO-3 keeps a parameter whole on every rank between uses (``ds_numel <= threshold``)."""
    return numel <= threshold


def flat_group_numel(numels: Sequence[int], world_size: int) -> int:
    """Elements of a ZeRO-1/2 flat group buffer: the sum padded to a multiple of ``2 W``."""
    alignment = NCCL_START_ALIGNMENT_FACTOR * world_size
    return ceil_div(sum(numels), alignment) * alignment


def flat_partition_numel(numels: Sequence[int], world_size: int) -> int:
    """Elements of one rank's fp32 partition of a ZeRO-1/2 flat group: ``flat_group_numel / W``."""
    return flat_group_numel(numels, world_size) // world_size


def flat_group_ranges(numels: Sequence[int], world_size: int, rank: int) -> list[tuple[int, int]]:
    """``(start, count)`` within each parameter (in group order) of what falls into rank ``rank``'s partition
    of the ZeRO-1/2 flat group (count 0 when nothing does)."""
    partition = flat_partition_numel(numels, world_size)
    low, high = rank * partition, (rank + 1) * partition
    ranges, offset = [], 0
    for numel in numels:
        start, end = max(low, offset), min(high, offset + numel)
        ranges.append((start - offset, end - start) if end > start else (0, 0))
        offset += numel
    return ranges
