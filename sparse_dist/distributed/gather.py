"""Full (unpartitioned) views of ZeRO-partitioned parameters, one parameter at a time.

Used where something really needs a whole tensor: exporting a model, and tests that compare full
weights. Parameters are gathered one by one, so the accelerator never holds more than one full
parameter beyond the partitioned model; the result goes to host memory on the ranks that keep it.
:func:`track_gathered_peak` measures the other side: how much of a ZeRO-3 model is gathered at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from deepspeed import zero


def is_partitioned(param: torch.nn.Parameter) -> bool:
    """True for a ZeRO-3 partitioned parameter."""
    return hasattr(param, "ds_id")


def full_shape(param: torch.nn.Parameter) -> torch.Size:
    """The parameter's full shape, also under ZeRO-3 (where ``param.shape`` is a placeholder)."""
    return param.ds_shape if is_partitioned(param) else param.shape


def full_numel(param: torch.nn.Parameter) -> int:
    return param.ds_numel if is_partitioned(param) else param.numel()


@contextlib.contextmanager
def gathered_for_update(params: Sequence[torch.nn.Parameter]):
    """Make ``params`` whole and writable for the block; under ZeRO-3 what rank 0 holds at the end is
    partitioned back to every rank. All ranks enter. Stages: 0-3 (below 3 the parameters are whole)."""
    with zero.GatheredParameters(list(params), modifier_rank=0, enabled=any(is_partitioned(p) for p in params)):
        yield


def iter_full_parameters(module: torch.nn.Module, keep: bool = True) -> Iterator[tuple[str, torch.Tensor | None]]:
    """Yield (name, full fp32 tensor on CPU) for every parameter; None where ``keep`` is False.

    Every rank must iterate to the end (gathering is collective under ZeRO-3); ranks that do not need
    the values pass ``keep=False`` and receive None instead of a copy. Stages: 0-3.
    """
    for name, param in module.named_parameters():
        with zero.GatheredParameters([param], modifier_rank=None, enabled=is_partitioned(param)):
            yield name, param.detach().to("cpu", torch.float32, copy=True) if keep else None


def gather_state_dict(module: torch.nn.Module, keep: bool) -> dict[str, torch.Tensor] | None:
    """The module's full state dict on CPU where ``keep`` is True (None elsewhere). All ranks call."""
    state = {name: tensor for name, tensor in iter_full_parameters(module, keep)}
    if not keep:
        return None
    persistent = set(module.state_dict().keys())
    for name, buffer in module.named_buffers():
        if name in persistent:
            state[name] = buffer.detach().to("cpu", copy=True)
    return state


def full_master(param: torch.nn.Parameter) -> torch.Tensor:
    """The whole fp32 master weight the optimizer updates (CPU copy). All ranks call. Stages: 0-3."""
    from deepspeed.utils import safe_get_full_fp32_param

    if hasattr(param, "ds_id") or getattr(param, "_hp_mapping", None) is not None or _in_partitioned_optimizer(param):
        return safe_get_full_fp32_param(param).detach().to("cpu", copy=True)
    return param.detach().to("cpu", torch.float32, copy=True)  # ZeRO-0 in fp32: the parameter is the master


def full_optimizer_state(engine, param: torch.nn.Parameter, key: str) -> torch.Tensor | None:
    """The whole optimizer state ``key`` (``exp_avg``, ``exp_avg_sq``) of one of ``engine``'s trainable
    weights, flat fp32 on CPU with ``full_numel(param)`` elements, on every rank; None before the optimizer
    has made that state (before the first step) or for a frozen weight.

    Assembled from every rank's fragment (:mod:`~sparse_dist.distributed.fragments`), the same views the
    checkpoint's optimizer fragments are written from, so the values are the optimizer's own, bit for bit.
    DeepSpeed's ``safe_get_full_optimizer_state`` is not used: under ZeRO 1-2 it reads a state mapping made
    when the optimizer was built, which torch's AdamW (the CPU optimizer) fills only at its first step, and
    it fails with "exp_avg not found". All ranks must call it for the same weight (one all-gather of the
    fragments). Stages: 0, 1, 2, 3.
    """
    import torch.distributed as dist

    from sparse_dist.distributed.fragments import build_fragments
    from sparse_dist.distributed.reshard import assemble

    fragment = build_fragments(engine, [("", param)])[0]
    state = fragment.optimizer_state(key) if fragment.trainable and fragment.numel else None
    mine = None if state is None else (fragment.start, state.detach().to("cpu", copy=True))
    every = [mine]
    if dist.is_initialized() and dist.get_world_size() > 1:
        every = [None] * dist.get_world_size()
        dist.all_gather_object(every, mine)
    pieces = [piece for piece in every if piece is not None]
    if not pieces:
        return None
    return assemble(pieces, 0, full_numel(param))


def _in_partitioned_optimizer(param: torch.nn.Parameter) -> bool:
    # ZeRO-1/2 give every trainable parameter an _hp_mapping attribute (None where another rank owns it).
    return hasattr(param, "_hp_mapping")


def track_gathered_peak(model: torch.nn.Module) -> dict:
    """Record the most parameter bytes of a ZeRO-3 ``model`` gathered at once during its forward passes.

    Returns a dict that the hooks keep up to date: ``bytes`` (the peak) and ``names`` (the parameters
    gathered at that moment). The status is checked before and after every module's forward. For
    measurements (tests, benchmarks): the hooks stay on the model.
    """
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    params, peak = list(model.named_parameters()), {"bytes": 0, "names": []}

    def measure(*_) -> None:
        live = [(name, p.ds_numel * p.element_size()) for name, p in params if p.ds_status == ZeroParamStatus.AVAILABLE]
        total = sum(size for _, size in live)
        if total > peak["bytes"]:
            peak["bytes"], peak["names"] = total, [name for name, _ in live]

    for module in model.modules():
        module.register_forward_pre_hook(measure)
        module.register_forward_hook(measure)
    return peak
