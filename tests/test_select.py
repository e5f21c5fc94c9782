"""Exact distributed top-k: property tests against a stable sort of the concatenated scores."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sparse_dist.distributed.select as select_module
from simulated_ranks import run_ranks
from sparse_dist.distributed.band_pass import band_pass
from sparse_dist.distributed.select import GroupLayout, ScoreShard, select_topk

SPECIAL = [0.0, -0.0, 1.0, -1.0, math.inf, -math.inf, 1e-40, -1e-40, 3.4e38, 0.5, 2.0]


def reference_masks(tensors: list[torch.Tensor], k: int) -> list[torch.Tensor]:
    """What a stable descending sort of the concatenation keeps: ties go to the lower global index."""
    flat = torch.cat([t.reshape(-1).double() for t in tensors]) if tensors else torch.empty(0)
    order = torch.sort(flat, descending=True, stable=True).indices
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    keep[order[:k]] = True
    return list(keep.split([t.numel() for t in tensors]))


@st.composite
def problems(draw, max_size=120):
    world_size = draw(st.integers(1, 4))
    groups = []
    for _ in range(draw(st.integers(1, 3))):
        dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]))
        palette = draw(st.lists(st.one_of(st.sampled_from(SPECIAL), st.floats(-1e4, 1e4, width=16)),
                                min_size=1, max_size=6))
        tensors = []
        for _ in range(draw(st.integers(1, 4))):
            size = draw(st.integers(0, max_size))
            values = draw(st.lists(st.sampled_from(palette), min_size=size, max_size=size))
            tensors.append(torch.tensor(values, dtype=torch.float64).to(dtype))
        n = sum(t.numel() for t in tensors)
        k = draw(st.one_of(st.sampled_from([0, n, min(1, n), max(n - 1, 0)]), st.integers(0, n)))
        splits = []
        for t in tensors:  # contiguous fragments, handed to ranks in a random order
            cuts = sorted(draw(st.lists(st.integers(0, t.numel()), min_size=world_size - 1,
                                        max_size=world_size - 1)))
            bounds = [0, *cuts, t.numel()]
            owners = draw(st.permutations(range(world_size)))
            splits.append([(owners[r], bounds[r], bounds[r + 1]) for r in range(world_size)])
        groups.append((tensors, k, splits))
    return world_size, groups


def layout_of(groups, sizes_off_by: int = 0) -> GroupLayout:
    """The layout a caller that knows its tensors would pass (optionally with a wrong size)."""
    return GroupLayout(sizes=[sum(t.numel() for t in tensors) + sizes_off_by for tensors, _, _ in groups],
                       tensors=[len(tensors) for tensors, _, _ in groups],
                       dtypes=[tensors[0].dtype for tensors, _, _ in groups])


def run_selection(world_size, groups, layout=None):
    def on_rank(comm):
        shards = []
        for g, (tensors, _, splits) in enumerate(groups):
            for t, (tensor, fragments) in enumerate(zip(tensors, splits)):
                for owner, start, end in fragments:
                    if owner == comm.rank:
                        shards.append(ScoreShard(tensor.reshape(-1)[start:end], g, t, start))
        thresholds = select_topk(shards, [k for _, k, _ in groups], comm, layout=layout)
        return [(s, thresholds[s.group].mask(s)) for s in shards], thresholds

    return run_ranks(on_rank, world_size)


def check(world_size, groups):
    """The selection, asked with and without the groups' layout, keeps what a stable sort keeps."""
    first = run_selection(world_size, groups)
    _check(groups, first)
    second = run_selection(world_size, groups, layout=layout_of(groups))
    _check(groups, second)
    assert [r[1] for r in second] == [r[1] for r in first]


def _check(groups, results):
    assert all(r[1] == results[0][1] for r in results), "ranks disagree on the thresholds"
    for g, (tensors, k, _) in enumerate(groups):
        expected = reference_masks(tensors, k)
        got = [torch.zeros(t.numel(), dtype=torch.bool) for t in tensors]
        for shard_masks, _ in results:
            for shard, mask in shard_masks:
                if shard.group == g:
                    got[shard.tensor][shard.offset:shard.offset + mask.numel()] = mask
        assert sum(int(m.sum()) for m in got) == k
        for t, (want, have) in enumerate(zip(expected, got)):
            assert torch.equal(want, have), f"group {g} tensor {t}: kept set differs"


# How the selection is steered for the test: "direct" runs as shipped (small problems search all
# scores); the others shrink the constants so small problems take the sampled path, and then either
# usually hit the bracket with bucket-edge pivots, refine the pivots to exact sample quantiles, always
# miss the bracket (pivots on the wrong side), or overflow the band buffer (then collect the overflowing
# bands again at their size, or search all scores).
MODES = {
    "direct": {},
    "sampled": {"DIRECT_LIMIT": 8, "SAMPLE_SIZE": 16},
    "exact-pivots": {"DIRECT_LIMIT": 8, "SAMPLE_SIZE": 16, "COARSE_PIVOT_SLACK": 0.0},
    "bracket-miss": {"DIRECT_LIMIT": 8, "SAMPLE_SIZE": 16, "PIVOT_SIGMAS": -50.0},
    "band-overflow": {"DIRECT_LIMIT": 8, "SAMPLE_SIZE": 16, "BAND_MIN_CAPACITY": 1, "PIVOT_SIGMAS": 50.0,
                      "BAND_RETRY_FRACTION": 1},
    "band-overflow-search-all": {"DIRECT_LIMIT": 8, "SAMPLE_SIZE": 16, "BAND_MIN_CAPACITY": 1,
                                 "PIVOT_SIGMAS": 50.0, "BAND_RETRY_FRACTION": 1 << 62},
}


