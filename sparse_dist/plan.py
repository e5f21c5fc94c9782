"""The memory planner: bytes per rank of a run's model, ZeRO stage, offload, pruning method and teacher.

:func:`plan_memory` builds the config's model on the meta device (shapes only, nothing allocated), applies the
pruning method's own preparation to it (learned scores become parameters, SMP freezes the weights), groups
the parameters as the trainer does, and counts what each rank allocates by DeepSpeed's partitioning rules
(:mod:`sparse_dist.distributed.zero_layout`) and what each pruner and teacher keeps per fragment:

- exact (checked against real engines by ``tests/test_plan.py``): weights, gradients the optimizer reads,
  optimizer state (fp32 master and Adam moments), mask scores and their optimizer state, importance
  statistics, packed masks and the teacher's CPU partition;
- estimated: gradient reduction buckets, ZeRO-3's gathered parameters, the teacher's gathered blocks,
  activations (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models",
  eq. 1: ``s b h (34 + 5 a s / h)`` bytes per layer at 16 bits) and, on CPUs, the memory glibc keeps
  after ZeRO-3 frees whole parameters and gradients, and the process baseline (both measured:
  ``benchmarks/memory_breakdown.py``).

Precision follows the trainer: bf16 on a GPU (DeepSpeed's fused Adam), fp32 on a CPU (torch's AdamW, whose
``step`` is a 4-byte tensor per parameter it steps).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sparse_dist.config import RunConfig
from sparse_dist.distributed import zero_layout as zl

EXACT, ESTIMATE = "exact", "estimate"
FP32 = 4
CPU_PROCESS_BASELINE_BYTES = 466 * 2**20
"""Resident set of a CPU rank once its trainer is built around a model of no size: 0.35 GiB of torch,
DeepSpeed and transformers imported with gloo initialised (``rss_at_start_bytes`` of every cell of
``benchmarks/results/scale_benchmark*.json``, torch 2.13), plus 0.11 GiB of libraries, tokenizer and data
loaded while the trainer is built (``rss_built_bytes`` of the 33k-parameter tiny BERT cells: 466 MiB). Almost
all of it is anonymous memory (``benchmarks/results/memory_breakdown_*.json``: 337 of 362 MiB at the start),
so it counts once per rank, not once per machine."""


@dataclass
class PlanLine:
    """One kind of memory on one rank."""

    name: str
    device_bytes: int
    host_bytes: int
    kind: str
    """``exact`` (counted from shapes and DeepSpeed's rules) or ``estimate``."""
    note: str = ""

    @property
    def total_bytes(self) -> int:
        return self.device_bytes + self.host_bytes


@dataclass
class MemoryPlan:
    """What one rank holds: :attr:`lines` in a fixed order, and the run it describes."""

    rank: int
    world_size: int
    stage: int
    precision: str
    on_gpu: bool
    description: str
    parameters: int
    lines: list[PlanLine] = field(default_factory=list)

    def line(self, name: str) -> PlanLine:
        return next(line for line in self.lines if line.name == name)

    def bytes_by_name(self) -> dict[str, int]:
        """Device plus host bytes of every line, by name."""
        return {line.name: line.total_bytes for line in self.lines}

    def device_total(self, kind: str | None = None) -> int:
        return sum(line.device_bytes for line in self.lines if kind in (None, line.kind))

    def host_total(self, kind: str | None = None) -> int:
        return sum(line.host_bytes for line in self.lines if kind in (None, line.kind))

    def fits(self, device_memory_bytes: int) -> bool:
        """Whether exact and estimated device bytes together fit in ``device_memory_bytes``."""
        return self.device_total() <= device_memory_bytes


@dataclass
class _Param:
    name: str
    numel: int
    group: int | None
    """Index of the trainer's optimizer group (None: frozen)."""


@dataclass
class _Model:
    params: list[_Param]
    groups: list[list[_Param]]
    pruned: list[str]
    """Names of the parameters the pruner's fragments cover
    (:meth:`~sparse_dist.pruning.pruner.Pruner.pruned_parameters`)."""
    score_group: int | None
    statistics: int
    blocks: list[int]
    """Parameters of the prunable matrices of each transformer block (what ZeRO-3 gathers at once)."""
    config: Any
    kind: str


# --------------------------------------------------------------------------------------------------
# The model, on the meta device
# --------------------------------------------------------------------------------------------------


def build_meta_model(config: RunConfig, name_or_path: str | None = None, head: str | None = None,
                     key: str = "model.name_or_path"):
    """``(trained module, transformers model, family)`` of the run's model for its task, built on the meta
    device: shapes and names are real, no memory is allocated.

    The planner needs shapes only, so a published architecture (:mod:`sparse_dist.models.architectures`:
    t5-large, t5-11b, bert-large-uncased, ...) is planned from its published config, whatever ``model.init``
    says: the same shapes as its checkpoint, without asking the hub (offline, that costs a minute of retries).
    Raises :class:`~sparse_dist.config.ConfigError` naming ``key`` for a model that cannot be found."""
    from dataclasses import replace

    from sparse_dist.distributed.memory import on_meta_device
    from sparse_dist.models.build import (
        check_model_for_task,
        known_architecture,
        load_model_config,
        load_tokenizer,
        uses_label_words,
    )
    from sparse_dist.models.families import get_family
    from sparse_dist.models.label_words import build_label_word_classifier
    from sparse_dist.tasks import get_task

    model_cfg = replace(config.model, name_or_path=name_or_path or config.model.name_or_path,
                        head=head or config.model.head)
    task = get_task(config.data.task)
    if known_architecture(model_cfg.name_or_path):
        model_cfg = replace(model_cfg, init="random")  # the checkpoint's shapes, from its published config
    hf_config = load_model_config(model_cfg, key)
    family = get_family(hf_config.model_type)
    check_model_for_task(hf_config, task, model_cfg.name_or_path, model_cfg.head, key)
    task.type.configure_model(task, hf_config, family.kind)
    label_words = uses_label_words(family, model_cfg)
    model_class = task.type.model_class(family.kind, label_words)
    with on_meta_device():
        pretrained = model_class.from_config(hf_config)
        model = pretrained
        if label_words:
            tokenizer = load_tokenizer(model_cfg, hf_config)
            model = build_label_word_classifier(pretrained, tokenizer, task, bool(model_cfg.calibrate_label_words))
    return model, pretrained, family


def _describe_model(config: RunConfig) -> _Model:
    from sparse_dist.distributed.memory import on_meta_device
    from sparse_dist.models.build import task_head_names, uses_label_words
    from sparse_dist.pruning.build import build_pruner
    from sparse_dist.pruning.masked_linear import trains_with_scores
    from sparse_dist.pruning.sites import find_sites
    from sparse_dist.trainer import build_param_groups

    model, pretrained, family = build_meta_model(config)
    blocks: dict[str, int] = {}
    for site in find_sites(pretrained):  # before the pruner swaps in its masked layers
        blocks[site.layer] = blocks.get(site.layer, 0) + site.numel
    pruner = build_pruner(config.pruning, pretrained, config.training.max_steps, comm=None)
    with on_meta_device():
        # Learned scores become parameters; SMP freezes everything else but a new task head (NER, QA).
        pruner.prepare(model, task_head_names(model, family.kind, uses_label_words(family, config.model)))
    groups = build_param_groups(model, config.optimizer, config.pruning.score_lr)
    group_of = {id(p): g for g, group in enumerate(groups) for p in group["params"]}
    params = [_Param(name, p.numel(), group_of.get(id(p))) for name, p in model.named_parameters()]
    by_id = {id(p): info for (_, p), info in zip(model.named_parameters(), params)}
    grouped = [[by_id[id(p)] for p in group["params"]] for group in groups]
    name_of = {id(p): name for name, p in model.named_parameters()}  # the pruner names them inside `pretrained`
    score_group = next((g for g, group in enumerate(groups)  # the trainer's rule for the scores' group
                        if any(trains_with_scores(name_of[id(p)], p) for p in group["params"])), None)
    pruned = [name_of[id(p)] for _, p in pruner.pruned_parameters()] if pruner.sites else []
    return _Model(params=params, groups=grouped, pruned=pruned, score_group=score_group,
                  statistics=len(getattr(pruner, "statistics", ())), blocks=list(blocks.values()),
                  config=pretrained.config,
                  kind=family.kind)


def _teacher_numels(config: RunConfig) -> list[list[int]]:
    """Parameter sizes of every teacher the run builds as an offloaded model (external, self-regularization)."""
    from sparse_dist.config import pruning_method
    from sparse_dist.models.build import teacher_head

    teachers = []
    if config.distill.teacher:
        head = teacher_head(config.distill.teacher, config.model.head)
        model, _, _ = build_meta_model(config, config.distill.teacher, head, key="distill.teacher")
        teachers.append([p.numel() for p in model.parameters()])
    method = pruning_method(config.pruning.method)
    if config.distill.self_regularization and not (method is not None and method.freezes_weights):
        model, _, _ = build_meta_model(config)
        teachers.append([p.numel() for p in model.parameters()])
    return teachers


# --------------------------------------------------------------------------------------------------
# Counting
# --------------------------------------------------------------------------------------------------


def _template(config: RunConfig) -> dict:
    import json
    from pathlib import Path

    if config.zero.template is None:
        return {}
    return json.loads(Path(config.zero.template).read_text()).get("zero_optimization", {})


def plan_memory(config: RunConfig, world_size: int, rank: int = 0, on_gpu: bool = True,
                mmap_threshold: int | None = None) -> MemoryPlan:
    """The memory plan of rank ``rank`` of ``world_size`` for ``config``'s run on a GPU (``on_gpu``: bf16 where
    the config says auto) or on CPUs (fp32). ``mmap_threshold``: glibc's ``MALLOC_MMAP_THRESHOLD_`` in bytes
    if the run sets it (:func:`malloc_mmap_threshold`), which changes what a CPU rank's heap keeps. Builds
    nothing but meta tensors; reads the model's config (and a label-word head's tokenizer). Raises
    :class:`~sparse_dist.config.ConfigError` for a model that cannot be found or a precision the device
    cannot run."""
    from sparse_dist.distributed.deepspeed_config import resolve_precision

    precision = resolve_precision(config.training, on_gpu, True)
    described = _describe_model(config)
    return _count(config, described, _teacher_numels(config), world_size, rank, on_gpu, precision, mmap_threshold)


def plan_all_ranks(config: RunConfig, world_size: int, on_gpu: bool = True,
                   mmap_threshold: int | None = None) -> list[MemoryPlan]:
    """:func:`plan_memory` of every rank (they differ only by padding and by which fragments they own)."""
    from sparse_dist.distributed.deepspeed_config import resolve_precision

    precision = resolve_precision(config.training, on_gpu, True)
    described = _describe_model(config)
    teachers = _teacher_numels(config)
    return [_count(config, described, teachers, world_size, r, on_gpu, precision, mmap_threshold)
            for r in range(world_size)]


def malloc_mmap_threshold(environ: Mapping[str, str]) -> int | None:
    """``MALLOC_MMAP_THRESHOLD_`` of an environment in bytes, or None when unset or not a number (glibc
    then ignores it too)."""
    value = environ.get("MALLOC_MMAP_THRESHOLD_", "").strip()
    return int(value) if value.isdigit() else None


def _count(config: RunConfig, m: _Model, teachers: list[list[int]], world: int, rank: int, on_gpu: bool,
           precision: str, mmap_threshold: int | None = None) -> MemoryPlan:
    z = config.zero
    stage = z.stage
    width = 2 if precision == "bf16" else FP32
    # ZeRO-0 in bf16 runs DeepSpeed's bf16 optimizer, which partitions the fp32 master like ZeRO-1.
    flat_rules = stage in (1, 2) or (stage == 0 and precision == "bf16")
    torch_adam = not on_gpu and not z.offload_optimizer  # build_deepspeed_config: torch's AdamW keeps a step tensor
    template = _template(config)
    persistence = int(template.get("stage3_param_persistence_threshold", zl.DEFAULT_PERSISTENCE_THRESHOLD))
    optimizer_on_host = z.offload_optimizer
    params_on_host = z.offload_params

    def place(nbytes: int, on_host: bool) -> tuple[int, int]:
        return (0, nbytes) if on_host else (nbytes, 0)

    # --- per trainer group: working copy, fp32 master, moments, the gradient the optimizer reads ------------
    working = {g: 0 for g in range(len(m.groups))}
    master, moments, grads = dict(working), dict(working), dict(working)
    lp_grad_buffer = 0  # ZeRO-3: one flat buffer of every trainable partition, in the working precision
    frozen_working = 0
    persistent = {"weights": 0, "scores": 0}  # ZeRO-3: small parameters also kept whole on every rank
    for p in m.params:
        if stage == 3:
            part = zl.zero3_partition_numel(p.numel, world) * width
            if p.group is None:
                frozen_working += part
            else:
                working[p.group] += part
            if world > 1 and zl.is_persistent(p.numel, persistence):  # on one rank the partition is the whole
                persistent["scores" if p.group is not None and p.group == m.score_group else "weights"] += \
                    p.numel * width
        elif p.group is None or not flat_rules:
            if p.group is None:
                frozen_working += p.numel * width
            else:
                working[p.group] += p.numel * width
    for g, group in enumerate(m.groups):
        numels = [p.numel for p in group]
        if stage == 3:
            partition = sum(zl.zero3_partition_numel(n, world) for n in numels)
            lp_grad_buffer += partition * width
            master[g] = partition * FP32
            moments[g] = 2 * partition * FP32 + (FP32 if torch_adam else 0)
            # The fp32 gradient is the flattened buffer: a view when nothing is to be copied (one fp32 parameter).
            grads[g] = 0 if (len(group) == 1 and width == FP32) else partition * FP32
        elif flat_rules:
            working[g] = zl.flat_group_numel(numels, world) * width
            partition = zl.flat_partition_numel(numels, world)
            master[g] = partition * FP32
            moments[g] = 2 * partition * FP32 + (FP32 if torch_adam else 0)
            grads[g] = partition * FP32
        else:  # ZeRO-0 in fp32: the optimizer steps the parameters themselves
            master[g] = 0
            moments[g] = sum(2 * n * FP32 + (FP32 if torch_adam else 0) for n in numels)
            grads[g] = sum(n * width for n in numels)
    weight_groups = [g for g in range(len(m.groups)) if g != m.score_group]
    scores = [m.score_group] if m.score_group is not None else []
    if stage == 0 and not flat_rules:
        grad_peak = sum(grads[g] for g in weight_groups)  # every .grad exists when the one step() runs
    else:  # DeepSpeed steps one group at a time and frees its fp32 gradient before the next
        grad_peak = max((grads[g] for g in weight_groups), default=0)
    if stage == 3:
        score_lp = (sum(zl.zero3_partition_numel(p.numel, world) for p in m.groups[m.score_group]) * width
                    if scores else 0)
        lp_grad_weights = lp_grad_buffer - score_lp
    else:
        score_lp = lp_grad_weights = 0

    lines: list[PlanLine] = []
    add = lines.append
    weight_bytes = sum(working[g] for g in weight_groups) + frozen_working
    dev, host = place(weight_bytes, params_on_host and stage == 3)
    add(PlanLine("weights", dev + persistent["weights"], host, EXACT,
                 "ZeRO-3 partitions" + (", small parameters also whole" if persistent["weights"] else "")
                 if stage == 3 else "whole on every rank" if not flat_rules else "flat groups, padded to 2 x ranks"))
    add(PlanLine("gradients", *place(grad_peak + lp_grad_weights, optimizer_on_host and stage > 0), EXACT,
                 "what the optimizer step reads (peak over groups)"))
    add(PlanLine("optimizer state", *place(sum(master[g] + moments[g] for g in weight_groups),
                                           optimizer_on_host), EXACT, "fp32 master and Adam moments"))
    score_working = sum(working[g] for g in scores)
    dev, host = place(score_working, params_on_host and stage == 3)
    add(PlanLine("mask scores", dev + persistent["scores"], host, EXACT,
                 "a learned score per prunable weight" if scores else "none for this method"))
    score_state = sum(master[g] + moments[g] for g in scores)
    score_grads = sum(grads[g] for g in scores) + score_lp
    add(PlanLine("score optimizer state", *place(score_state + score_grads, optimizer_on_host), EXACT,
                 "fp32 master, Adam moments, gradient"))

    # --- the pruner's fragments: masks and statistics --------------------------------------------------
    by_name = {p.name: p for p in m.params}
    fragment_numels = []
    for name in m.pruned:
        p = by_name[name]
        if stage == 3 or p.group is None or not flat_rules:
            fragment_numels.append(zl.even_range(p.numel, world, rank)[1])
        else:
            group = m.groups[p.group]
            index = next(i for i, q in enumerate(group) if q is p)
            fragment_numels.append(zl.flat_group_ranges([q.numel for q in group], world, rank)[index][1])
    mask_bytes = sum(zl.ceil_div(n, 8) for n in fragment_numels)
    add(PlanLine("importance statistics", sum(m.statistics * n * FP32 for n in fragment_numels), 0, EXACT,
                 f"{m.statistics} fp32 values per owned weight" if m.statistics else "none for this method"))
    add(PlanLine("masks", mask_bytes, 0, EXACT, "packed bits of the owned fragments"))
    teacher_bytes = sum(zl.zero3_partition_numel(n, world) * width for numels in teachers for n in numels)
    if config.distill.self_regularization and not teachers and m.pruned:
        teacher_bytes += mask_bytes  # SMP: the teacher is an older mask
    add(PlanLine("teacher partition", 0, teacher_bytes, EXACT,
                 "ZeRO-3 partitions in CPU memory" if teachers else "older masks" if teacher_bytes else "no teacher"))

    # --- estimates --------------------------------------------------------------------------------------
    add(_buckets(config, m, world, width, stage, template, on_gpu))
    layer_numels = m.blocks
    if stage == 3:
        largest = max(layer_numels, default=0)
        add(PlanLine("gathered parameters", 2 * largest * width, 0, ESTIMATE,
                     "ZeRO-3: the largest block in use and the next one prefetched"))
    if teachers:
        # sparse_dist/distributed/block_fetch.py: one block whole, the next one's all-gather in flight; the LM
        # head is computed vocabulary-parallel (sparse_dist/distributed/vocab_parallel.py), never gathered.
        add(PlanLine("teacher gathered blocks", 2 * max(layer_numels, default=0) * width, 0, ESTIMATE,
                     "one block whole and the next one in flight"))
    add(PlanLine("activations", _activation_bytes(config, m, width), 0, ESTIMATE,
                 "Korthikanti et al. 2022 eq. 1, per micro-batch" +
                 (", checkpointed" if config.model.gradient_checkpointing else "")))
    if not on_gpu and stage == 3:
        # glibc keeps what ZeRO-3 frees after each module in its heap arenas instead of returning it: the
        # gathered whole parameters and autograd's whole gradients (copied into the bucket, then freed) are
        # below its mmap threshold (32 MiB at most). Measured (benchmarks/memory_breakdown.py): free bytes
        # kept by malloc after a step 450 MiB on t5-small and 1,728 MiB on t5-base, 0.97x and 1.02x
        # (parameters + trainable parameters) x 4 B; malloc_trim(0) gives 427 and 1,715 MiB of it back.
        # With MALLOC_MMAP_THRESHOLD_ fixed, a tensor of at least that many bytes is its own mapping, returned
        # when freed: only the smaller ones stay (bert-large dense 8.35 -> 5.70 GiB a rank with 131072,
        # benchmarks/results/scale_benchmark_bert_large_mmap.json).
        limit = math.inf if mmap_threshold is None else mmap_threshold
        kept = (sum(p.numel for p in m.params if p.numel * width < limit)
                + sum(p.numel for g in m.groups for p in g if p.numel * width < limit))
        add(PlanLine("allocator cache", kept * width, 0, ESTIMATE,
                     "CPU: freed gathered weights and gradients glibc keeps" if mmap_threshold is None else
                     f"CPU: MALLOC_MMAP_THRESHOLD_={mmap_threshold}: larger freed tensors go back"))
    if not on_gpu:
        add(PlanLine("process baseline", CPU_PROCESS_BASELINE_BYTES, 0, ESTIMATE,
                     "libraries, interpreter, tokenizer and data: measured"))
    parameters = sum(p.numel for p in m.params if not p.name.endswith(".scores"))
    description = _describe(config, m, parameters, stage, precision, on_gpu, world)
    return MemoryPlan(rank=rank, world_size=world, stage=stage, precision=precision, on_gpu=on_gpu,
                      description=description, parameters=parameters, lines=lines)


def _buckets(config, m: _Model, world, width, stage, template, on_gpu) -> PlanLine:
    """DeepSpeed's gradient reduction buffers: the bucket (``reduce_bucket_size`` elements) and, below ZeRO-3,
    where reduced gradients accumulate (whole under ZeRO-1, this rank's partition under ZeRO-2).

    On a GPU the caching allocator holds the whole bucket. On a CPU the bucket is ``torch.empty``: only the
    pages gradients are written into become resident, at most ``min(reduce_bucket_size, trainable)``
    elements; and ZeRO-3's reduce-scatter (``reduce_scatter_coalesced``) concatenates the bucket's gradients
    into a second flat buffer of the same size before sending it (measured: t5-small's RSS peaks at the end
    of the backward, ``benchmarks/results/memory_breakdown_t5-small_dense.json``)."""
    trainable = sum(p.numel for g in m.groups for p in g)
    if stage == 0:
        return PlanLine("gradient buckets", 0, 0, ESTIMATE, "ZeRO-0: gradients are all-reduced in place")
    bucket_numel = int(template.get("reduce_bucket_size", zl.DEFAULT_REDUCE_BUCKET_SIZE))
    if on_gpu:
        bucket, note = bucket_numel * width, "reduce bucket"
    else:
        touched = min(bucket_numel, trainable) * width
        bucket, note = (2 * touched, "reduce bucket's touched pages and reduce-scatter's flat copy") if stage == 3 \
            else (touched, "reduce bucket's touched pages")
    if stage == 1:
        extra = trainable * width
    elif stage == 2:
        extra = sum(zl.flat_partition_numel([p.numel for p in g], world) for g in m.groups) * width
    else:
        extra = 0
    return PlanLine("gradient buckets", bucket + extra, 0, ESTIMATE,
                    note + (" and accumulated gradients" if extra else ""))


def _hidden(config) -> int:
    return int(getattr(config, "d_model", None) or config.hidden_size)


def _activation_bytes(config: RunConfig, m: _Model, width: int) -> int:
    """Activations kept for the backward pass of one micro-batch: ``s b h (34 + 5 a s / h)`` bytes per layer at
    16 bits (Korthikanti et al. 2022, eq. 1), scaled to the working precision; with gradient checkpointing the
    layer inputs (``2 s b h``) plus one layer. Seq2seq: encoder layers at the input length, decoder layers at
    the target length plus cross-attention scores (``5 a t s b``); LMs add fp32 logits over the vocabulary."""
    c = m.config
    b = config.training.micro_batch_size
    h = _hidden(c)
    a = int(getattr(c, "num_attention_heads", 1) or 1)
    s = config.data.max_seq_length
    scale = width / 2

    def layer(length: int) -> float:
        return length * b * h * (34 + 5 * a * length / h)

    if m.kind == "seq2seq":
        t = config.data.max_target_length
        encoder = [layer(s)] * int(c.num_layers)
        decoder = [layer(t) + 5 * a * t * s * b + 4 * t * b * h] * int(getattr(c, "num_decoder_layers", c.num_layers))
        layers, logits = encoder + decoder, b * t * int(c.vocab_size) * FP32 * 2
    elif m.kind == "decoder":
        layers, logits = [layer(s)] * int(c.num_hidden_layers), b * s * int(c.vocab_size) * FP32 * 2
    else:
        layers, logits = [layer(s)] * int(c.num_hidden_layers), 0
    if config.model.gradient_checkpointing:
        kept = sum(2 * s * b * h for _ in layers) + max(layers)
    else:
        kept = sum(layers)
    return int(kept * scale + logits)


def _describe(config: RunConfig, m: _Model, parameters: int, stage, precision, on_gpu, world) -> str:
    method = config.pruning.method
    if method != "none":
        method += f" ({config.pruning.scope} scope)"
    teacher = []
    if config.distill.teacher:
        teacher.append(f"teacher {config.distill.teacher}")
    if config.distill.self_regularization:
        teacher.append("self-regularization teacher")
    offload = [name for name, on in (("optimizer", config.zero.offload_optimizer),
                                     ("parameters", config.zero.offload_params)) if on]
    return (f"{config.model.name_or_path} ({m.kind}, {parameters / 1e6:.2f}M parameters), ZeRO-{stage}"
            f"{' with ' + ' and '.join(offload) + ' offloaded' if offload else ''}, {precision} on "
            f"{'GPU' if on_gpu else 'CPU'}, {world} rank(s), pruning {method}"
            f"{', ' + ', '.join(teacher) if teacher else ''}")


def format_bytes(n: int) -> str:
    """Bytes in binary units: ``0 B``, ``512 B``, ``1.50 KiB`` ... ``2.00 TiB``."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            return f"{value:.2f} {unit}"
    raise AssertionError("unreachable")


def format_plan(plan: MemoryPlan, device_memory_bytes: int | None = None, why: str = "") -> str:
    """The plan as the table ``sparse-dist plan`` prints; ``why`` says why this rank is shown."""
    where = "device" if plan.on_gpu else "device (CPU)"
    rows = [plan.description, f"rank {plan.rank} of {plan.world_size}{f' ({why})' if why else ''}:", "",
            f"  {'':<26}{where:>14}{'host':>14}  kind      what"]
    for line in plan.lines:
        rows.append(f"  {line.name:<26}{format_bytes(line.device_bytes):>14}{format_bytes(line.host_bytes):>14}"
                    f"  {line.kind:<8}  {line.note}")
    rows.append(f"  {'total exact':<26}{format_bytes(plan.device_total(EXACT)):>14}"
                f"{format_bytes(plan.host_total(EXACT)):>14}")
    rows.append(f"  {'total with estimates':<26}{format_bytes(plan.device_total()):>14}"
                f"{format_bytes(plan.host_total()):>14}")
    if device_memory_bytes is not None:
        verdict = "fits" if plan.fits(device_memory_bytes) else "does NOT fit"
        rows += ["", f"{verdict} in {format_bytes(device_memory_bytes)} of device memory per rank "
                     f"({format_bytes(abs(device_memory_bytes - plan.device_total()))} "
                     f"{'to spare' if plan.fits(device_memory_bytes) else 'short'})"]
    return "\n".join(rows)


def plan_json(plan: MemoryPlan, device_memory_bytes: int) -> str:
    """The plan as JSON: the run, every line's device and host bytes, the totals and whether it fits."""
    import json

    return json.dumps({
        "description": plan.description, "rank": plan.rank, "world_size": plan.world_size, "stage": plan.stage,
        "precision": plan.precision, "parameters": plan.parameters,
        "lines": [{"name": line.name, "device_bytes": line.device_bytes, "host_bytes": line.host_bytes,
                   "kind": line.kind, "note": line.note} for line in plan.lines],
        "device_bytes_exact": plan.device_total(EXACT), "host_bytes_exact": plan.host_total(EXACT),
        "device_bytes": plan.device_total(), "host_bytes": plan.host_total(),
        "device_memory_bytes": device_memory_bytes, "fits": plan.fits(device_memory_bytes)}, indent=1)


def parse_memory(text: str) -> int:
    """``80GB``, ``80GiB``, ``512MiB``, ``1e9`` (bytes) as bytes; GB and GiB both mean 2^30 (GPU vendors' 80 GB
    cards hold 80 GiB). Raises ValueError."""
    units = {"tib": 2**40, "tb": 2**40, "gib": 2**30, "gb": 2**30, "mib": 2**20, "mb": 2**20, "kib": 2**10,
             "kb": 2**10, "b": 1}
    cleaned = text.strip().lower().replace(" ", "")
    for unit, factor in units.items():
        if cleaned.endswith(unit):
            return int(float(cleaned[: -len(unit)]) * factor)
    return int(float(cleaned))
