"""Exact global top-k over sharded scores, without ever gathering the scores.

Each rank holds shards of score tensors (:class:`ScoreShard`); shards are grouped (one global group,
one per matrix, one per matrix type, ...) and each group keeps its ``k`` largest scores. The result
is a :class:`Threshold` per group, identical on every rank: keep ``score > value``, and of the scores
equal to ``value`` keep those up to a global element index. The kept set is exactly what a stable
descending sort of the concatenation of all shards would keep in its first ``k`` places (ties go to
the lower global index; the global index orders tensors by their number in the group and elements by
their flat position in the tensor), for any world size.

How. Scores are compared through an order-preserving integer image of the floats (``-0.0`` and
``+0.0`` share a key). Every step below is one small all-reduce for all groups together; none moves
scores, so communication does not grow with their number.

1. Sizes, dtypes and tensor counts of every group (one reduce, skipped when the caller knows them:
   :class:`GroupLayout`). Groups of at most ``DIRECT_LIMIT`` scores go to step 5 over all their scores.
2. Pivots. Every rank draws a stratified random sample of its shards at the group's common rate. The
   histogram of the samples' top 16 key bits gives two pivots (bucket edges) bracketing the k-th
   score with overwhelming probability (four standard deviations of the sample rank around it). If
   the buckets are too coarse, one more pass over the samples makes the pivots exact sample quantiles.
3. One pass over the local scores (:mod:`~sparse_dist.distributed.band_pass`): count the scores above
   the upper pivot and NaNs, and collect the scores between the pivots (the band), with positions.
   The counts and the histogram of the band's first digit travel in one reduce. If the bracket missed,
   the group falls back to step 5 over all its scores: same answer, slower. If it held but a shard's band
   outgrew its buffer, that shard's band is collected again at its exact size (one more reduce).
4. NaN scores, counted in step 3 (or in step 5's first pass), are an error.
5. Radix selection: per pass, the histogram of the next digit of the keys that share the prefix found
   so far (16-bit digits, narrower when many groups search all their scores).
6. Ties at the threshold: the number of tied scores per (tensor, rank) and the positions of the first
   few are all-reduced, which locates the last kept tie (one more reduce, by its owner, only if it is
   beyond the first few). Every score equal to the threshold lies in the band: no further pass.

Memory: the local shards, the sample, the band (a fraction of a percent of the shard) and histograms.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from sparse_dist.distributed.band_pass import BandResult, band_pass
from sparse_dist.distributed.comm import Communicator

ALL_TIES = 1 << 62
NO_TIES = -1

SAMPLE_SIZE = 1 << 18
"""Largest global sample per group (step 2); smaller groups draw ``2 n^(2/3)`` scores (at least 4096).

Sampling costs about one cache miss per sampled score, and the band it leaves to search shrinks like
``n / sqrt(m)``; balancing the two puts the best sample size near ``n^(2/3)``."""
DIRECT_LIMIT = 1 << 19
"""Groups up to this many scores skip sampling and run the radix selection on all their scores."""
HISTOGRAM_BUDGET = 1 << 16
"""Bins per reduce when many groups search all their scores: 16-bit digits for one, narrower for more."""
BAND_MIN_CAPACITY = 4096
"""Smallest band buffer per shard (a larger band falls back to searching all scores)."""
BAND_CAPACITY_FACTOR = 1.25
"""Band buffer per shard, relative to the band the sample predicts for the whole group (its estimate is good
to a few %). A shard whose scores crowd near the threshold more than the group's do (a layer with smaller
gradients than the rest) outgrows it; while the bracket holds, such a shard's band is collected again at
its exact size (one more pass over that shard and one more reduce) instead of searching all scores."""
BAND_RETRY_FRACTION = 8
"""Largest band collected again after an overflow: 1/8 of the group's scores (8 B a band score: at most 1 B
a score). A larger band searches all scores instead."""
PIVOT_SIGMAS = 3.5
"""Distance of the pivots from the target rank, in standard deviations of the sample rank: the bracket
misses with probability about 5e-4 (then the group searches all its scores, with the same result)."""
COARSE_PIVOT_SLACK = 1.25
"""Bucket-edge pivots are kept if their band holds at most this many times the exact pivots' band.

