"""Each rank's part of each prunable weight, the same way under ZeRO 0, 1, 2 and 3.

A :class:`Fragment` is a contiguous range ``[start, start + numel)`` of one weight's flattened elements
that this rank owns, with views of that range in every copy the rank keeps: the fp32 master weight the
optimizer updates, its gradient (inside the optimizer step), its optimizer moments, and the working copy
the forward pass reads. The owned ranges of all ranks partition every weight, so pruning state
allocated per fragment (importance statistics, masks) is sharded like the optimizer state: about
``1/world_size`` of the model per rank. Where the fragments come from:

- ZeRO-3 (``param.ds_id``): rank r owns ``[r*p, (r+1)*p)`` of the weight, p = the partition size; the
  working copy is ``param.ds_tensor``, the master a slice of the optimizer's flat fp32 partition.
- ZeRO-1/2 and DeepSpeed's bf16 optimizer (``param._hp_mapping``): the range of the weight that falls
  into this rank's flat fp32 partition (often empty for small models); the working copy is replicated.
- Otherwise (ZeRO-0 in fp32, and frozen weights under ZeRO 0-2): every rank holds the whole weight and
  the optimizer steps it everywhere; ownership is an even split, used for pruning state only.

Nothing outside ``sparse_dist/distributed/`` touches DeepSpeed's internals; this module is where they
are read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from sparse_dist.distributed.zero_layout import even_range


@dataclass
class Fragment:
    """This rank's part of one weight. Views are writable and alias DeepSpeed's own storage."""

    name: str
    param: torch.nn.Parameter
    index: int
    """Position of the weight in the list the fragments were built from (its selection tensor number)."""
    full_shape: torch.Size
    start: int
    """Flat index of the fragment's first element in the whole weight."""
    numel: int
    master_flat: torch.Tensor | None
    """The fp32 tensor the optimizer steps that holds this fragment (None for frozen weights)."""
    master_offset: int
    master_replicated: bool
    """True when every rank holds and steps the whole master (ZeRO-0 in fp32)."""
    working_replicated: bool
    """True when every rank holds the whole working copy (ZeRO 0-2)."""
    optimizer: torch.optim.Optimizer | None
    """The torch optimizer whose state holds the moments of ``master_flat``."""

    @property
    def full_numel(self) -> int:
        return int(torch.Size(self.full_shape).numel())

    @property
    def trainable(self) -> bool:
        return self.param.requires_grad

    def master(self) -> torch.Tensor | None:
        """This fragment of the fp32 master weight (what the optimizer updates); None for a frozen weight."""
        if self.numel == 0 and self.trainable:
            return torch.empty(0, dtype=torch.float32, device=self.param.device)
        if self.master_flat is None:
            return None
        return self.master_flat.view(-1).narrow(0, self.master_offset, self.numel)

    def grad(self) -> torch.Tensor | None:
        """This fragment of the gradient the optimizer is about to use (valid inside the optimizer step)."""
        if self.master_flat is None or self.master_flat.grad is None:
            return None
        return self.master_flat.grad.view(-1).narrow(0, self.master_offset, self.numel)

    def optimizer_state(self, key: str) -> torch.Tensor | None:
        """This fragment of an optimizer state tensor such as ``exp_avg`` (None before the first step)."""
        state = self._state().get(key)
        if state is None or state.shape != self.master_flat.shape:
            return None
        return state.view(-1).narrow(0, self.master_offset, self.numel)

    def optimizer_state_keys(self) -> list[str]:
        return [key for key, value in self._state().items()
                if torch.is_tensor(value) and value.shape == self.master_flat.shape]

    def working(self) -> torch.Tensor:
        """This fragment of the working copy the forward pass reads."""
        if hasattr(self.param, "ds_id"):
            return self.param.ds_tensor.view(-1).narrow(0, 0, self.numel)
        return self.param.data.view(-1).narrow(0, self.start, self.numel)

    @property
    def working_resident(self) -> bool:
        """True for a ZeRO-3 weight that stays gathered between steps (below DeepSpeed's persistence
        threshold): the forward pass reads its whole ``param.data``, refreshed from the partitions only at
        the end of each optimizer step, so a mask change must zero that copy too."""
        return bool(getattr(self.param, "ds_persist", False)) and self.param.data.numel() == self.full_numel

    def full_master(self) -> torch.Tensor | None:
        """The whole master weight, where every rank holds it (``master_replicated``), else None."""
        return self.master_flat.view(-1) if self.master_replicated else None

    def full_working(self) -> torch.Tensor | None:
        """The whole working copy, where every rank holds it (``working_replicated`` or
        ``working_resident``), else None."""
        return self.param.data.view(-1) if self.working_replicated or self.working_resident else None

    def _state(self) -> dict:
        if self.optimizer is None or self.master_flat is None:
            return {}
        return self.optimizer.state.get(self.master_flat, {})


