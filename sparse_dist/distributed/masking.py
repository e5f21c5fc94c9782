"""Writing masks into every copy of a weight, and keeping pruned weights at zero.

A mask is held per fragment (:class:`~sparse_dist.distributed.bitmask.PackedMask`, 1 = keep). Applying
it zeroes the pruned elements of the fp32 master, of the optimizer moments and of the working copy
the forward pass reads, on every rank. Where a copy is replicated (the working copy under ZeRO 0-2,
the master under ZeRO-0), every rank needs the whole mask of that weight for a moment: the packed
bits of all fragments are combined with one all-reduce of ``numel / 8`` bytes (each rank contributes
only its own bits, so the sum is their union), used, and dropped. Under ZeRO-3 every copy is
partitioned and no communication is needed.

Zeroing is a bitwise AND of each copy's bit pattern with the mask spread to words of all ones (kept)
or zeros (pruned) (:meth:`~sparse_dist.distributed.bitmask.PackedMask.keep_words`), built once per
fragment and element size and dropped after use: a transient the size of the fragment. It is exact
(a pruned inf or NaN becomes +0.0, which multiplying by the mask would not do) and several times
faster on CPU than ``masked_fill_`` with a bool mask, which dominated the pruner's share of a step.

Pruned weights then stay exactly zero through later optimizer steps when their gradients are zeroed
before each step (:func:`zero_masked_grads`, run inside the step by
:class:`~sparse_dist.distributed.step_tap.OptimizerStepTap`): a zero weight with zero moments and a
zero gradient stays zero under Adam and AdamW.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sparse_dist.distributed.bitmask import PackedMask, word_dtype
from sparse_dist.distributed.comm import Communicator
from sparse_dist.distributed.fragments import Fragment


def gather_full_mask(fragment: Fragment, mask: PackedMask, comm: Communicator) -> torch.Tensor:
    """The whole weight's mask (flat bool) on every rank, from every rank's fragment mask.

    All ranks must call it for the same weight. Stages: 0-3.
    """
    return _gather_full_packed(fragment, mask, comm).unpack()


def _gather_full_packed(fragment: Fragment, mask: PackedMask, comm: Communicator) -> PackedMask:
    """:func:`gather_full_mask`, still packed. All ranks must call it for the same weight."""
    full = fragment.full_numel
    head = fragment.start % 8
    aligned = torch.zeros((full + 7) // 8 + 1, dtype=torch.uint8, device=mask.bits.device)
    if fragment.numel:
        shifted = torch.zeros(head + fragment.numel, dtype=torch.bool, device=mask.bits.device)
        shifted[head:] = mask.unpack()
        packed = PackedMask.pack(shifted).bits
        first = fragment.start // 8
        aligned[first:first + packed.numel()] = packed
    device = getattr(comm, "device", aligned.device)
    aligned = aligned.to(device)
    comm.all_reduce(aligned)  # disjoint bits: the sum is the union
    return PackedMask(bits=aligned[: (full + 7) // 8], numel=full)


class _Zeroer:
    """Zeroes the pruned elements of tensors under one mask; the AND words are built once per element size."""

    def __init__(self, mask: PackedMask):
        self.mask = mask
        self.words: dict[torch.dtype, torch.Tensor] = {}

    def __call__(self, values: torch.Tensor) -> None:
        dtype = word_dtype(values.dtype)
        if dtype not in self.words:
            self.words[dtype] = self.mask.keep_words(dtype).to(values.device)
        values.view(dtype).bitwise_and_(self.words[dtype])


def apply_masks(fragments: Sequence[Fragment], masks: Sequence[PackedMask], comm: Communicator,
                zero_optimizer_state: bool = True) -> None:
    """Zero the pruned elements of every copy of every weight. All ranks must call. Stages: 0-3.

    ``masks[i]`` is the mask of ``fragments[i]`` (this rank's part). With ``zero_optimizer_state`` the
    Adam moments of pruned elements are zeroed too, so that they stay at zero (see module docstring).
    """
    for fragment, mask in zip(fragments, masks, strict=True):
        if mask.numel != fragment.numel:
            raise ValueError(f"{fragment.name}: mask of {mask.numel} elements for a fragment of {fragment.numel}")
        full_mask = None
        resident = fragment.working_resident
        if fragment.working_replicated or fragment.master_replicated or resident:
            full_mask = _Zeroer(_gather_full_packed(fragment, mask, comm))
        local = _Zeroer(mask) if fragment.numel else None
        with torch.no_grad():
            if fragment.master_replicated:
                full_mask(fragment.full_master())
                if zero_optimizer_state:
                    for key in fragment.optimizer_state_keys():
                        full_mask(fragment.optimizer.state[fragment.master_flat][key].view(-1))
            elif fragment.master_flat is not None and fragment.numel:
                local(fragment.master())
                if zero_optimizer_state:
                    for key in fragment.optimizer_state_keys():
                        local(fragment.optimizer_state(key))
            if fragment.working_replicated:
                full_mask(fragment.full_working())
            elif fragment.numel:
                local(fragment.working())
            if resident:
                full_mask(fragment.full_working())


def zero_masked_grads(fragments: Sequence[Fragment], masks: Sequence[PackedMask], comm: Communicator) -> None:
    """Zero the gradients of pruned elements, inside the optimizer step. All ranks call. Stages: 0-3.

    Under ZeRO-0 every rank steps the whole weight, so it needs the whole mask (gathered, see
    :func:`gather_full_mask`); under ZeRO 1-3 each rank zeroes its own fragment's gradient.
    """
    for fragment, mask in zip(fragments, masks, strict=True):
        if fragment.master_replicated:
            full = _gather_full_packed(fragment, mask, comm)
            grad = fragment.master_flat.grad
            if grad is not None:
                _Zeroer(full)(grad.view(-1))
        elif fragment.numel:
            grad = fragment.grad()
            if grad is not None:
                _Zeroer(mask)(grad)