A wider band costs the band pass more than the extra reduce and sample pass of exact pivots."""
TIE_POSITIONS = 4
"""Tied positions each rank reports per tensor in the tie table."""
_DIGIT = 16
_CHUNK = 1 << 18
_BAND_CHUNK = 1 << 16
_KEY_INF = {32: 0x7F800000, 64: 0x7FF0000000000000}


@dataclass(frozen=True)
class ScoreShard:
    """This rank's part of one score tensor."""

    scores: torch.Tensor
    """The local scores, any float dtype (flattened on use); may be empty."""
    group: int
    """Selection group, 0 .. len(ks) - 1."""
    tensor: int
    """Number of the whole tensor within its group; with ``offset`` it orders elements globally."""
    offset: int
    """Flat index of ``scores[0]`` within the whole tensor."""


@dataclass(frozen=True)
class GroupLayout:
    """What every rank may know about the groups without asking: then step 1's reduce is skipped.

    The sizes are checked against the shards in a later reduce; a mismatch raises ValueError.
    """

    sizes: Sequence[int]
    """Number of scores in each group, over all ranks."""
    tensors: Sequence[int]
    """Number of tensors in each group (tensor numbers run from 0)."""
    dtypes: Sequence[torch.dtype]
    """The scores' dtype in each group."""


@dataclass(frozen=True)
class Threshold:
    """The exact top-k rule of one group; the same on every rank."""

    k: int
    n: int
    value: float
    """The k-th largest score (+inf when k = 0, -inf when k = n)."""
    tie_tensor: int
    """Scores equal to ``value`` are kept in tensors before this one, and in this one up to ``tie_position``."""
    tie_position: int

    def mask(self, shard: ScoreShard) -> torch.Tensor:
        """Bool mask (flat) of the kept scores of ``shard``."""
        scores = shard.scores.reshape(-1)
        if self.tie_tensor == NO_TIES or shard.tensor > self.tie_tensor:
            return scores > self.value
        if shard.tensor < self.tie_tensor:
            return scores >= self.value  # every tie kept: one comparison (NaN never gets here: selection refuses it)
        keep = scores > self.value
        # The kept ties are those at global positions up to tie_position: a prefix of this shard, compared in
        # place (no index per score, and no host-device synchronisation).
        end = min(max(self.tie_position - shard.offset + 1, 0), scores.numel())
        keep[:end] |= scores[:end] == self.value
        return keep


def select_topk(shards: Sequence[ScoreShard], ks: Sequence[int], comm: Communicator, seed: int = 0,
                layout: GroupLayout | None = None) -> list[Threshold]:
    """The exact top-``ks[g]`` rule of every group ``g``. All ranks must call, with the same ``ks``.

    Stages: any (the shards are whatever each rank holds; at most one shard per tensor per rank).
    Raises ValueError on NaN scores, on ``k`` outside ``[0, n]``, on groups that mix dtypes, and on
    a ``layout`` that does not match the shards.
    """
    groups = len(ks)
    for shard in shards:
        if not 0 <= shard.group < groups:
            raise ValueError(f"score shard of tensor {shard.tensor} is in group {shard.group}; there are {groups}")
    device = _comm_device(comm, shards)
    by_group: list[list[ScoreShard]] = [[] for _ in range(groups)]
    for shard in shards:
        by_group[shard.group].append(shard)
    info = _exchange_group_info(by_group, comm, device) if layout is None else _known_group_info(by_group, layout)
    for g, (k, n) in enumerate(zip(ks, info.sizes)):
        if not 0 <= k <= n:
            raise ValueError(f"selection group {g}: k={k} is outside [0, {n}] (the group has {n} scores)")

    trivial = [g for g in range(groups) if ks[g] in (0, info.sizes[g])]
    direct = [g for g in range(groups) if g not in trivial and info.sizes[g] <= DIRECT_LIMIT]
    sampled = [g for g in range(groups) if g not in trivial and g not in direct]
    _check_nan_of_trivial(trivial, by_group, info.sizes, comm, device)

    searches: dict[int, _Search] = {}
    tie_views: dict[int, list[_TieView]] = {}
    for g in direct:
        searches[g] = _Search(_shard_source(by_group[g]), ks[g], info.bits[g], check_nan=True,
                              expected=info.sizes[g] if layout is not None else None)
        tie_views[g] = [_ScoreTies(s) for s in by_group[g]]
    if sampled:
        pivots = _find_pivots(sampled, by_group, ks, info, comm, device, seed)
        band_searches, band_views = _band_step(sampled, by_group, ks, info, pivots, comm, device)
        searches.update(band_searches)
        tie_views.update(band_views)
    found = _radix_select(searches, comm, device)

    thresholds = {g: _edge_threshold(ks[g], info.sizes[g]) for g in trivial}
    tied = {g: s for g, s in found.items() if s.ties_kept < s.ties}
    for g, search in found.items():
        if g not in tied:
            thresholds[g] = Threshold(ks[g], info.sizes[g], search.value(info.bits[g]), ALL_TIES, 0)
    thresholds.update(_break_ties(tied, tie_views, ks, info, comm, device))
    return [thresholds[g] for g in range(groups)]


