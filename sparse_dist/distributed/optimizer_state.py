"""DeepSpeed's ZeRO 1-3 optimizer state as per-rank fragments, so that it can move to another world size.

DeepSpeed partitions the fp32 master weights and the Adam moments of ZeRO 1-3 over the ranks in flat
buffers whose layout depends on the rank count, and refuses to load them on another one. Beside
DeepSpeed's own files, every checkpoint also holds, per rank, :func:`optimizer_fragments`: for every
trainable parameter the rank's fragment ``[start, start + numel)`` (see
:mod:`~sparse_dist.distributed.fragments`) of the master weight and of each moment, plus what is not
partitioned (Adam's step count and hyperparameters per group, the scheduler, DeepSpeed's counters).
A run on another number of ranks builds its own fragments and copies into them the overlapping parts
of the saved ones (:func:`load_optimizer_fragments`). Each rank reads only the byte ranges it needs
(the files are memory-mapped), so no rank ever holds the whole model's optimizer state, and the
restored values are the saved ones bit for bit.

Why not DeepSpeed's universal checkpoint (``ds_to_universal``, then ``load_universal``): it is a separate
conversion between the two jobs, one process that reads every rank's files and writes every parameter's
whole fp32 weight and moments once more; every new rank then loads each whole parameter to cut its slice
out; under ZeRO 1-2 it needs Megatron's ``universal_checkpoint_info`` (or ``--inject_missing_state``); and
the pruning state and teacher would still move by fragments. Saving fragments costs about the size of
DeepSpeed's optimizer files once more per checkpoint and nothing at resume time but the reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from sparse_dist.distributed.fragments import Fragment, build_fragments, inner_optimizers

MOMENTS = ("exp_avg", "exp_avg_sq")
"""Adam's partitioned state tensors, besides the master weight itself."""


def zero_stage(engine) -> int:
    """The engine's ZeRO stage (0 when ZeRO is off)."""
    return int(engine.zero_optimization_stage()) if engine.zero_optimization() else 0


def _fragments(engine) -> list[Fragment]:
    named = [(name, param) for name, param in engine.module.named_parameters()]
    return build_fragments(engine, named)


def optimizer_groups(engine) -> list[tuple[torch.optim.Optimizer, dict, list[torch.Tensor]]]:
    """(torch optimizer, param group, this rank's flat fp32 tensors of the group) for every group of the
    optimizer that steps the fp32 masters. Needs no communication. Stages: 1, 2, 3."""
    optimizer = engine.optimizer
    inner = inner_optimizers(engine)[0]
    if hasattr(optimizer, "fp32_partitioned_groups_flat"):
        # ZeRO-3 puts a group's flat sub-group partitions into its "params" only during the step.
        flats: list[list[torch.Tensor]] = [[] for _ in inner.param_groups]
        for sub_group, flat in enumerate(optimizer.fp32_partitioned_groups_flat):
            flats[optimizer.sub_group_to_group_id[sub_group]].append(flat)
        return [(inner, group, group_flats) for group, group_flats in zip(inner.param_groups, flats)]
    return [(inner, group, list(group["params"])) for group in inner.param_groups]


def optimizer_fragments(engine) -> dict[str, Any] | None:
    """This rank's fragments of the fp32 masters and Adam moments, and the unpartitioned optimizer state;
    None under ZeRO-0 (whose checkpoint is whole on every rank). Needs no communication. Stages: 1, 2, 3;
    tested in fp32 without optimizer offload (the CPU runs), which is what the tests can reach."""
    if zero_stage(engine) == 0:
        return None
    params = {}
    for fragment in _fragments(engine):
        entry: dict[str, Any] = {"start": fragment.start, "numel": fragment.numel}
        if not fragment.trainable:  # frozen: only ZeRO-3 partitions the weight itself
            if hasattr(fragment.param, "ds_id"):
                entry["working"] = fragment.working().detach().to("cpu", copy=True)
        elif fragment.numel > 0:
            # clone: a view would save the whole flat buffer it points into
            entry["master"] = fragment.master().detach().to("cpu", copy=True)
            for key in MOMENTS:
                state = fragment.optimizer_state(key)
                if state is not None:
                    entry[key] = state.detach().to("cpu", copy=True)
        params[fragment.name] = entry
    groups = []
    for optimizer, group, flats in optimizer_groups(engine):
        state = optimizer.state.get(flats[0], {}) if flats else {}
        shared = {key: (value.detach().cpu().clone() if torch.is_tensor(value) else value)
                  for key, value in state.items()
                  if not (torch.is_tensor(value) and value.shape == flats[0].shape)}  # the step count
        groups.append({"hyper": {key: value for key, value in group.items() if key != "params"}, "state": shared})
    scheduler = engine.lr_scheduler.state_dict() if engine.lr_scheduler is not None else None
    return {"stage": zero_stage(engine), "params": params, "groups": groups, "lr_scheduler": scheduler,
            "counters": {"global_steps": engine.global_steps, "global_samples": engine.global_samples,
                         "skipped_steps": engine.skipped_steps}}


