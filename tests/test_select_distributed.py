"""The distributed selection over real gloo processes (2 to 4 ranks) equals a stable sort."""

import pytest
import torch

from harness import run_distributed
from sparse_dist.distributed.comm import TorchCommunicator
from sparse_dist.distributed.select import ScoreShard, select_topk
from test_select import reference_masks

pytestmark = pytest.mark.distributed


def make_cases() -> list[tuple[list[torch.Tensor], list[int]]]:
    """(tensors of one group, ks to try); large continuous, heavily tied, and mixed-sign cases."""
    generator = torch.Generator().manual_seed(11)
    continuous = [torch.randn(700_001, generator=generator), torch.rand(123_457, generator=generator) * 4 - 1]
    tied = [torch.randint(-3, 4, (400_000,), generator=generator).float(), torch.zeros(90_000)]
    small = [torch.tensor([0.0, -0.0, float("inf"), -float("inf"), 1.0, 1.0]), torch.empty(0), torch.ones(3)]
    return [(continuous, [1, 17, 411_729, 823_457]), (tied, [0, 5, 200_000, 389_999, 490_000]),
            (small, [0, 2, 3, 4, 9])]


def select_on_ranks() -> list:
    comm = TorchCommunicator()
    results = []
    for tensors, ks in make_cases():
        shards = []
        for t, tensor in enumerate(tensors):  # uneven contiguous fragments, last rank first
            bounds = torch.linspace(0, tensor.numel(), comm.world_size + 1).round().long().tolist()
            owner = comm.world_size - 1 - comm.rank
            shards.append(ScoreShard(tensor[bounds[owner]:bounds[owner + 1]], 0, t, bounds[owner]))
        for k in ks:
            threshold = select_topk(shards, [k], comm)[0]
            results.append((threshold, [(s.tensor, s.offset, threshold.mask(s)) for s in shards]))
    return results


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_distributed_selection_equals_stable_sort(world_size):
    ranks = run_distributed(select_on_ranks, world_size)
    expected = [(tensors, k) for tensors, ks in make_cases() for k in ks]
    for case, (tensors, k) in enumerate(expected):
        thresholds = {ranks[r][case][0] for r in range(world_size)}
        assert len(thresholds) == 1, "ranks disagree"
        got = [torch.zeros(t.numel(), dtype=torch.bool) for t in tensors]
        for rank in ranks:
            for tensor, offset, mask in rank[case][1]:
                got[tensor][offset:offset + mask.numel()] = mask
        for want, have in zip(reference_masks(tensors, k), got):
            assert torch.equal(want, have), f"case {case} (k={k}) differs"
