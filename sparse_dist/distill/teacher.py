"""Teachers: a frozen model whose logits the student is distilled towards.

:class:`OffloadedTeacher` is a second copy of the model held the ZeRO-3 way whatever the student's ZeRO
stage: each rank keeps only its partition of every parameter, in CPU memory (pinned on a GPU machine).
Its no-grad forward brings the parameters to the compute device a transformer block at a time, each
block in one all-gather issued while the previous block computes
(:mod:`sparse_dist.distributed.block_fetch`). Nothing larger than a block is ever gathered: embedding
tables are read from the partitions where they lie (:mod:`sparse_dist.distributed.partition_lookup`), and
an LM head, whose weight is a vocabulary table (tied to the embeddings in T5), computes each rank's
vocabulary slice of the logits from its own partition (:mod:`sparse_dist.distributed.vocab_parallel`).
Per rank that is ``1/world_size`` of a model in host memory and, in accelerator memory, at most two
blocks' worth of parameters (the block computing and the next one arriving), where the reference design
of self-regularization keeps two extra full copies on the accelerator.

Refreshing it from the student copies, for every parameter, the range of elements this rank's teacher
partition holds, taken from the student's working copy on the same rank: a local copy, no gather. (Under
ZeRO-3 the student's partition is that very range; under ZeRO 0-2 the student's working copy is whole on
every rank.) A student whose weights are masked by learned scores is copied with its masks folded in.

:class:`MaskTeacher` is the teacher of a static method (SMP): the weights never change, so a teacher is
just an older mask, kept as packed bits per fragment; its forward pass is the student's with the old
masks swapped in, and leaves the student's state as it found it.
"""

from __future__ import annotations

import logging

import deepspeed
import torch

from sparse_dist.distributed.bitmask import PackedMask
from sparse_dist.distributed.block_fetch import apply_block_fetch, block_bytes, find_blocks
from sparse_dist.distributed.comm import Communicator
from sparse_dist.distributed.masking import gather_full_mask
from sparse_dist.distributed.partition_lookup import apply_partition_lookup
from sparse_dist.distributed.vocab_parallel import apply_vocab_parallel_head
from sparse_dist.pruning.masked_linear import MaskedLinear

log = logging.getLogger(__name__)


def teacher_deepspeed_config(student_config: dict, on_gpu: bool) -> dict:
    """ZeRO-3 inference with every parameter offloaded to CPU. DeepSpeed's own fetching (one module at a
    time, no prefetch, nothing resident) is what ``fetch="module"`` keeps; ``fetch="block"`` replaces it
    once the engine exists (:class:`OffloadedTeacher`)."""
    return {
        "train_micro_batch_size_per_gpu": student_config["train_micro_batch_size_per_gpu"],
        "gradient_accumulation_steps": 1,
        "train_batch_size": student_config["train_micro_batch_size_per_gpu"]
        * torch.distributed.get_world_size(),
        "zero_optimization": {
            "stage": 3,
            "memory_efficient_linear": False,  # see build_deepspeed_config
            "offload_param": {"device": "cpu", "pin_memory": on_gpu},
            "stage3_param_persistence_threshold": 0,  # nothing stays resident on the device
            "stage3_prefetch_bucket_size": 0,  # no look-ahead: one module's parameters at a time
            "stage3_max_live_parameters": 0,
            "stage3_max_reuse_distance": 0,
        },
        "bf16": student_config.get("bf16", {"enabled": False}),
        "steps_per_print": 10**9,
    }