def _copy_overlap(target: torch.Tensor, start: int, saved_start: int, saved: torch.Tensor) -> int:
    """Copy the part of ``saved`` (elements from ``saved_start``) that falls into ``target`` (elements
    from ``start``); the number of elements copied."""
    lo, hi = max(start, saved_start), min(start + target.numel(), saved_start + saved.numel())
    if lo >= hi:
        return 0
    target[lo - start:hi - start].copy_(saved[lo - saved_start:hi - saved_start])
    return hi - lo


def load_optimizer_fragments(engine, files: Sequence[Path]) -> None:
    """Restore the optimizer state that the ranks of another world size saved with
    :func:`optimizer_fragments` (``files``: one per old rank, in rank order) into this rank's fragments.

    The master weights, both moments and the working copies of every trainable parameter, the frozen
    ZeRO-3 partitions, Adam's step and group hyperparameters, the scheduler and DeepSpeed's step
    counters come back exactly as saved. Under ZeRO 1-2 call it after DeepSpeed has loaded the module
    (``engine.load_checkpoint(..., load_optimizer_states=False)``: DeepSpeed's module file is whole);
    under ZeRO-3 instead of it. All ranks must call (the working copies are re-gathered). Stages: 1, 2, 3.
    """
    stage = zero_stage(engine)
    optimizer = engine.optimizer
    if stage == 3:  # as DeepSpeed's own load: only partitions, no gathered persistent parameters
        optimizer.checkpoint_event_prologue()
    fragments = _fragments(engine)
    covered = {f.name: 0 for f in fragments}
    first: dict[str, Any] | None = None
    for path in files:
        saved = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
        if saved["stage"] != stage:
            raise ValueError(f"{path} holds ZeRO-{saved['stage']} optimizer state, this engine is ZeRO-{stage}")
        first = first or {key: saved[key] for key in ("groups", "lr_scheduler", "counters")}
        for fragment in fragments:
            entry = saved["params"][fragment.name]
            if fragment.numel == 0 or entry["numel"] == 0:
                continue
            with torch.no_grad():
                if fragment.trainable:
                    n = _copy_overlap(fragment.master(), fragment.start, entry["start"], entry["master"])
                    for key in MOMENTS:
                        if key in entry:
                            _copy_overlap(_state_view(fragment, key), fragment.start, entry["start"], entry[key])
                elif "working" in entry:
                    n = _copy_overlap(fragment.working(), fragment.start, entry["start"], entry["working"])
                else:
                    n = fragment.numel  # frozen and replicated: DeepSpeed's module file restored it
            covered[fragment.name] += n
        del saved
    missing = [f"{f.name} ({covered[f.name]} of {f.numel})" for f in fragments if covered[f.name] != f.numel]
    if missing:
        raise ValueError(f"the saved optimizer fragments do not cover this rank's part of {', '.join(missing)}")
    _restore_groups(engine, first["groups"])
    if engine.lr_scheduler is not None and first["lr_scheduler"] is not None:
        engine.lr_scheduler.load_state_dict(first["lr_scheduler"])
    for key, value in first["counters"].items():
        setattr(engine, key, value)
    _refresh_working(engine, fragments, stage)


def _state_view(fragment: Fragment, key: str) -> torch.Tensor:
    """This fragment of optimizer state ``key``, created (zeros) if the optimizer has not made it yet."""
    view = fragment.optimizer_state(key)
    if view is None:
        state = fragment.optimizer.state.setdefault(fragment.master_flat, {})
        state[key] = torch.zeros_like(fragment.master_flat)
        view = fragment.optimizer_state(key)
    return view


def _restore_groups(engine, groups: list[dict[str, Any]]) -> None:
    """Adam's per-group hyperparameters (the scheduled lr) and unpartitioned state (the step count)."""
    mine = optimizer_groups(engine)
    if len(mine) != len(groups):
        raise ValueError(f"the checkpoint's optimizer has {len(groups)} parameter groups, this one {len(mine)}")
    for (optimizer, group, flats), saved in zip(mine, groups):
        group.update(saved["hyper"])
        for flat in flats:
            state = optimizer.state.setdefault(flat, {})
            for key, value in saved["state"].items():
                state[key] = value.clone().to(flat.device) if torch.is_tensor(value) else value


def _refresh_working(engine, fragments: list[Fragment], stage: int) -> None:
    """Make the copies the forward pass reads equal to the restored masters (cast to their precision)."""
    optimizer = engine.optimizer
    if stage == 3:
        with torch.no_grad():
            for fragment in fragments:
                if fragment.trainable and fragment.numel > 0:
                    fragment.working().copy_(fragment.master())
        optimizer.checkpoint_event_epilogue()  # re-gathers the persistent (small, never partitioned) weights
    else:
        optimizer.update_lp_params()  # each rank's master partition into its working partition, all-gathered
