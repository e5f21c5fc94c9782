"""A frozen ZeRO-3 model's parameters brought to the device a transformer block at a time, the next block
prefetched while the current one computes.

DeepSpeed's own fetching gathers every module's parameters in a collective of its own just before the
module runs (about 50 blocking all-gathers per forward of a 6-layer BERT). :func:`apply_block_fetch`
replaces it for a model that is only run forward (the self-regularization teacher):

- every block (an item of one of the model's outermost ``nn.ModuleList``: BERT's ``encoder.layer``, T5's
  ``encoder.block`` and ``decoder.block``, GPT-2's ``h``) is gathered whole in one coalesced all-gather;
- the all-gather of block i + 1 is issued, asynchronously, as soon as block i's parameters are in place,
  so it travels while block i computes; block i's parameters are released when it returns;
- the first block's gather is issued when the model's forward starts (it travels during the embedding
  lookup); anything still gathered or in flight when the forward returns is released;
- the few parameters outside blocks (an embedding LayerNorm, a pooler, a classifier, a final LayerNorm)
  are gathered around their own module's forward, one collective per module, as DeepSpeed did.

Modules whose DeepSpeed fetching was already switched off (embeddings read from their partitions,
:mod:`~sparse_dist.distributed.partition_lookup`; a vocabulary-parallel head,
:mod:`~sparse_dist.distributed.vocab_parallel`) are left as they are: apply this last.

Device memory: a coalesced all-gather fills one flat buffer of ``world_size * sum(ceil(numel / world_size))``
elements (the block, plus at most ``world_size - 1`` padding elements per parameter), which DeepSpeed then
copies into the parameters and frees. So at most two blocks' worth of teacher parameters are on the device
at once: block i's buffer and its parameters while it is being unpacked (block i + 1's gather is issued
only after that), then block i's parameters and block i + 1's buffer while block i computes (or block i's
parameters and one module outside the blocks). :class:`FetchStats` measures it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus


@dataclass
class FetchStats:
    """What the block fetching did, summed over every forward since it was applied (this rank)."""

    collectives: int = 0
    """All-gathers issued (none at world size 1)."""
    gathered_bytes: int = 0
    """Bytes of parameters made whole on the device."""
    largest_buffer_bytes: int = 0
    """The largest single all-gather buffer (one block, with its partition padding)."""
    live_bytes: int = 0
    """Bytes of gathered parameters and in-flight buffers on the device now."""
    peak_live_bytes: int = 0
    """The most of them at any one time."""


def deepspeed_fetches(module: torch.nn.Module) -> bool:
    """Whether DeepSpeed still gathers this module's parameters around its forward (its ZeRO-3 hooks)."""
    return any(_is_deepspeed_hook(hook) for hook in module._forward_pre_hooks.values())


def remove_deepspeed_forward_hooks(module: torch.nn.Module) -> None:
    """Remove the forward hooks ZeRO-3 put on this one module (its parameters' fetch and release)."""
    for hooks in (module._forward_pre_hooks, module._forward_hooks):
        for key in [key for key, hook in hooks.items() if _is_deepspeed_hook(hook)]:
            del hooks[key]


def _is_deepspeed_hook(hook) -> bool:
    return getattr(hook, "__module__", "").startswith("deepspeed")


def find_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's transformer blocks in the order they run: the items of its outermost ``ModuleList``s, in
    module order (encoder before decoder in every transformers model)."""
    blocks: list[torch.nn.Module] = []
    inside: set[int] = set()
    for module in model.modules():
        if id(module) in inside or not isinstance(module, torch.nn.ModuleList):
            continue
        for block in module:
            blocks.append(block)
            inside.update(id(m) for m in block.modules())
    return blocks


def block_bytes(block: torch.nn.Module) -> int:
    """Bytes of a block's parameters made whole (their full size, also where they are ZeRO-3 partitioned)."""
    return _whole_bytes(block.parameters())


def _whole_bytes(params) -> int:
    return sum(getattr(p, "ds_numel", p.numel()) * p.element_size() for p in params)


class _Unit:
    """Parameters gathered together: a block's, or one module's outside the blocks."""

    def __init__(self, params: list[torch.nn.Parameter]):
        self.params = params
        self.bytes = _whole_bytes(params)
        self.world_size = torch.distributed.get_world_size()
        self.buffer_bytes = self.world_size * sum(p.ds_tensor.ds_numel * p.element_size() for p in params)
        self.handle = None