# --------------------------------------------------------------------------------------------------
# Keys: an order-preserving integer image of the scores
# --------------------------------------------------------------------------------------------------


def score_keys(scores: torch.Tensor) -> torch.Tensor:
    """Integer keys ordered like the scores (int32 below float64, else int64); -0.0 and +0.0 share one."""
    flat = scores.reshape(-1)
    if flat.dtype == torch.float64:
        bits = flat.view(torch.int64)
        sign = bits >> 63
        return ((bits & 0x7FFFFFFFFFFFFFFF) ^ sign) - sign
    bits = flat.to(torch.float32).view(torch.int32)
    sign = bits >> 31
    keys = bits & 0x7FFFFFFF
    keys ^= sign
    keys -= sign  # sign-magnitude to two's complement
    return keys


def _key_to_value(key: int, bits: int) -> float:
    if bits == 64:
        pattern = key if key >= 0 else (-key) | (1 << 63)
        return struct.unpack("<d", struct.pack("<Q", pattern))[0]
    pattern = key if key >= 0 else (-key) | (1 << 31)
    return struct.unpack("<f", struct.pack("<I", pattern))[0]


def _value_to_key(value: float, bits: int) -> int:
    return int(score_keys(torch.tensor([value], dtype=torch.float64 if bits == 64 else torch.float32))[0])


# --------------------------------------------------------------------------------------------------
# Radix selection
# --------------------------------------------------------------------------------------------------


class _Search:
    """The k-th largest key of a source of keys, one digit at a time.

    Keys are searched either over their full signed range (``base`` None: the first digit is centred
    to be non-negative) or as offsets ``key - base`` within a known span (band searches).
    """

    def __init__(self, source: Callable[[], Iterator[torch.Tensor]], k: int, bits: int, base: int | None = None,
                 check_nan: bool = False, expected: int | None = None):
        self.source = source
        self.k = k
        """Rank of the wanted key among the keys still matching the prefix, counting from the largest."""
        self.base = base
        self.left = bits
        """Bits still to resolve."""
        self.prefix: int | None = None
        self.ties = 0
        """Keys equal to the answer (valid once ``left`` is 0)."""
        self.key_bits = bits
        self.total_bits = bits
        self.check_nan = check_nan
        self.expected = expected
        """Number of keys the first histogram must count (a declared group size to verify), if any."""

    @property
    def ties_kept(self) -> int:
        return self.k

    def histogram(self, width: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, int]:
        """This rank's histogram of the next digit (``2^width`` bins), and its NaN count if checked."""
        shift = self.left - width
        counts = torch.zeros(1 << width, dtype=torch.int64)
        nans = 0
        # int32 keys stay int32 unless offsets from the base can exceed 2^31 (a band over 31+ bits).
        widen = self.base is not None and self.total_bits > 31
        for keys in self.source():
            if widen:
                keys = keys.to(torch.int64)
            if self.check_nan:
                inf = _KEY_INF[self.key_bits]
                nans += int(((keys > inf) | (keys < -inf)).sum())
            if self.base is not None:
                keys = keys - self.base
            if self.prefix is not None:
                keys = keys[(keys >> (shift + width)) == self.prefix]
            if self.prefix is None and self.base is None:  # top digit of signed keys, centred
                digits = (keys >> shift) + (1 << (width - 1))
            else:
                digits = (keys >> shift) & ((1 << width) - 1)
            counts += torch.bincount(digits, minlength=1 << width)
        self.check_nan = False
        return counts.to(device, dtype), nans

    def choose(self, counts: torch.Tensor, width: int) -> None:
        """Take the digit holding the k-th largest key, given the global histogram of this digit."""
        counts = counts.to("cpu", torch.int64)
        if self.expected is not None:
            _check_size(int(counts.sum()), self.expected)
            self.expected = None
        from_top = counts.flip(0).cumsum(0)
        index = int(torch.searchsorted(from_top, torch.tensor(self.k)))
        digit = (1 << width) - 1 - index
        self.k -= int(from_top[index]) - int(counts[digit])
        if self.prefix is None:
            self.prefix = digit - (1 << (width - 1)) if self.base is None else digit
        else:
            self.prefix = (self.prefix << width) | digit
        self.left -= width
        self.ties = int(counts[digit])

    def key(self) -> int:
        return self.prefix + (self.base or 0)

    def value(self, bits: int) -> float:
        return _key_to_value(self.key(), bits)


