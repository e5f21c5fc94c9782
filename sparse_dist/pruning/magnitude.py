"""Gradual magnitude pruning: keep the weights of largest |W|; pruned weights are zero and stay zero.

At each update step of the schedule the scores are the magnitudes of this rank's fragment of the fp32
master weights; the exact distributed selection gives the masks, which zero the master, the Adam
moments and the working copy (see :mod:`~sparse_dist.distributed.masking`). Between updates the
gradients of pruned weights are zeroed inside the optimizer step, so they stay exactly zero.
"""

from __future__ import annotations

import torch

from sparse_dist.distributed.fragments import build_fragments
from sparse_dist.distributed.masking import apply_masks, zero_masked_grads
from sparse_dist.distributed.step_tap import OptimizerStepTap
from sparse_dist.pruning.pruner import Pruner
from sparse_dist.pruning.schedule import kept_count
from sparse_dist.pruning.scopes import uniform_ks


class MagnitudePruner(Pruner):
    scopes = ("local", "global")

    def attach(self, engine) -> None:
        named = self.pruned_parameters()
        frozen = [name for name, param in named if not param.requires_grad]
        if frozen:
            raise ValueError(f"magnitude pruning trains the weights it prunes; {frozen[0]} is frozen")
        self.fragments = build_fragments(engine, named)
        self._index = {f.index: i for i, f in enumerate(self.fragments)}
        self.tap = OptimizerStepTap(engine, self.fragments)
        self.tap.before.append(self._zero_pruned_grads)

    def _zero_pruned_grads(self, active) -> None:
        zero_masked_grads(active, [self.masks[self._index[f.index]] for f in active], self.comm)

    def scores(self, step: int) -> list[torch.Tensor]:
        """This rank's fp32 score of every element of its fragments: |W| of the master weights."""
        return [f.master().detach().abs() for f in self.fragments]

    def step(self, step: int) -> None:
        if not self.schedule.is_update_step(step, self.every_step_after_ramp):
            return
        self.target = self.schedule.remaining(step)
        with torch.no_grad():
            values = self.scores(step)
        ks = uniform_ks(self.grouping, self.target)
        masks = self.select(values, ks, torch.float32)
        self.replace_masks(masks)
        apply_masks(self.fragments, self.masks, self.comm)


__all__ = ["MagnitudePruner", "kept_count"]