@pytest.mark.parametrize("mode", MODES)
def test_selection_matches_stable_sort(mode, monkeypatch):
    for name, value in MODES[mode].items():
        monkeypatch.setattr(select_module, name, value)

    @settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
    @given(problems(max_size=300 if mode != "direct" else 120))
    def property_holds(problem):
        check(*problem)

    property_holds()


def test_large_continuous_scores_take_the_band_path():
    torch.manual_seed(0)
    tensors = [torch.randn(300_000), torch.randn(200_003) * 3, torch.randn(77)]
    splits = [[(0, 0, t.numel() // 2), (1, t.numel() // 2, t.numel())] for t in tensors]
    for k in (1, 12_345, 250_040, 499_999):
        check(2, [(tensors, k, splits)])


def test_shards_at_different_scales_keep_the_band_path(monkeypatch):
    """Layers whose scores differ in scale (gradients shrink with depth) put a larger share of one shard near
    the threshold than the group's sample predicts: that shard's band overflows its buffer, and is collected
    again at its size, not by searching every score."""
    def no_full_search(*args):
        raise AssertionError("searched all scores")

    monkeypatch.setattr(select_module, "_ScoreTies", no_full_search)
    torch.manual_seed(0)
    tensors = [torch.rand(200_000).pow(4) * 10.0 ** -(i % 6) for i in range(6)]
    splits = [[(0, 0, t.numel() // 2), (1, t.numel() // 2, t.numel())] for t in tensors]
    for k in (60_000, 600_000, 1_100_000):
        check(2, [(tensors, k, splits)])


def test_all_equal_scores_keep_the_lowest_indices():
    tensors = [torch.zeros(600_000), torch.zeros(5)]  # scores start at 0 in SMP and movement
    splits = [[(1, 0, 250_000), (0, 250_000, 600_000)], [(0, 0, 5), (1, 5, 5)]]
    check(2, [(tensors, 300_001, splits)])


def test_nan_scores_are_rejected():
    tensors = [torch.tensor([1.0, float("nan"), 2.0])]
    with pytest.raises(ValueError, match="selection group 0: 1 NaN score"):
        run_selection(2, [(tensors, 1, [[(0, 0, 2), (1, 2, 3)]])])
    big = torch.randn(400_000)
    big[123_456] = float("nan")
    with pytest.raises(ValueError, match="1 NaN score"):
        run_selection(1, [([big], 10, [[(0, 0, 400_000)]])])


def test_a_layout_that_does_not_match_the_shards_is_rejected():
    small = [([torch.arange(10.0)], 3, [[(0, 0, 4), (1, 4, 10)]])]
    with pytest.raises(ValueError, match="the shards hold 10 scores of a group whose layout declares 11"):
        run_selection(2, small, layout=layout_of(small, sizes_off_by=1))
    large = [([torch.randn(700_000)], 70_000, [[(0, 0, 300_000), (1, 300_000, 700_000)]])]
    with pytest.raises(ValueError, match="the shards hold 700000 scores of a group whose layout declares 699999"):
        run_selection(2, large, layout=layout_of(large, sizes_off_by=-1))
    edge = [([torch.arange(10.0)], 0, [[(0, 0, 4), (1, 4, 10)]])]
    with pytest.raises(ValueError, match="layout declares 12"):
        run_selection(2, edge, layout=layout_of(edge, sizes_off_by=2))


def test_bad_k_and_mixed_dtypes_are_rejected():
    with pytest.raises(ValueError, match=r"k=4 is outside \[0, 3\]"):
        run_selection(1, [([torch.ones(3)], 4, [[(0, 0, 3)]])])
    mixed = [torch.ones(3), torch.ones(2, dtype=torch.float64)]
    with pytest.raises(ValueError, match="shards mix dtypes"):
        run_selection(1, [(mixed, 1, [[(0, 0, 3)], [(0, 0, 2)]])])


def test_band_pass_kernel_agrees_with_torch(monkeypatch):
    torch.manual_seed(1)
    x = torch.randn(1_000_003)
    x[::1000] = float("inf")
    x[5::777] = float("nan")
    x[7::999] = -0.0
    fast = band_pass(x, -0.1, 0.2, capacity=1 << 20)
    monkeypatch.setattr("sparse_dist.distributed.band_pass._load_kernel", lambda: None)
    slow = band_pass(x, -0.1, 0.2, capacity=1 << 20)
    assert (fast.above, fast.in_band, fast.nans) == (slow.above, slow.in_band, slow.nans)
    assert torch.equal(fast.band.sort().values, slow.band.sort().values)