def _radix_select(searches: dict[int, _Search], comm: Communicator, device: torch.device) -> dict[int, _Search]:
    """Run every search to its last digit; one all-reduce per digit for all of them together."""
    active = sorted(g for g, s in searches.items() if s.left > 0)
    while active:
        width = int(min(_DIGIT, max(4, math.floor(math.log2(HISTOGRAM_BUDGET / len(active))))))
        widths = [min(width, searches[g].left) for g in active]
        parts, nans = [], []
        for g, w in zip(active, widths):
            counts, nan = searches[g].histogram(w, device, torch.int64)
            parts.append(counts)
            nans.append(nan)
        flat = torch.cat([*parts, torch.tensor(nans, dtype=torch.int64, device=device)])
        comm.all_reduce(flat)
        nan_counts = flat[-len(active):].tolist()
        start = 0
        for (g, w), nan in zip(zip(active, widths), nan_counts):
            _raise_on_nan(g, int(nan))
            searches[g].choose(flat[start:start + (1 << w)], w)
            start += 1 << w
        active = [g for g in active if searches[g].left > 0]
    return searches


def _shard_source(shards: list[ScoreShard]) -> Callable[[], Iterator[torch.Tensor]]:
    def chunks() -> Iterator[torch.Tensor]:
        for shard in shards:
            flat = shard.scores.reshape(-1)
            for start in range(0, flat.numel(), _CHUNK):
                yield score_keys(flat[start:start + _CHUNK])
    return chunks


def _tensor_source(tensors: list[torch.Tensor]) -> Callable[[], Iterator[torch.Tensor]]:
    """Keys of small tensors (samples, bands), computed once, served in chunks to bound temporaries."""
    keys = [score_keys(t) for t in tensors if t.numel()]
    return lambda: (k[i:i + _BAND_CHUNK] for k in keys for i in range(0, k.numel(), _BAND_CHUNK))


# --------------------------------------------------------------------------------------------------
# Step 1: sizes, dtypes, tensor counts
# --------------------------------------------------------------------------------------------------


_DTYPE_CODES = {torch.float16: 0, torch.bfloat16: 1, torch.float32: 2, torch.float64: 3}


@dataclass
class _GroupInfo:
    sizes: list[int]
    bits: list[int]
    """Key width of each group's scores: 64 for float64, else 32."""
    tensors: list[int]
    """Number of tensors in each group (largest tensor number held anywhere, plus one)."""


def _exchange_group_info(by_group: list[list[ScoreShard]], comm: Communicator, device: torch.device) -> _GroupInfo:
    """One reduce: sizes, dtypes, and tensor counts (a slot per rank, so that a sum yields a maximum)."""
    groups, world = len(by_group), comm.world_size
    local = torch.zeros(groups * (1 + len(_DTYPE_CODES) + world), dtype=torch.int64)
    sizes, dtypes, tensors = local[:groups], local[groups:5 * groups].view(groups, 4), local[5 * groups:]
    for g, shards in enumerate(by_group):
        for shard in shards:
            if shard.scores.dtype not in _DTYPE_CODES:
                raise ValueError(f"selection group {g}: scores must be floating point, got {shard.scores.dtype}")
            sizes[g] += shard.scores.numel()
            dtypes[g, _DTYPE_CODES[shard.scores.dtype]] += 1
        tensors[g * world + comm.rank] = 1 + max((s.tensor for s in shards), default=-1)
    total = local.to(device)
    comm.all_reduce(total)
    total = total.cpu()
    bits = []
    for g in range(groups):
        kinds = int((total[groups:5 * groups].view(groups, 4)[g] > 0).sum())
        if kinds > 1:
            raise ValueError(f"selection group {g}: shards mix dtypes; convert the scores of a group to one dtype")
        bits.append(64 if total[groups + 4 * g + _DTYPE_CODES[torch.float64]] > 0 else 32)
    counts = total[5 * groups:].view(groups, world).max(dim=1).values
    return _GroupInfo(sizes=[int(s) for s in total[:groups]], bits=bits, tensors=[int(c) for c in counts])


