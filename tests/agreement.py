"""What two trainings that agree to float rounding may differ in: masks only where a score sits at the threshold.

A mask keeps the elements whose score is above its group's threshold (ties broken by position). Take a
reference run and another run of the same config under another ZeRO stage or world size, at the same
update, with scores ``s_ref`` and ``s`` and thresholds ``t_ref`` and ``t`` per element, and
``delta = max |s - s_ref|``. If an element is kept in one run and not in the other, then (one direction;
the other is symmetric) ``s_ref >= t_ref`` and ``s <= t``, so ``t_ref <= s_ref <= t + delta``: its
reference score lies within ``delta`` of the band between the two thresholds. Every flip must be such an
element, so their number bounds the flips; anything else is a real difference (a selection bug, a
mask applied to the wrong fragment). For the top-k of one group the two thresholds are themselves
within ``delta`` of each other (the k-th largest value moves at most as far as any score).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


def full_values(fragments, values: Sequence[torch.Tensor], comm) -> list[torch.Tensor]:
    """Every rank's fragment values of each weight, assembled into whole flat fp64 tensors. All ranks call."""
    out = []
    for fragment, value in zip(fragments, values):
        whole = torch.zeros(fragment.full_numel, dtype=torch.float64)
        whole[fragment.start:fragment.start + fragment.numel] = value.detach().reshape(-1).double().cpu()
        comm.all_reduce(whole)  # fragments are disjoint: the sum is the union, exactly
        out.append(whole)
    return out


@dataclass
class Agreement:
    delta: float
    """Largest difference between the two runs' scores."""
    threshold_delta: float
    """Largest difference between the two runs' thresholds (of the same element)."""
    flips: int
    """Elements kept in one run and pruned in the other."""
    near: int
    """Elements whose reference score lies within ``delta`` of the band between the two thresholds."""
    unexplained: int
    """Flips outside that band: each is a real difference."""


def compare(mask: torch.Tensor, scores: torch.Tensor, cuts: torch.Tensor,
            ref_mask: torch.Tensor, ref_scores: torch.Tensor, ref_cuts: torch.Tensor) -> Agreement:
    """Compare one update of two runs (flat tensors over all prunable elements, ``cuts`` per element)."""
    delta = float((scores - ref_scores).abs().max()) if scores.numel() else 0.0
    finite = torch.isfinite(cuts) & torch.isfinite(ref_cuts)
    threshold_delta = float((cuts - ref_cuts)[finite].abs().max()) if bool(finite.any()) else 0.0
    low = torch.minimum(cuts, ref_cuts) - delta
    high = torch.maximum(cuts, ref_cuts) + delta
    near_band = (ref_scores >= low) & (ref_scores <= high)
    flipped = mask != ref_mask
    return Agreement(delta=delta, threshold_delta=threshold_delta, flips=int(flipped.sum()),
                     near=int(near_band.sum()), unexplained=int((flipped & ~near_band).sum()))


def fixed_scores(numel: int, seed: int) -> torch.Tensor:
    """Scores with many ties (9 distinct values), the same in every configuration."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(-4, 5, (numel,), generator=generator).float() / 4


class SelectionSpy:
    """Wraps ``pruner.select`` to keep the fragment values the last selection saw; :meth:`seen` gives them
    whole, with each element's threshold (nothing selected yet: zeros, thresholds -inf, all kept)."""

    def __init__(self, pruner):
        self.pruner = pruner
        self.values = None
        self._select = pruner.select
        pruner.select = self._spy

    def _spy(self, values, ks, dtype):
        self.values = [v.detach().clone() for v in values]
        return self._select(values, ks, dtype)

    def seen(self, comm) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores, thresholds), flat fp64 over the pruner's sites in order. All ranks call."""
        pruner = self.pruner
        sizes = [s.numel for s in pruner.sites]
        if self.values is None:
            return torch.zeros(sum(sizes), dtype=torch.float64), torch.full((sum(sizes),), -torch.inf,
                                                                             dtype=torch.float64)
        scores = full_values(pruner.fragments[:len(sizes)], self.values[:len(sizes)], comm)
        cuts = [torch.full((n,), pruner.thresholds[pruner.grouping.group[i]].value, dtype=torch.float64)
                for i, n in enumerate(sizes)]
        return torch.cat(scores), torch.cat(cuts)