class BlockFetcher:
    """Installed by :func:`apply_block_fetch`; its :attr:`stats` say what it moved."""

    def __init__(self, model: torch.nn.Module, blocks: list[torch.nn.Module]):
        self.stats = FetchStats()
        in_blocks = {id(m) for block in blocks for m in block.modules()}
        self.blocks = [_Unit(_fetched_params(block.modules())) for block in blocks]
        loose = [m for m in model.modules() if id(m) not in in_blocks and deepspeed_fetches(m)
                 and any(True for _ in m.parameters(recurse=False))]
        for module in model.modules():
            remove_deepspeed_forward_hooks(module)
        for index, block in enumerate(blocks):
            block.register_forward_pre_hook(lambda *_, i=index: self._enter_block(i))
            block.register_forward_hook(lambda *_, i=index: self._release(self.blocks[i]))
        for module in loose:
            unit = _Unit(list(module.parameters(recurse=False)))
            module.register_forward_pre_hook(lambda *_, u=unit: self._wait(u))
            module.register_forward_hook(lambda *_, u=unit: self._release(u))
        self.loose = len(loose)
        model.register_forward_pre_hook(lambda *_: self._start())
        model.register_forward_hook(lambda *_: self._finish())

    def _start(self) -> None:
        self._finish()  # a forward that raised may have left blocks gathered
        if self.blocks:
            self._launch(self.blocks[0])

    def _finish(self) -> None:
        for unit in self.blocks:
            if unit.handle is not None:
                self._wait(unit)
            if unit.params and unit.params[0].ds_status == ZeroParamStatus.AVAILABLE:
                self._release(unit)

    def _enter_block(self, index: int) -> None:
        self._wait(self.blocks[index])
        if index + 1 < len(self.blocks):
            self._launch(self.blocks[index + 1])

    def _launch(self, unit: _Unit) -> None:
        if not unit.params or unit.handle is not None or unit.params[0].ds_status != ZeroParamStatus.NOT_AVAILABLE:
            return
        unit.handle = unit.params[0].all_gather_coalesced(unit.params)  # one collective, asynchronous
        if unit.world_size > 1:
            self.stats.collectives += 1
            self.stats.largest_buffer_bytes = max(self.stats.largest_buffer_bytes, unit.buffer_bytes)
            self._add_live(unit.buffer_bytes)

    def _wait(self, unit: _Unit) -> None:
        """Unit's parameters whole on the device (issuing its gather now if nobody prefetched it)."""
        if unit.handle is None:
            self._launch(unit)
        if unit.handle is None:
            return
        unit.handle.wait()
        unit.handle = None  # the flat buffer goes with the handle
        self.stats.gathered_bytes += unit.bytes
        self._add_live(unit.bytes)
        if unit.world_size > 1:
            self.stats.live_bytes -= unit.buffer_bytes

    def _release(self, unit: _Unit) -> None:
        available = [p for p in unit.params if p.ds_status == ZeroParamStatus.AVAILABLE]
        if available:
            available[0].partition(param_list=available)
            self.stats.live_bytes -= _whole_bytes(available)

    def _add_live(self, nbytes: int) -> None:
        self.stats.live_bytes += nbytes
        self.stats.peak_live_bytes = max(self.stats.peak_live_bytes, self.stats.live_bytes)


def _fetched_params(modules) -> list[torch.nn.Parameter]:
    params, seen = [], set()
    for module in modules:
        if not deepspeed_fetches(module):
            continue
        for param in module.parameters(recurse=False):
            if id(param) not in seen:
                seen.add(id(param))
                params.append(param)
    return params


def apply_block_fetch(model: torch.nn.Module, blocks: list[torch.nn.Module] | None = None) -> BlockFetcher:
    """Make a ZeRO-3 partitioned model that is only run forward (no gradients) fetch its parameters a block
    at a time with the next block prefetched, in place of DeepSpeed's per-module fetching; return the
    fetcher, whose ``stats`` count what it gathers. ``blocks`` defaults to :func:`find_blocks`. Call after
    ``deepspeed.initialize`` and after switching modules to partition reads. All ranks call, and then every
    forward is collective (the same blocks run in the same order on every rank). Stage 3 only: raises
    ValueError for a model with no ZeRO-3 partitioned parameter."""
    if not any(hasattr(p, "ds_id") for p in model.parameters()):
        raise ValueError("block fetching needs a ZeRO-3 partitioned model")
    return BlockFetcher(model, find_blocks(model) if blocks is None else blocks)