def _known_group_info(by_group: list[list[ScoreShard]], layout: GroupLayout) -> _GroupInfo:
    for g, shards in enumerate(by_group):
        for shard in shards:
            if shard.scores.dtype != layout.dtypes[g]:
                raise ValueError(f"selection group {g}: shard of dtype {shard.scores.dtype}, the layout says "
                                 f"{layout.dtypes[g]}")
            if shard.tensor >= layout.tensors[g]:
                raise ValueError(f"selection group {g}: tensor {shard.tensor}, the layout says {layout.tensors[g]}")
    bits = [64 if dtype == torch.float64 else 32 for dtype in layout.dtypes]
    return _GroupInfo(sizes=list(layout.sizes), bits=bits, tensors=list(layout.tensors))


def _check_size(counted: int, declared: int) -> None:
    if counted != declared:
        raise ValueError(f"the shards hold {counted} scores of a group whose layout declares {declared}")


def _check_nan_of_trivial(trivial: list[int], by_group: list[list[ScoreShard]], sizes: list[int],
                          comm: Communicator, device: torch.device) -> None:
    """Groups that keep all or nothing still must not hold NaN scores (one reduce, only if there are any)."""
    trivial = [g for g in trivial if sizes[g] > 0]
    if not trivial:
        return
    counts = torch.tensor([[sum(int(torch.isnan(s.scores).sum()) for s in by_group[g]),
                            sum(s.scores.numel() for s in by_group[g])] for g in trivial],
                          dtype=torch.int64, device=device)
    comm.all_reduce(counts)
    for g, (nans, size) in zip(trivial, counts.tolist()):
        _raise_on_nan(g, nans)
        _check_size(size, sizes[g])


# --------------------------------------------------------------------------------------------------
# Step 2: pivots from a sample
# --------------------------------------------------------------------------------------------------


def _sample_size(n: int) -> int:
    return int(min(SAMPLE_SIZE, max(4096, 2 * n ** (2 / 3))))


def _draw_sample(shards: list[ScoreShard], rate: float, seed: int, rank: int) -> torch.Tensor:
    """A stratified random sample of the group's scores at ``rate``, on this rank.

    Each shard is cut into ``round(rate * len)`` equal strata and one score is drawn from each: the
    positions come out sorted (cache-friendly) and the sample rank of any value varies less than
    under independent draws, so the pivot margin computed for independent draws is conservative.
    """
    parts = []
    generator = torch.Generator().manual_seed(seed * 1_000_003 + rank)
    for shard in shards:
        flat = shard.scores.reshape(-1)
        length = flat.numel()
        count = min(length, int(round(rate * length)))
        if count:  # position in stratum i: (i + u) * length / count, u uniform in [0, 1)
            positions = torch.arange(count, dtype=torch.float64)
            positions.add_(torch.rand(count, generator=generator, dtype=torch.float64)).mul_(length / count)
            parts.append(flat.index_select(0, positions.long().clamp_(max=length - 1).to(flat.device)))
    return torch.cat(parts) if parts else torch.empty(0)


@dataclass
class _Pivots:
    lo: float
    hi: float
    band_fraction: float
    """Expected share of the scores between the pivots (sizes the band buffer)."""


