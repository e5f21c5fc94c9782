"""Which examples each rank sees, for training and evaluation."""

import pytest

from sparse_dist.data.sampler import TrainBatchSampler, eval_batches_real, eval_shard


def rank_batches(world_size, micro, global_batch, step, n=100, seed=3):
    return [TrainBatchSampler(n, global_batch, micro, r, world_size, seed).micro_batches(step)
            for r in range(world_size)]


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_same_micro_batches_for_any_world_size(world_size):
    """Micro-batch j of a global batch is the same examples whatever the (world size, accumulation) split."""
    for step in range(7):
        per_rank = rank_batches(world_size, 4, 16, step)
        by_position = {a * world_size + r: batch for r, batches in enumerate(per_rank)
                       for a, batch in enumerate(batches)}
        reference = rank_batches(1, 4, 16, step)[0]
        assert [by_position[j] for j in range(4)] == reference


def test_global_batches_cover_an_epoch_without_repeats_then_reshuffle():
    sampler = TrainBatchSampler(100, 16, 4, 0, 1, seed=3)
    epoch0 = [i for step in range(6) for i in sampler.global_batch(step).tolist()]
    assert len(set(epoch0)) == 96  # 6 full global batches, the partial 7th dropped
    epoch1 = [i for step in range(6, 12) for i in sampler.global_batch(step).tolist()]
    assert epoch1 != epoch0 and len(set(epoch1)) == 96


def test_resuming_at_a_step_continues_the_same_sequence():
    full = TrainBatchSampler(100, 8, 4, 1, 2, seed=5)
    resumed = TrainBatchSampler(100, 8, 4, 1, 2, seed=5, start_step=9)
    stream, again = iter(full), iter(resumed)
    head = [next(stream) for _ in range(9 + 5)]
    assert head[9:] == [next(again) for _ in range(5)]


def test_too_small_training_set():
    with pytest.raises(ValueError, match="fewer than one global batch"):
        TrainBatchSampler(10, 16, 4, 0, 2, seed=0)


@pytest.mark.parametrize("n, world_size, batch", [(21, 2, 4), (5, 3, 4), (1, 2, 8), (64, 4, 16), (7, 1, 3)])
def test_eval_shards_are_disjoint_cover_and_equally_long(n, world_size, batch):
    shards = [eval_shard(n, r, world_size, batch) for r in range(world_size)]
    assert len({len(s) for s in shards}) == 1  # the same number of (collective) forward passes everywhere
    real = [s[:eval_batches_real(n, r, world_size, batch)] for r, s in enumerate(shards)]
    owned = [i for batches in real for b in batches for i in b]
    assert sorted(owned) == list(range(n))