class OffloadedTeacher:
    """A frozen model partitioned over ranks in CPU memory. :meth:`logits` and :meth:`copy_from` are collective."""

    FETCHES = ("block", "module")
    """How the forward brings parameters to the device: ``block``, a transformer block per all-gather with the
    next one prefetched, an LM head vocabulary-parallel (at most two blocks on the device); ``module``,
    DeepSpeed's own fetching, a module per all-gather, nothing prefetched, an LM head's table gathered whole
    (at most the largest module: the lower device peak, at the cost of a collective per module)."""

    def __init__(self, build, student_config: dict, on_gpu: bool, fetch: str = "block"):
        """``build(ds_config)`` returns the :class:`~sparse_dist.models.build.BuiltModel` of the teacher;
        ``fetch`` is one of :attr:`FETCHES`."""
        if fetch not in self.FETCHES:
            raise ValueError(f"teacher fetch: expected one of {', '.join(self.FETCHES)}, got {fetch!r}")
        self.ds_config = teacher_deepspeed_config(student_config, on_gpu)
        from transformers.integrations.deepspeed import _hf_deepspeed_config_weak_ref  # the student's, if any

        student_integration = _hf_deepspeed_config_weak_ref() if _hf_deepspeed_config_weak_ref else None
        self.built = build(self.ds_config)
        self.engine, _, _, _ = deepspeed.initialize(model=self.built.model, config=self.ds_config)
        self.engine.eval()
        for param in self.engine.module.parameters():
            param.requires_grad = False
        model = self.engine.module
        apply_partition_lookup(model)  # embedding tables are read in place, never gathered
        self.fetcher = None
        if fetch == "block":
            blocks = find_blocks(model)
            apply_vocab_parallel_head(model, max(map(block_bytes, blocks), default=0))  # nor is an LM head's
            self.fetcher = apply_block_fetch(model, blocks)  # the rest a block at a time, the next prefetched
        if student_integration is not None:  # give transformers back the student's ZeRO-3 integration
            from transformers.integrations.deepspeed import set_hf_deepspeed_config

            set_hf_deepspeed_config(student_integration)
        self.updates = 0

    @property
    def model(self) -> torch.nn.Module:
        return self.engine.module

    @torch.no_grad()
    def outputs(self, batch: dict[str, torch.Tensor]):
        """The teacher's model outputs for a batch (the same batch on every rank's shard); the task type
        reads its logits (``distill_logits``). All ranks call."""
        inputs = {k: v for k, v in batch.items() if k != "idx"}
        return self.engine.module(**inputs)

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The ``logits`` of :meth:`outputs` (sequence-level tasks). All ranks call."""
        return self.outputs(batch).logits

    def host_bytes(self) -> int:
        """Bytes of teacher parameters this rank keeps (its partitions)."""
        return sum(p.ds_tensor.numel() * p.ds_tensor.element_size() for p in self.model.parameters())

    def state_dict(self) -> dict:
        """This rank's partitions with their ranges (for checkpoints): 1/world_size of the teacher."""
        rank = torch.distributed.get_rank()
        return {name: (rank * p.ds_tensor.ds_numel, p.ds_tensor.detach().cpu().clone())
                for name, p in self.model.named_parameters()}

    def load_state_dict(self, states: list[dict]) -> None:
        """Restore this rank's partitions from the partitions every rank saved (any world size)."""
        from sparse_dist.distributed.reshard import assemble

        rank = torch.distributed.get_rank()
        with torch.no_grad():
            for name, p in self.model.named_parameters():
                start = rank * p.ds_tensor.ds_numel
                length = max(0, min(p.ds_tensor.ds_numel, p.ds_numel - start))
                pieces = [(offset, values[:max(0, min(values.numel(), p.ds_numel - offset))])
                          for offset, values in (s[name] for s in states)]
                if length:
                    p.ds_tensor.view(-1).narrow(0, 0, length).copy_(assemble(pieces, start, length))

    @torch.no_grad()
    def copy_from(self, student: torch.nn.Module) -> None:
        """Make the teacher a copy of the student's current working weights. All ranks call; no gather."""
        sources = dict(student.named_parameters())
        layers = {name: module for name, module in student.named_modules() if isinstance(module, MaskedLinear)}
        for name, param in self.model.named_parameters():
            source = sources.get(name)
            if source is None:
                raise KeyError(f"teacher parameter {name} has no counterpart in the student")
            start = torch.distributed.get_rank() * param.ds_tensor.ds_numel
            length = max(0, min(param.ds_tensor.ds_numel, param.ds_numel - start))
            if length == 0:
                continue
            values = _student_range(source, start, length)
            layer = layers.get(name.removesuffix(".weight")) if name.endswith(".weight") else None
            if layer is not None:  # fold the learned mask into the copied weights
                scores = _student_range(layer.scores, start, length)
                keep = layer.mask_of_range(scores, start)
                values = values.masked_fill(~keep, 0)
            param.ds_tensor.view(-1).narrow(0, 0, length).copy_(values.to(param.ds_tensor.dtype))
        self.updates += 1