def _find_pivots(sampled: list[int], by_group: list[list[ScoreShard]], ks: Sequence[int], info: _GroupInfo,
                 comm: Communicator, device: torch.device, seed: int) -> dict[int, _Pivots]:
    """Pivots around the k-th score of each sampled group: bucket edges, or exact sample quantiles."""
    sources, targets = {}, {}
    for g in sampled:
        sample = _draw_sample(by_group[g], _sample_size(info.sizes[g]) / info.sizes[g], seed, comm.rank)
        sources[g] = _tensor_source([sample])
    # One reduce: every group's histogram of the samples' top digit.
    probes = {g: _Search(sources[g], 1, info.bits[g]) for g in sampled}
    flat = torch.cat([probes[g].histogram(_DIGIT, device, torch.int64)[0] for g in sampled])
    comm.all_reduce(flat)
    histograms = {g: flat[i << _DIGIT:(i + 1) << _DIGIT].cpu() for i, g in enumerate(sampled)}
    pivots, refine = {}, {}
    for g in sampled:
        counts = histograms[g]
        m = int(counts.sum())
        q = ks[g] / info.sizes[g]
        margin = PIVOT_SIGMAS * math.sqrt(m * q * (1 - q)) + 2
        upper_rank, lower_rank = math.floor(q * m - margin), math.ceil(q * m + margin)
        exact_fraction = min(1.0, (lower_rank - upper_rank + 1) / max(m, 1))
        upper = min(upper_rank, m) if upper_rank >= 1 else None  # None: no score can be above the band
        lower = max(lower_rank, 1) if lower_rank <= m else None  # None: no score can be below it
        targets[g] = (upper, lower)
        edges = _bucket_edges(counts, upper, lower, info.bits[g])
        if edges.band_fraction <= max(COARSE_PIVOT_SLACK * exact_fraction, 1 / 1024):
            pivots[g] = edges
        else:
            refine[g] = exact_fraction
    if refine:  # one more pass over the samples: exact sample quantiles as pivots
        searches = {}
        for g in refine:
            for side, rank in enumerate(targets[g]):
                if rank is not None:
                    search = _Search(sources[g], rank, info.bits[g])
                    search.choose(histograms[g], _DIGIT)
                    searches[2 * g + side] = search
        _radix_select(searches, comm, device)
        for g, fraction in refine.items():
            upper, lower = targets[g]
            hi = searches[2 * g].value(info.bits[g]) if upper is not None else math.inf
            lo = searches[2 * g + 1].value(info.bits[g]) if lower is not None else -math.inf
            pivots[g] = _Pivots(lo=lo, hi=hi, band_fraction=fraction)
    return pivots


