"""One pass over a score shard: count scores above ``hi``, collect those in ``[lo, hi]``, count NaNs.

This is the only step of the distributed selection that reads every local score, so it decides the
selection's speed. In eager PyTorch it costs several passes (each comparison writes a bool tensor that
the next operation reads back); on CPU a small C++ kernel does it in one OpenMP loop, at the speed of
a plain ``sum`` (see benchmarks/select_benchmark.py). The kernel is built with the machine's C++
compiler on first use, like DeepSpeed's own ops, and cached; where it cannot be used (a GPU tensor,
a dtype other than float32, no compiler, or ``SPARSE_DIST_NO_KERNELS=1``) the same result comes from
torch operations.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

_SOURCE = r"""
#include <torch/extension.h>
#include <atomic>
#include <cstring>
#include <vector>

// GCC/Clang vector extensions: 4 floats per vector, native on SSE2 and NEON.
typedef float v4f __attribute__((vector_size(16)));
typedef int32_t v4i __attribute__((vector_size(16)));
typedef uint64_t v2u __attribute__((vector_size(16)));
static inline v4f load4(const float* p) { v4f v; std::memcpy(&v, p, sizeof v); return v; }
static inline bool any_set(v4i m) { v2u u; std::memcpy(&u, &m, sizeof u); return (u[0] | u[1]) != 0; }
static inline int64_t lanes_sum(v4i v) { return static_cast<int64_t>(v[0]) + v[1] + v[2] + v[3]; }

// Blocks of 16K floats are split over threads. Each block is read in runs of 16 floats: the counts
// stay in vector accumulators (a comparison is -1 where true), and a run is scanned again, from L1,
// only if it holds a band element. That scan is branchless (every lane is written, the cursor moves
// past band lanes only): band elements are scattered at random, and a branch per element would be
// mispredicted about once per element. Band values and positions go to a per-block buffer that is
// copied out at one atomically reserved place. Positions are int32: callers split longer inputs.
std::vector<int64_t> band_pass(torch::Tensor x, double lo_d, double hi_d, torch::Tensor band,
                               torch::Tensor where) {
  TORCH_CHECK(x.is_contiguous() && x.scalar_type() == torch::kFloat32, "band_pass: contiguous float32 input");
  const float* data = x.data_ptr<float>();
  const int64_t n = x.numel();
  const float lo = static_cast<float>(lo_d), hi = static_cast<float>(hi_d);
  const v4f lo_v = {lo, lo, lo, lo}, hi_v = {hi, hi, hi, hi};
  float* out = band.data_ptr<float>();
  TORCH_CHECK(x.numel() < (int64_t(1) << 31), "band_pass: inputs of 2^31 elements or more are split by the caller");
  int32_t* out_where = where.data_ptr<int32_t>();
  const int64_t capacity = band.numel();
  constexpr int64_t block = 1 << 14, run = 16;
  std::atomic<int64_t> cursor(0);
  int64_t above = 0, nans = 0, in_band = 0;
  #pragma omp parallel for reduction(+:above, nans, in_band) schedule(static)
  for (int64_t start = 0; start < n; start += block) {
    const int64_t end = std::min(n, start + block);
    float found[block + run];
    int32_t found_at[block + run];
    int32_t count = 0;
    v4i acc_above = {0, 0, 0, 0}, acc_nan = {0, 0, 0, 0};
    int64_t i = start;
    for (; i + run <= end; i += run) {
      const v4f x0 = load4(data + i), x1 = load4(data + i + 4), x2 = load4(data + i + 8), x3 = load4(data + i + 12);
      acc_above += (x0 > hi_v) + (x1 > hi_v) + (x2 > hi_v) + (x3 > hi_v);
      acc_nan += (x0 != x0) + (x1 != x1) + (x2 != x2) + (x3 != x3);
      const v4i inside = ((x0 >= lo_v) & (x0 <= hi_v)) | ((x1 >= lo_v) & (x1 <= hi_v)) |
                         ((x2 >= lo_v) & (x2 <= hi_v)) | ((x3 >= lo_v) & (x3 <= hi_v));
      if (any_set(inside)) {
        for (int64_t j = 0; j < run; ++j) {
          const float v = data[i + j];
          found[count] = v;
          found_at[count] = static_cast<int32_t>(i + j);
          count += (v >= lo) & (v <= hi);
        }
      }
    }
    int64_t a = -lanes_sum(acc_above), q = -lanes_sum(acc_nan);
    for (; i < end; ++i) {
      const float v = data[i];
      a += v > hi;
      q += v != v;
      if ((v >= lo) & (v <= hi)) { found_at[count] = static_cast<int32_t>(i); found[count++] = v; }
    }
    above += a; nans += q; in_band += count;
    if (count > 0) {
      const int64_t position = cursor.fetch_add(count);
      for (int32_t j = 0; j < count && position + j < capacity; ++j) {
        out[position + j] = found[j];
        out_where[position + j] = found_at[j];
      }
    }
  }
  return {above, in_band, nans};
}
"""

_kernel = None
_kernel_failed = False


def _load_kernel():
    """The compiled kernel, or None (compilation failed or switched off)."""
    global _kernel, _kernel_failed
    if _kernel is not None or _kernel_failed:
        return _kernel
    if os.environ.get("SPARSE_DIST_NO_KERNELS") == "1":
        _kernel_failed = True
        return None
    try:
        from torch.utils.cpp_extension import load_inline

        from sparse_dist.distributed.ops import use_venv_ninja

        use_venv_ninja()

        _kernel = load_inline(name="sparse_dist_band_pass", cpp_sources=_SOURCE, functions=["band_pass"],
                              extra_cflags=["-O3", "-fopenmp"], extra_ldflags=["-fopenmp"], verbose=False)
    except Exception as error:  # noqa: BLE001 - any build problem means "use the torch path"
        log.warning("could not build the band-pass kernel (%s); using torch operations instead", error)
        _kernel_failed = True
    return _kernel


@dataclass
class BandResult:
    above: int
    """Scores strictly greater than ``hi``."""
    in_band: int
    """Scores in ``[lo, hi]``, all of them, even beyond ``capacity``."""
    nans: int
    band: torch.Tensor
    """The band's scores, at most ``capacity`` of them (complete iff ``in_band <= capacity``)."""
    positions: torch.Tensor
    """Flat index of each band score in the input (int32 below 2^31 elements, else int64), in no order."""


