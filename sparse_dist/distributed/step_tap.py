"""A window into the optimizer step, where each rank's gradient fragments are final.

Importance scores need the gradient the optimizer actually uses: averaged over ranks and clipped. In
DeepSpeed that gradient exists in one place only, the ``.grad`` of the flat fp32 partition, and only
while the inner torch optimizer steps it (ZeRO 1-3 build it just before and free it just after; ZeRO-2
and ZeRO-3 step one flat partition at a time). The tap registers a pre- and a post-step hook on that
inner optimizer and hands each call the fragments being stepped, with the pre-step weights
(pre-hook) or post-step weights (post-hook) and the gradient in place.

This is the one hook in the training step, and it is here, not in the pruning code, because the
gradient cannot be read anywhere else without gathering or copying it. Pruning still changes masks
only in its one explicit call per step; observers only accumulate statistics or zero gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from sparse_dist.distributed.fragments import Fragment, inner_optimizers

Observer = Callable[[list[Fragment]], None]


class OptimizerStepTap:
    """Calls observers with the fragments whose master is being stepped, before and after the update.

    Observers run on every rank in the same order (every rank steps its partitions in the same
    sequence), so they may use collectives. Stages: 0-3, with or without CPU offload.
    """

    def __init__(self, engine, fragments: Sequence[Fragment]):
        self.fragments = list(fragments)
        self.before: list[Observer] = []
        """Called with the gradients in place and the weights not yet updated."""
        self.after: list[Observer] = []
        """Called with the gradients in place and the weights updated."""
        self._handles = []
        for optimizer in inner_optimizers(engine):
            self._handles.append(optimizer.register_step_pre_hook(self._pre))
            self._handles.append(optimizer.register_step_post_hook(self._post))

    def _active(self, optimizer: torch.optim.Optimizer) -> list[Fragment]:
        stepped = {id(p) for group in optimizer.param_groups for p in group["params"]}
        return [f for f in self.fragments if f.master_flat is not None and id(f.master_flat) in stepped]

    def _pre(self, optimizer, args, kwargs) -> None:
        if self.before:
            active = self._active(optimizer)
            for observer in self.before:
                observer(active)

    def _post(self, optimizer, args, kwargs) -> None:
        if self.after:
            active = self._active(optimizer)
            for observer in self.after:
                observer(active)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
