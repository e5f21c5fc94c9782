"""Which examples each rank sees: global batches cut into micro-batches, independent of world size.

Training: each epoch is a seeded permutation of the training set, cut into global batches (a partial
last batch is dropped). Global batch ``s`` is cut into micro-batches ``0 .. A*W-1`` of
``micro_batch_size`` examples; rank ``r`` takes micro-batches ``a*W + r`` for ``a = 0 .. A-1``. The
same global batch is therefore split into the same micro-batches for any (world size, accumulation)
pair with the same micro-batch size, which is what makes 1-rank and N-rank runs comparable, and the
position in the data is just the optimizer step, which makes resuming exact.

Evaluation: rank ``r`` takes examples ``r, r+W, r+2W, ...``; every rank runs the same number of
batches (a rank that runs out repeats its last batch and discards it) because a ZeRO-3 forward pass
is a collective operation.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch


class TrainBatchSampler:
    """Yields this rank's micro-batches (lists of example indices) from optimizer step ``start_step`` on."""

    def __init__(self, num_examples: int, global_batch_size: int, micro_batch_size: int, rank: int,
                 world_size: int, seed: int, start_step: int = 0):
        if num_examples < global_batch_size:
            raise ValueError(f"the training set has {num_examples} examples, fewer than one global batch "
                             f"(training.global_batch_size={global_batch_size})")
        self.num_examples = num_examples
        self.global_batch_size = global_batch_size
        self.micro_batch_size = micro_batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.start_step = start_step
        self.grad_accum_steps = global_batch_size // (micro_batch_size * world_size)
        self.steps_per_epoch = num_examples // global_batch_size

    def global_batch(self, step: int) -> torch.Tensor:
        """Indices of the whole global batch of optimizer step ``step`` (all ranks together)."""
        epoch, position = divmod(step, self.steps_per_epoch)
        generator = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(self.num_examples, generator=generator)
        return order[position * self.global_batch_size:(position + 1) * self.global_batch_size]

    def micro_batches(self, step: int) -> list[list[int]]:
        """This rank's micro-batches of optimizer step ``step``, in accumulation order."""
        batch = self.global_batch(step)
        m, w = self.micro_batch_size, self.world_size
        return [batch[(a * w + self.rank) * m:(a * w + self.rank + 1) * m].tolist()
                for a in range(self.grad_accum_steps)]

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_step
        while True:
            yield from self.micro_batches(step)
            step += 1


def eval_shard(num_examples: int, rank: int, world_size: int, batch_size: int) -> list[list[int]]:
    """This rank's evaluation batches; every rank gets the same number of batches.

    A rank with fewer real batches gets copies of its last batch (or of example 0 if it has none); the
    caller recognises them by :func:`eval_batches_real` and discards their outputs.
    """
    indices = list(range(rank, num_examples, world_size))
    per_rank = math.ceil(num_examples / world_size)
    num_batches = max(1, math.ceil(per_rank / batch_size))
    batches = [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]
    filler = batches[-1] if batches else [0]
    return batches + [filler] * (num_batches - len(batches))


def eval_batches_real(num_examples: int, rank: int, world_size: int, batch_size: int) -> int:
    """How many of :func:`eval_shard`'s batches carry examples this rank owns."""
    return math.ceil(len(range(rank, num_examples, world_size)) / batch_size)