def inner_optimizers(engine) -> list[torch.optim.Optimizer]:
    """The torch optimizer(s) that step the fp32 masters, under any ZeRO stage."""
    optimizer = engine.optimizer
    inner = getattr(optimizer, "optimizer", None)
    if inner is None:  # ZeRO-0 in fp32: DeepSpeed steps the plain torch optimizer
        return [optimizer]
    found = [inner]
    backup = getattr(optimizer, "backup_optimizer", None)  # ZeRO-3 with a partial optimizer offload
    if backup is not None:
        found.append(backup)
    return found


def build_fragments(engine, named_params: Sequence[tuple[str, torch.nn.Parameter]]) -> list[Fragment]:
    """This rank's fragment of each named weight, in the given order. Needs no communication.

    Stages: 0, 1, 2, 3 (with or without CPU offload); DeepSpeed's bf16 optimizer. Every rank must pass
    the same weights in the same order; fragments of the same weight on different ranks are disjoint
    and cover it.
    """
    optimizer = engine.optimizer
    inner = inner_optimizers(engine)[0]
    fragments = []
    for index, (name, param) in enumerate(named_params):
        if hasattr(param, "ds_id"):
            fragments.append(_zero3_fragment(name, index, param, optimizer, inner))
        elif param.requires_grad and _is_partitioned_optimizer(optimizer):
            fragments.append(_hp_fragment(name, index, param, optimizer, inner))
        else:
            fragments.append(_replicated_fragment(name, index, param, inner))
    return fragments


def _is_partitioned_optimizer(optimizer) -> bool:
    return hasattr(optimizer, "single_partition_of_fp32_groups") or hasattr(optimizer, "fp32_groups_flat_partition")


def _zero3_fragment(name, index, param, optimizer, inner) -> Fragment:
    rank = dist.get_rank(group=param.ds_process_group)
    partition = param.ds_tensor.ds_numel
    start = min(rank * partition, param.ds_numel)
    numel = max(0, min(partition, param.ds_numel - start))
    flat, offset = None, 0
    if param.requires_grad:
        group, offset, _ = optimizer.grad_position[optimizer.get_param_id(param)]
        flat = optimizer.fp32_partitioned_groups_flat[group]
    return Fragment(name=name, param=param, index=index, full_shape=param.ds_shape, start=start, numel=numel,
                    master_flat=flat, master_offset=offset, master_replicated=False, working_replicated=False,
                    optimizer=inner if flat is not None else None)


def _hp_fragment(name, index, param, optimizer, inner) -> Fragment:
    mapping = getattr(param, "_hp_mapping", None)
    if mapping is None:  # the whole weight lies in other ranks' partitions
        return Fragment(name=name, param=param, index=index, full_shape=param.shape, start=0, numel=0,
                        master_flat=None, master_offset=0, master_replicated=False, working_replicated=True,
                        optimizer=None)
    partitions = getattr(optimizer, "single_partition_of_fp32_groups", None)
    if partitions is None:
        partitions = optimizer.fp32_groups_flat_partition
    flat = partitions[mapping.param_group_index]
    return Fragment(name=name, param=param, index=index, full_shape=param.shape,
                    start=mapping.lp_fragment_address.start, numel=mapping.lp_fragment_address.numel,
                    master_flat=flat, master_offset=mapping.hp_fragment_address.start, master_replicated=False,
                    working_replicated=True, optimizer=inner)


def _replicated_fragment(name, index, param, inner) -> Fragment:
    start, numel = even_range(param.numel(), dist.get_world_size(), dist.get_rank())
    trainable = param.requires_grad
    return Fragment(name=name, param=param, index=index, full_shape=param.shape, start=start,
                    numel=numel, master_flat=param if trainable else None,
                    master_offset=start, master_replicated=trainable, working_replicated=True,
                    optimizer=inner if trainable else None)