def _student_range(param: torch.nn.Parameter, start: int, length: int) -> torch.Tensor:
    """Elements ``[start, start + length)`` of a student parameter's working copy, read locally."""
    if hasattr(param, "ds_id"):  # ZeRO-3: the teacher's partition range is this rank's own partition
        own = torch.distributed.get_rank() * param.ds_tensor.ds_numel
        if own != start:
            raise ValueError("student and teacher partition the parameter differently")
        return param.ds_tensor.view(-1).narrow(0, 0, length)
    return param.data.view(-1).narrow(0, start, length)


class MaskTeacher:
    """SMP's teacher: the frozen student with an older mask (packed bits of each rank's fragments)."""

    def __init__(self, student: torch.nn.Module, pruner, comm: Communicator):
        self.student = student
        self.pruner = pruner
        self.comm = comm
        self.masks: list[PackedMask] | None = None
        self.updates = 0

    def host_bytes(self) -> int:
        return sum(m.nbytes for m in self.masks) if self.masks else 0

    def state_dict(self) -> dict:
        return {"layout": [(f.start, f.numel) for f in self.pruner.fragments],
                "masks": [m.to("cpu") for m in self.masks]}

    def load_state_dict(self, states: list[dict]) -> None:
        from sparse_dist.distributed.reshard import assemble

        fragments = self.pruner.fragments
        own = next((s for s in states if s["layout"] == [(f.start, f.numel) for f in fragments]), None)
        if own is not None:
            masks = own["masks"]
        else:
            masks = [PackedMask.pack(assemble([(s["layout"][i][0], s["masks"][i].unpack()) for s in states],
                                              f.start, f.numel)) for i, f in enumerate(fragments)]
        self.masks = [m.to(f.param.device) for m, f in zip(masks, fragments)]

    def copy_from(self, student: torch.nn.Module) -> None:
        """Remember the student's current masks (bits of this rank's fragments only)."""
        self.masks = [PackedMask(m.bits.clone(), m.numel) for m in self.pruner.masks]
        self.updates += 1

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The ``logits`` of :meth:`outputs` (sequence-level tasks). All ranks call."""
        return self.outputs(batch).logits

    @torch.no_grad()
    def outputs(self, batch: dict[str, torch.Tensor]):
        """The student's outputs with the remembered masks. All ranks call (each mask is gathered once).

        The pass runs through the student's own layers, so it must leave the student exactly as it was: the
        training flag, and every masked layer's state (the masks swapped in here, the sigmoid mass a forward
        pass records for the regulariser, anything else set on them) are restored afterwards."""
        layers, sites = self.pruner.layers, self.pruner.sites
        full = [gather_full_mask(f, m, self.comm).view(site.shape)
                for site, f, m in zip(sites, self.pruner.fragments, self.masks)]
        was_training = self.student.training
        snapshots = [layer.snapshot() for layer in layers]
        self.student.eval()
        try:
            for layer, mask in zip(layers, full):
                layer.fixed_mask = mask
            inputs = {k: v for k, v in batch.items() if k != "idx"}  # T5 needs labels for its decoder inputs
            return self.student(**inputs)
        finally:
            self.student.train(was_training)
            for layer, snapshot in zip(layers, snapshots):
                layer.restore(snapshot)
