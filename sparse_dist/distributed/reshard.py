"""Moving per-fragment state to another world size.

Every piece of sharded state (masks, importance statistics, teacher partitions) is saved as a list of
fragments, each a contiguous range ``[start, start + numel)`` of a flat tensor with its values. When a
run resumes with a different number of ranks, a rank's new fragment is assembled from the old fragments
that overlap it; old fragments of one tensor never overlap each other and together cover it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def assemble(pieces: Sequence[tuple[int, torch.Tensor]], start: int, numel: int) -> torch.Tensor:
    """Elements ``[start, start + numel)`` of a flat tensor, from ``(offset, values)`` pieces covering them."""
    dtype = next((v.dtype for _, v in pieces), torch.float32)
    out = torch.empty(numel, dtype=dtype)
    covered = 0
    for offset, values in pieces:
        values = values.reshape(-1)
        lo, hi = max(start, offset), min(start + numel, offset + values.numel())
        if lo < hi:
            out[lo - start:hi - start] = values[lo - offset:hi - offset].to("cpu")
            covered += hi - lo
    if covered != numel:
        raise ValueError(f"the saved fragments cover {covered} of the {numel} elements [{start}, {start + numel})")
    return out
