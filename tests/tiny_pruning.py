"""Pruners without DeepSpeed, for unit tests: a model with two prunable matrices, and the fragments of its
weights that a rank owns under ZeRO-0 (an even split of each weight; every rank holds the whole of it)."""

from __future__ import annotations

import torch

from sparse_dist.distributed.fragments import Fragment


def two_block_model() -> torch.nn.Module:
    """The smallest model with prunable sites: one encoder block's intermediate (3x4) and output (4x3) matrices."""
    return torch.nn.ModuleDict({"encoder": torch.nn.ModuleDict({"layer": torch.nn.ModuleList([torch.nn.ModuleDict({
        "intermediate": torch.nn.ModuleDict({"dense": torch.nn.Linear(4, 3)}),
        "output": torch.nn.ModuleDict({"dense": torch.nn.Linear(3, 4)})})])})})


def even_fragments(named: list[tuple[str, torch.nn.Parameter]], rank: int, world_size: int) -> list[Fragment]:
    """Rank ``rank``'s fragment of each weight, split as :mod:`sparse_dist.distributed.fragments` splits a
    replicated weight; a trainable weight is its own master, as under ZeRO-0 in fp32 (no optimizer)."""
    fragments = []
    for index, (name, param) in enumerate(named):
        numel = param.numel()
        share = -(-numel // world_size)
        start = min(rank * share, numel)
        trainable = param.requires_grad
        fragments.append(Fragment(name=name, param=param, index=index, full_shape=param.shape, start=start,
                                  numel=max(0, min(share, numel - start)), master_flat=param if trainable else None,
                                  master_offset=start, master_replicated=trainable, working_replicated=True,
                                  optimizer=None))
    return fragments