_KERNEL_SPAN = 1 << 30


def band_pass(scores: torch.Tensor, lo: float, hi: float, capacity: int) -> BandResult:
    """Count ``scores > hi`` and NaNs, and collect ``lo <= scores <= hi`` (up to ``capacity`` values)."""
    flat = scores.reshape(-1)
    if flat.device.type == "cpu" and flat.dtype == torch.float32 and flat.numel() > 0:
        kernel = _load_kernel()
        if kernel is not None:
            return _kernel_band_pass(kernel, flat.contiguous(), lo, hi, capacity)
    inside = (flat >= lo) & (flat <= hi)
    positions = inside.nonzero().flatten()[:capacity]
    if flat.numel() < 1 << 31:
        positions = positions.to(torch.int32)
    return BandResult(int((flat > hi).sum()), int(inside.sum()), int(torch.isnan(flat).sum()), flat[positions.long()],
                      positions)


def _kernel_band_pass(kernel, flat: torch.Tensor, lo: float, hi: float, capacity: int) -> BandResult:
    band = torch.empty(capacity, dtype=torch.float32)
    where = torch.empty(capacity, dtype=torch.int32)
    above = in_band = nans = 0
    pieces = []
    for start in range(0, flat.numel(), _KERNEL_SPAN):  # int32 positions: one call per 2^30 elements
        room = max(0, capacity - in_band)
        a, b, q = kernel.band_pass(flat[start:start + _KERNEL_SPAN], float(lo), float(hi), band[in_band:][:room],
                                   where[in_band:][:room])
        kept = min(b, room)
        if flat.numel() >= 1 << 31:
            pieces.append(where[in_band:in_band + kept].to(torch.int64) + start)
        above, in_band, nans = above + a, in_band + b, nans + q
    kept = min(in_band, capacity)
    positions = torch.cat(pieces) if pieces else where[:kept]
    return BandResult(above, in_band, nans, band[:kept], positions)