def _bucket_edges(counts: torch.Tensor, upper: int | None, lower: int | None, bits: int) -> _Pivots:
    """Pivots at the edges of the top-digit buckets holding sample ranks ``upper`` and ``lower``."""
    from_top = counts.flip(0).cumsum(0)
    m = int(from_top[-1])
    bins = counts.numel()
    shift = bits - _DIGIT
    inf = _KEY_INF[bits]
    if upper is None:
        hi, first_bin = math.inf, bins - 1
    else:
        first_bin = bins - 1 - int(torch.searchsorted(from_top, torch.tensor(upper)))
        top_key = (((first_bin - bins // 2) + 1) << shift) - 1
        hi = _key_to_value(min(top_key, inf), bits)
    if lower is None:
        lo, last_bin = -math.inf, 0
    else:
        last_bin = bins - 1 - int(torch.searchsorted(from_top, torch.tensor(lower)))
        bottom_key = (last_bin - bins // 2) << shift
        lo = _key_to_value(max(bottom_key, -inf), bits)
    inside = int(counts[last_bin:first_bin + 1].sum()) if last_bin <= first_bin else 0
    return _Pivots(lo=lo, hi=hi, band_fraction=min(1.0, inside / max(m, 1)))


# --------------------------------------------------------------------------------------------------
# Step 3: the band pass
# --------------------------------------------------------------------------------------------------


def _band_step(sampled: list[int], by_group: list[list[ScoreShard]], ks: Sequence[int], info: _GroupInfo,
               pivots: dict[int, _Pivots], comm: Communicator,
               device: torch.device) -> tuple[dict[int, _Search], dict[int, list[_TieView]]]:
    """Count above the upper pivot, collect the band; counts and the band's first digit in one reduce."""
    bands: dict[int, list[BandResult]] = {}
    band_searches: dict[int, tuple[_Search, int]] = {}
    parts = []
    for g in sampled:
        p = pivots[g]
        bands[g] = []
        counts = torch.zeros(5, dtype=torch.int64)
        for shard in by_group[g]:
            # A band much larger than the sample predicts means a failed bracket anyway.
            capacity = max(BAND_MIN_CAPACITY, math.ceil(BAND_CAPACITY_FACTOR * p.band_fraction * shard.scores.numel()))
            result = band_pass(shard.scores, p.lo, p.hi, capacity)
            bands[g].append(result)
            counts += torch.tensor([result.above, result.in_band, result.nans, int(result.in_band > capacity),
                                    shard.scores.numel()])
        band_searches[g] = _band_search(bands[g], pivots[g], info.bits[g])
        parts += [counts.to(device), _first_histogram(band_searches[g], device)]
    flat = torch.cat(parts)
    comm.all_reduce(flat)
    searches: dict[int, _Search] = {}
    views: dict[int, list[_TieView]] = {}
    histograms: dict[int, torch.Tensor] = {}
    band_ks: dict[int, int] = {}  # groups searched in their band: the threshold's rank among the band's scores
    regather: list[int] = []
    start = 0
    for g in sampled:
        width = band_searches[g][1]
        above, in_band, nans, overflow, size = (int(v) for v in flat[start:start + 5])
        histograms[g] = flat[start + 5:start + 5 + (1 << width)]
        start += 5 + (1 << width)
        _raise_on_nan(g, nans)
        _check_size(size, info.sizes[g])
        if not above < ks[g] <= above + in_band or (overflow and in_band > info.sizes[g] // BAND_RETRY_FRACTION):
            # the bracket missed (or the band is too large to hold): search all scores
            searches[g] = _Search(_shard_source(by_group[g]), ks[g], info.bits[g])
            views[g] = [_ScoreTies(s) for s in by_group[g]]
            continue
        band_ks[g] = ks[g] - above
        if overflow:  # the bracket holds, but some shard's band outgrew its buffer (its scores sit near the
            regather.append(g)  # threshold more than the group's do): collect those bands whole, one more reduce
    if regather:
        parts = []
        for g in regather:
            bands[g] = [band_pass(shard.scores, pivots[g].lo, pivots[g].hi, result.in_band)
                        if result.in_band > result.band.numel() else result
                        for shard, result in zip(by_group[g], bands[g])]
            band_searches[g] = _band_search(bands[g], pivots[g], info.bits[g])
            parts.append(_first_histogram(band_searches[g], device))
        flat = torch.cat(parts)
        comm.all_reduce(flat)
        start = 0
        for g in regather:
            width = band_searches[g][1]
            histograms[g] = flat[start:start + (1 << width)]
            start += 1 << width
    for g, k in band_ks.items():
        search, width = band_searches[g]
        search.k = k
        search.choose(histograms[g], width)
        searches[g] = search
        views[g] = [_BandTies(s, r) for s, r in zip(by_group[g], bands[g])]
    return searches, views


def _band_search(bands: list[BandResult], pivots: _Pivots, bits: int) -> tuple[_Search, int]:
    """A search over the band's keys (as offsets from the lower pivot's key: fewer digits than the full
    range) and the width of its first digit."""
    low = _value_to_key(pivots.lo, bits)
    span_bits = max(1, (_value_to_key(pivots.hi, bits) - low).bit_length())
    source = _tensor_source([b.band for b in bands])
    if span_bits <= 62:
        search = _Search(source, 1, span_bits, base=low)
    else:  # a float64 band over nearly the whole range: offsets would overflow int64
        search = _Search(source, 1, bits)
    return search, min(_DIGIT, search.left)


def _first_histogram(band_search: tuple[_Search, int], device: torch.device) -> torch.Tensor:
    search, width = band_search
    return search.histogram(width, device, torch.int64)[0]


# --------------------------------------------------------------------------------------------------
# Step 6: ties at the threshold
# --------------------------------------------------------------------------------------------------


class _BandTies:
    """Tied scores of one shard, found among its band (values and positions)."""

    def __init__(self, shard: ScoreShard, band: BandResult):
        self.shard = shard
        self.band = band

    def tied_positions(self, value: float, first: int) -> tuple[int, torch.Tensor]:
        """(number of scores equal to ``value``, flat indices of the first ``first`` of them, ascending)."""
        positions = self.band.positions[self.band.band == value].long().sort().values
        return positions.numel(), positions[:first]

    def nth_equal_position(self, value: float, n: int) -> int:
        return int(self.tied_positions(value, n)[1][n - 1])


class _ScoreTies:
    """Tied scores of one shard, found by scanning all its scores (in chunks)."""

    def __init__(self, shard: ScoreShard):
        self.shard = shard
        self.flat = shard.scores.reshape(-1)

    def tied_positions(self, value: float, first: int) -> tuple[int, torch.Tensor]:
        count, found = 0, []
        for start in range(0, self.flat.numel(), _CHUNK):
            equal = (self.flat[start:start + _CHUNK] == value).nonzero().flatten()
            if sum(f.numel() for f in found) < first:
                found.append(equal[:first] + start)
            count += equal.numel()
        positions = torch.cat(found) if found else torch.empty(0, dtype=torch.int64)
        return count, positions[:first]

    def nth_equal_position(self, value: float, n: int) -> int:
        for start in range(0, self.flat.numel(), _CHUNK):
            equal = (self.flat[start:start + _CHUNK] == value).nonzero().flatten()
            if n <= equal.numel():
                return start + int(equal[n - 1])
            n -= equal.numel()
        raise AssertionError("fewer tied scores than counted")  # unreachable: counts were all-reduced


_TieView = _BandTies | _ScoreTies


def _break_ties(tied: dict[int, _Search], tie_views: dict[int, list[_TieView]], ks: Sequence[int],
                info: _GroupInfo, comm: Communicator, device: torch.device) -> dict[int, Threshold]:
    """Locate the last kept score among those equal to the threshold, by global element index."""
    if not tied:
        return {}
    order = sorted(tied)
    values = {g: tied[g].value(info.bits[g]) for g in order}
    world, width = comm.world_size, 2 + TIE_POSITIONS
    bases = [0]
    for g in order:
        bases.append(bases[-1] + info.tensors[g] * world)
    # Per (tensor, rank), written by that rank alone: tied count, fragment offset, first tied positions.
    table = torch.zeros(bases[-1], width, dtype=torch.int64)
    mine: dict[tuple[int, int], _TieView] = {}
    for row, g in enumerate(order):
        for view in tie_views[g]:
            tensor = view.shard.tensor
            if (g, tensor) in mine:
                raise ValueError(f"selection group {g}: this rank holds two shards of tensor {tensor}")
            mine[(g, tensor)] = view
            count, first = view.tied_positions(values[g], TIE_POSITIONS)
            cell = table[bases[row] + tensor * world + comm.rank]
            cell[0], cell[1] = count, view.shard.offset
            cell[2:2 + first.numel()] = first + view.shard.offset
    table = table.to(device)
    comm.all_reduce(table)
    table = table.cpu()
    # Walk the tied scores in global order to the one that makes k.
    positions = torch.full((len(order),), -1, dtype=torch.int64)
    cuts, late = {}, False
    for row, g in enumerate(order):
        need = tied[g].ties_kept
        for tensor in range(info.tensors[g]):
            cells = table[bases[row] + tensor * world: bases[row] + (tensor + 1) * world]
            fragments = sorted((int(cells[r, 1]), r) for r in range(world) if cells[r, 0] > 0)
            for _, rank in fragments:
                count = int(cells[rank, 0])
                if need <= count:
                    cuts[g] = tensor
                    if need <= TIE_POSITIONS:  # the table already holds it
                        positions[row] = cells[rank, 1 + need]
                    else:  # only its owner knows: one more reduce
                        late = True
                        if rank == comm.rank:
                            offset = int(cells[rank, 1])
                            positions[row] = offset + mine[(g, tensor)].nth_equal_position(values[g], need)
                    need = 0
                    break
                need -= count
            if need == 0:
                break
    if late:
        positions = positions.to(device)
        comm.all_reduce(positions, op="max")
        positions = positions.cpu()
    return {g: Threshold(ks[g], info.sizes[g], values[g], cuts[g], int(positions[row]))
            for row, g in enumerate(order)}


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _edge_threshold(k: int, n: int) -> Threshold:
    if k == 0:
        return Threshold(0, n, math.inf, NO_TIES, 0)
    return Threshold(n, n, -math.inf, ALL_TIES, 0)


def _raise_on_nan(group: int, count: int) -> None:
    if count:
        raise ValueError(f"selection group {group}: {count} NaN score(s); scores must be numbers "
                         "(a NaN usually comes from a NaN gradient or weight)")


def _comm_device(comm: Communicator, shards: Sequence[ScoreShard]) -> torch.device:
    explicit = getattr(comm, "device", None)
    if explicit is not None:
        return torch.device(explicit)
    return shards[0].scores.device if shards else torch.device("cpu")
