"""What a rank has actually allocated, read from a live engine, pruner and teacher, in the memory planner's
categories (:mod:`sparse_dist.plan`): the measurement the planner is checked against.

Tensors are counted once per storage (views of one flat buffer count the buffer once), except where one
DeepSpeed buffer serves several categories and is exactly the concatenation of per-parameter views (ZeRO-3's
partitions and its flat gradient buffer), which are counted view by view. The gradients the optimizer reads
exist only inside its step, so :class:`GradientProbe` records them there; ZeRO 1-3 step one group at a time
and free each group's fp32 gradient before the next, so it keeps the peak over those calls.

Stages: 0-3, with or without CPU offload. Nothing here communicates.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from sparse_dist.distributed.fragments import inner_optimizers
from sparse_dist.pruning.masked_linear import trains_with_scores


def _storage_key(tensor: torch.Tensor) -> tuple[int, str]:
    storage = tensor.untyped_storage()
    return storage.data_ptr(), storage.device.type


def _storage_bytes(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().nbytes()


def _view_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


class _Tally:
    """Bytes per category, each storage counted once over all categories."""

    def __init__(self):
        self.seen: set[tuple[int, str]] = set()
        self.bytes: dict[str, int] = {}

    def storage(self, category: str, tensor: torch.Tensor | None) -> None:
        if tensor is None or not torch.is_tensor(tensor) or _storage_bytes(tensor) == 0:
            return
        key = _storage_key(tensor)
        if key in self.seen:
            return
        self.seen.add(key)
        self.bytes[category] = self.bytes.get(category, 0) + _storage_bytes(tensor)

    def view(self, category: str, tensor: torch.Tensor) -> None:
        self.bytes[category] = self.bytes.get(category, 0) + _view_bytes(tensor)


def _master_groups(engine) -> list[list[torch.Tensor]]:
    """The fp32 tensors the optimizer steps, per trainer group in order (the mask scores' group last, see
    :func:`~sparse_dist.trainer.build_param_groups`). Read from DeepSpeed's own lists: inside and around a step
    ZeRO 1-3 narrow or empty the inner optimizer's ``param_groups``."""
    optimizer = engine.optimizer
    flats = getattr(optimizer, "fp32_partitioned_groups_flat", None)  # ZeRO-3
    if flats is not None:
        groups: dict[int, list[torch.Tensor]] = {}
        for sub_group, flat in enumerate(flats):
            groups.setdefault(optimizer.sub_group_to_group_id[sub_group], []).append(flat)
        return [groups[g] for g in sorted(groups)]
    partitions = getattr(optimizer, "single_partition_of_fp32_groups", None)  # ZeRO-1/2
    if partitions is None:
        partitions = getattr(optimizer, "fp32_groups_flat_partition", None)  # DeepSpeed's bf16 optimizer
    if partitions is not None:
        return [[flat] for flat in partitions]
    return [list(group["params"]) for group in optimizer.param_groups]  # ZeRO-0 in fp32: the parameters


def _score_group(engine) -> int | None:
    """Index of the mask scores' group in :func:`_master_groups` (None when no score trains)."""
    trains = any(p.requires_grad and trains_with_scores(n, p) for n, p in engine.module.named_parameters())
    return len(_master_groups(engine)) - 1 if trains else None


class GradientProbe:
    """Records, inside every optimizer step, the bytes of the gradients the step reads: each group's fp32
    ``.grad`` (the parameters' own under ZeRO-0 in fp32) and ZeRO-3's flat buffer of gradient partitions.
    :attr:`peak` holds the largest ``gradients`` and ``score optimizer state`` (the scores' gradient) seen."""

    def __init__(self, engine):
        self.engine = engine
        self.masters = _master_groups(engine)
        self.scores = _score_group(engine)
        self.peak = {"gradients": 0, "score optimizer state": 0}
        self._handles = [optimizer.register_step_pre_hook(self._record) for optimizer in inner_optimizers(engine)]

    def _record(self, optimizer, args, kwargs) -> None:
        tally = _Tally()
        flat = getattr(self.engine.optimizer, "grad_partitions_flat_buffer", None)  # ZeRO-3
        if flat is not None:
            tally.seen.add(_storage_key(flat))
            partitions = self.engine.optimizer._DeepSpeedZeroOptimizer_Stage3__param_id_to_grad_partition
            for name, param in self.engine.module.named_parameters():
                if hasattr(param, "ds_id") and param.ds_id in partitions:
                    category = "score optimizer state" if trains_with_scores(name, param) else "gradients"
                    tally.view(category, partitions[param.ds_id])
        for index, group in enumerate(self.masters):
            for master in group:
                tally.storage("score optimizer state" if index == self.scores else "gradients", master.grad)
        for key, value in tally.bytes.items():
            self.peak[key] = max(self.peak[key], value)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def measure_allocated(engine, pruner, teachers=()) -> dict[str, int]:
    """Bytes this rank holds now in each of the planner's exact categories but the gradients, which
    :class:`GradientProbe` records (add its ``score optimizer state`` to this one's): ``weights``,
    ``optimizer state``, ``mask scores``, ``score optimizer state`` (master and moments),
    ``importance statistics``, ``masks``, ``teacher partition``. Call between steps,
    after at least one (Adam's moments are created by the first)."""
    tally = _Tally()
    module = engine.module
    for name, param in module.named_parameters():
        category = "mask scores" if trains_with_scores(name, param) else "weights"
        if hasattr(param, "ds_id"):  # ZeRO-3: the partition, and the whole tensor if it stays gathered
            tally.view(category, param.ds_tensor)
            tally.seen.add(_storage_key(param.ds_tensor))
            if param.data.numel() == param.ds_numel:
                tally.storage(category, param.data)
        else:
            tally.storage(category, param.data)
    optimizers = inner_optimizers(engine)
    scores = _score_group(engine)
    for index, group in enumerate(_master_groups(engine)):
        category = "score optimizer state" if index == scores else "optimizer state"
        for master in group:
            tally.storage(category, master)  # already counted when it is the parameter itself (ZeRO-0)
            for optimizer in optimizers:
                for value in optimizer.state.get(master, {}).values():
                    tally.storage(category, value)
    for tensors in pruner.fragment_tensors().values():
        for tensor in tensors:
            tally.storage("importance statistics", tensor)
    for mask in pruner.masks:
        tally.storage("masks", mask.bits)
    for teacher in teachers:
        tally.bytes["teacher partition"] = tally.bytes.get("teacher partition", 0) + teacher.host_bytes()
    names = ("weights", "optimizer state", "mask scores", "score optimizer state", "importance statistics", "masks",
             "teacher partition")
    return {name: tally.bytes.get(name, 0) for name in names}


@contextlib.contextmanager
def on_meta_device() -> Iterator[None]:
    """Build modules on the meta device (shapes, no memory), with transformers' ZeRO-3 integration switched
    off meanwhile and then restored: with it on (a ZeRO-3 student or a teacher built earlier in the process),
    ``from_config`` would partition and initialise real weights. Any stage; no communication."""
    from transformers.integrations import deepspeed as hf_deepspeed

    reference = getattr(hf_deepspeed, "_hf_deepspeed_config_weak_ref", None)
    active = reference() if reference is not None else None
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        with torch.device("meta"):
            yield
    finally:
        if active is not None:
            hf_deepspeed.set_hf_deepspeed_config(active)
