"""Run configuration: one dataclass per YAML section, loaded with precedence defaults < YAML < overrides.

A run is described by a YAML file whose top-level keys are the sections below, plus command-line
overrides of the form ``section.key=value``. Everything is validated here, before any process group
starts: unknown keys (with the closest valid key suggested), wrong types, impossible values and
cross-field rules each raise :class:`ConfigError` with one line naming the key. The resolved config
is written into the run directory by the trainer (:func:`dump_config`).
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import os
import textwrap
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A configuration problem, reported as one line that names the offending key."""


# --------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------


@dataclass
class JobConfig:
    """Where the run lives and how it is seeded."""

    name: str = "sparse_dist"
    """Human-readable run name, shown in logs and TensorBoard."""
    run_dir: str = "runs/default"
    """Directory for the resolved config, TensorBoard events, checkpoints and the final model."""
    seed: int = 42
    """Seed for model initialisation, data order and dropout."""


@dataclass
class ModelConfig:
    """What to train."""

    name_or_path: str = "bert-base-uncased"
    """Hub name, local directory, or a tiny test model name (tiny-bert, tiny-roberta, tiny-t5)."""
    init: Literal["pretrained", "random"] = "pretrained"
    """pretrained: load name_or_path's weights (not found is an error). random: build name_or_path's published
    architecture (sparse_dist/models/architectures.py) with random weights, for measurements at real sizes."""
    tokenizer: str | None = None
    """init=random only: tokenizer to read text with (hub name, directory or tiny model name); null: the tiny
    tokenizer of the architecture's family (docs/architectures.md)."""
    dropout: float | None = None
    """Override every dropout probability of the model (None keeps the checkpoint's values)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    head: Literal["auto", "classifier", "label_words"] = "auto"
    """Encoder head: a new classifier, or the frozen masked-LM head read at the first token and restricted to
    the task's label words (auto: label_words for SMP, classifier otherwise; T5 always uses its LM head)."""
    calibrate_label_words: bool | None = None
    """label_words only: learn logit' = scale x logit + offset at pruning.score_lr (true); null or false: off.
    Not in the SMP paper, and it did not help in the one measurement (docs/benchmarks.md)."""


@dataclass
class DataConfig:
    """Which task and where its data comes from."""

    task: str = "sst2"
    """A task of sparse_dist.tasks: GLUE (cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli), webnlg or squad."""
    local_dir: str | None = None
    """Directory in the layout of ../shared/data; if it does not exist the hub dataset is used."""
    max_seq_length: int = 128
    """Longest input in tokens; longer inputs are truncated (extractive QA: the window length, e.g. 384)."""
    doc_stride: int | None = None
    """Extractive QA: overlap in tokens of consecutive windows over a long context (None: max_seq_length // 3,
    128 for 384-token windows)."""
    n_best: int = 20
    """Extractive QA: start and end candidates per window that post-processing pairs into answers."""
    max_answer_length: int = 30
    """Extractive QA: longest answer in tokens that post-processing considers."""
    max_target_length: int = 64
    """Longest target in tokens with </s> (text-to-text only): references are cut, class words must fit."""
    max_train_examples: int | None = None
    """Use only the first N training examples (None: all)."""
    max_eval_examples: int | None = None
    """Use only the first N examples of each dev set (None: all)."""


@dataclass
class TrainingConfig:
    """The optimisation loop."""

    max_steps: int = 1000
    """Number of optimizer steps."""
    global_batch_size: int = 32
    """Examples per optimizer step over all ranks: micro_batch_size x grad_accum_steps x world_size."""
    micro_batch_size: int = 8
    """Examples per forward pass on one rank."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this value (0 disables clipping)."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """auto: bf16 on a GPU that supports it, fp32 otherwise."""


@dataclass
class OptimizerConfig:
    """AdamW and its learning-rate schedule."""

    lr: float = 3e-5
    """Peak learning rate of the model weights."""
    weight_decay: float = 0.0
    """Decoupled weight decay (not applied to biases and LayerNorm weights)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam beta1 and beta2."""
    eps: float = 1e-8
    """Adam epsilon."""
    warmup_steps: int = 0
    """Linear learning-rate warm-up from 0 over this many steps."""
    schedule: Literal["linear", "constant"] = "linear"
    """After warm-up: linear decay to 0 at training.max_steps, or constant."""


@dataclass
class ZeroConfig:
    """DeepSpeed ZeRO partitioning and offload."""

    stage: int = 0
    """ZeRO stage 0 (replicated), 1 (optimizer state), 2 (+gradients) or 3 (+parameters)."""
    offload_optimizer: bool = False
    """Keep optimizer states and the fp32 master weights in CPU memory (ZeRO 1-3)."""
    offload_params: bool = False
    """Keep partitioned parameters in CPU memory (ZeRO 3 only)."""
    template: str | None = None
    """Optional DeepSpeed JSON merged on top of the derived config (see configs/deepspeed/)."""


@dataclass
class EvalConfig:
    """Evaluation on the dev set(s)."""

    eval_every_steps: int = 100
    """Evaluate every N optimizer steps (and always at the end); 0 evaluates only at the end."""
    micro_batch_size: int = 64
    """Examples per forward pass on one rank during evaluation."""
    max_new_tokens: int = 32
    """Longest generated output in tokens (text-to-text models); must hold every class word or score."""
    num_beams: int = 1
    """Beam width for generation (1 is greedy)."""


@dataclass
class CheckpointConfig:
    """Saving and resuming."""

    save_every_steps: int = 0
    """Save a resumable checkpoint every N optimizer steps (0: only at the end)."""
    keep_last: int = 2
    """Number of checkpoints kept on disk."""
    resume: bool = True
    """Continue from the latest checkpoint in the run directory if there is one."""
    save_final_model: bool = True
    """Write a plain transformers model (save_pretrained) to <run_dir>/final at the end."""


@dataclass
class MetricsConfig:
    """What the run reports."""

    log_every_steps: int = 10
    """Write training scalars to TensorBoard and the log every N steps."""
    tensorboard: bool = True
    """Write TensorBoard event files under <run_dir>/tensorboard."""
    progress_bar: bool = True
    """Show a progress bar on rank 0."""


@dataclass
class PruningConfig:
    """Pruning method, its scope and its schedule (see ../shared/docs/METHODS.md)."""

    method: Literal["none", "magnitude", "movement", "soft_movement", "smp", "platon", "pins"] = "none"
    """none (dense fine-tuning), magnitude, movement, soft_movement, smp (static model pruning), platon, pins."""
    scope: Literal["auto", "local", "per_type", "global"] = "auto"
    """Top-k per matrix, per type (smp: SMP-S budgets) or over all; auto: local for movement, global for the rest."""
    target_remaining: float = 0.1
    """Fraction of prunable weights kept at the end of the ramp (sparsity = 1 - target_remaining)."""
    schedule: Literal["cubic", "linear"] = "cubic"
    """Shape of the remaining-fraction ramp."""
    initial_warmup_steps: int = 0
    """Steps before pruning starts (remaining stays 1)."""
    final_warmup_steps: int = 0
    """Steps at the end with the target remaining fraction reached."""
    prune_every_steps: int | None = None
    """Ramp mask interval: magnitude (null: 1); platon/pins a multiple of window_steps (null: it); others every step."""
    score_lr: float = 1.0e-2
    """Learning rate of the mask scores (movement, soft_movement, smp)."""
    score_init: float = 0.0
    """Initial value of every mask score."""
    temperature: float = 1.0
    """Temperature p of sigmoid(S / p) in SMP-S budgets only; the regulariser uses sigmoid(S), as the SMP code does."""
    regularizer_lambda: float | None = None
    """Final weight of the sigmoid-mass regulariser, soft_movement and smp only (null: the papers' 400; 0: off)."""
    soft_threshold: float = 0.1
    """Final sigmoid threshold tau of soft movement (ramped from 0 with the schedule)."""
    soft_min_remaining: float = 0.005
    """soft_movement: each matrix keeps at least its int(r x n) + 1 highest scores, as the released code (0: off)."""
    window_steps: int = 10
    """PLATON/PINS: steps whose instantaneous importance is averaged before each EMA update (dT)."""
    beta1: float = 0.85
    """PLATON/PINS: EMA factor of the importance."""
    beta2: float = 0.95
    """PLATON/PINS: EMA factor of the uncertainty (0 or 1: score is the importance EMA alone)."""
    signed_importance: bool = False
    """PINS: use s = -W g + eta g^2 itself instead of |s| (the released code takes |s|)."""
    include_biases: bool = False
    """PLATON/PINS: also prune the biases of the pruned layers (global top-k over weights and biases)."""


@dataclass
class DistillConfig:
    """Knowledge distillation from an external teacher (any method)."""

    teacher: str | None = None
    """A model fine-tuned on the task (hub name or directory); None disables distillation."""
    alpha_ce: float = 0.5
    """Weight of the task loss."""
    alpha_kd: float = 0.5
    """Weight of the distillation loss T^2 KL(teacher || student)."""
    temperature: float = 2.0
    """Softmax temperature T."""
    self_regularization: bool = False
    """PINS self-regularization: the teacher is the student's best-on-dev state so far (replaces it at each
    dev improvement); with ``teacher`` set, that external teacher serves until the first improvement."""


@dataclass
class RunConfig:
    """The whole run: one field per YAML section."""

    job: JobConfig = field(default_factory=JobConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    zero: ZeroConfig = field(default_factory=ZeroConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    pruning: PruningConfig = field(default_factory=PruningConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    world_size: int = field(default=1, metadata={"derived": True})
    """Number of ranks, taken from the launcher's environment (not a YAML key)."""

    @property
    def grad_accum_steps(self) -> int:
        """Micro-batches per rank accumulated into one optimizer step."""
        return self.training.global_batch_size // (self.training.micro_batch_size * self.world_size)


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def load_config(path: str | os.PathLike | None, overrides: list[str] = (), world_size: int | None = None) -> RunConfig:
    """Build the run config: defaults, then the YAML file, then ``section.key=value`` overrides.

    ``world_size`` defaults to the launcher's ``WORLD_SIZE`` environment variable (1 if unset); it is
    needed to check that the batch sizes divide. Raises :class:`ConfigError` on any problem.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _read_yaml(Path(path))
    for item in overrides:
        section, key, value = _parse_override(item)
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise ConfigError(f"{section}: must be a mapping of keys, got {raw[section]!r}")
        raw[section][key] = value
    if world_size is None:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
    config = _build_dataclass(RunConfig, raw, prefix="")
    config.world_size = world_size
    validate(config)
    return config


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(error).split())}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    return raw


def _parse_override(item: str) -> tuple[str, str, Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected section.key=value")
    dotted, _, text = item.partition("=")
    parts = dotted.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"override {item!r}: the key must be section.key, got {dotted!r}")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    return parts[0], parts[1], value


def _section_fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("derived")}


def _build_dataclass(cls: type, raw: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "config"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a mapping of keys, got {raw!r}")
    fields = _section_fields(cls)
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in raw.items():
        if key not in fields:
            raise ConfigError(_unknown_key_message(prefix, key, list(fields)))
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            values[key] = _build_dataclass(hint, value if value is not None else {}, prefix=f"{prefix}{key}.")
        else:
            values[key] = _coerce(value, hint, f"{prefix}{key}")
    return cls(**values)


def _unknown_key_message(prefix: str, key: str, valid: list[str]) -> str:
    where = f"section '{prefix.rstrip('.')}'" if prefix else "the top level"
    close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.5)
    hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys: {', '.join(valid)}"
    return f"{prefix}{key}: unknown key in {where}{hint}"


def _coerce(value: Any, hint: Any, name: str) -> Any:
    """Check ``value`` against the type annotation ``hint`` and return it in that type."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _coerce(value, inner[0], name)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{name}: must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{name}: must be a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{name}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: must be a list, got {value!r}")
        return [_coerce(v, args[0], f"{name}[{i}]") for i, v in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name}: must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name}: must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):
            try:  # YAML 1.1 reads 3e-5 as a string; accept it as the number it obviously is.
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name}: must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name}: must be a string, got {value!r}")
        return value
    raise TypeError(f"{name}: unsupported annotation {hint!r}")  # a bug in this module, not in the config


# --------------------------------------------------------------------------------------------------
# Validation: value ranges and cross-field rules
# --------------------------------------------------------------------------------------------------

def _require(condition: bool, key: str, message: str, value: Any) -> None:
    if not condition:
        raise ConfigError(f"{key}: {message}, got {value!r}")


def validate(config: RunConfig) -> None:
    """Check value ranges and cross-field rules; raise :class:`ConfigError` naming the key."""
    t, o, z, e, c, d, m = (config.training, config.optimizer, config.zero, config.eval, config.checkpoint,
                           config.data, config.metrics)
    _require(config.world_size >= 1, "world_size", "must be >= 1 (from the WORLD_SIZE variable)", config.world_size)
    from sparse_dist.tasks import TASKS  # the one registry of tasks (no torch: cheap to import)

    _require(d.task in TASKS, "data.task", f"must be one of {', '.join(TASKS)}", d.task)
    _require(d.max_seq_length >= 8, "data.max_seq_length", "must be >= 8", d.max_seq_length)
    _require(d.doc_stride is None or 0 <= d.doc_stride < d.max_seq_length, "data.doc_stride",
             f"must be in [0, data.max_seq_length={d.max_seq_length}) or null", d.doc_stride)
    _require(d.max_target_length >= 1, "data.max_target_length", "must be >= 1", d.max_target_length)
    _require(d.n_best >= 1, "data.n_best", "must be >= 1", d.n_best)
    _require(d.max_answer_length >= 1, "data.max_answer_length", "must be >= 1", d.max_answer_length)
    for key in ("max_train_examples", "max_eval_examples"):
        value = getattr(d, key)
        _require(value is None or value >= 1, f"data.{key}", "must be >= 1 or null", value)
    _require(t.max_steps >= 1, "training.max_steps", "must be >= 1", t.max_steps)
    _require(t.micro_batch_size >= 1, "training.micro_batch_size", "must be >= 1", t.micro_batch_size)
    _require(t.global_batch_size >= 1, "training.global_batch_size", "must be >= 1", t.global_batch_size)
    per_step = t.micro_batch_size * config.world_size
    _require(t.global_batch_size % per_step == 0, "training.global_batch_size",
             f"must be a multiple of micro_batch_size x world_size = {t.micro_batch_size} x {config.world_size}",
             t.global_batch_size)
    _require(t.max_grad_norm >= 0, "training.max_grad_norm", "must be >= 0", t.max_grad_norm)
    _require(o.lr > 0, "optimizer.lr", "must be > 0", o.lr)
    _require(o.weight_decay >= 0, "optimizer.weight_decay", "must be >= 0", o.weight_decay)
    _require(all(0 <= b < 1 for b in o.betas), "optimizer.betas", "must both be in [0, 1)", list(o.betas))
    _require(o.eps > 0, "optimizer.eps", "must be > 0", o.eps)
    _require(0 <= o.warmup_steps <= t.max_steps, "optimizer.warmup_steps", "must be in [0, training.max_steps]",
             o.warmup_steps)
    _require(z.stage in (0, 1, 2, 3), "zero.stage", "must be 0, 1, 2 or 3", z.stage)
    _require(not z.offload_optimizer or z.stage >= 1, "zero.offload_optimizer", "needs zero.stage >= 1",
             z.offload_optimizer)
    _require(not z.offload_params or z.stage == 3, "zero.offload_params", "needs zero.stage = 3", z.offload_params)
    _require(z.template is None or Path(z.template).is_file(), "zero.template", "file not found", z.template)
    _require(e.eval_every_steps >= 0, "eval.eval_every_steps", "must be >= 0", e.eval_every_steps)
    _require(e.micro_batch_size >= 1, "eval.micro_batch_size", "must be >= 1", e.micro_batch_size)
    _require(e.max_new_tokens >= 1, "eval.max_new_tokens", "must be >= 1", e.max_new_tokens)
    _require(e.num_beams >= 1, "eval.num_beams", "must be >= 1", e.num_beams)
    _require(c.save_every_steps >= 0, "checkpoint.save_every_steps", "must be >= 0", c.save_every_steps)
    _require(c.keep_last >= 1, "checkpoint.keep_last", "must be >= 1", c.keep_last)
    _require(m.log_every_steps >= 1, "metrics.log_every_steps", "must be >= 1", m.log_every_steps)
    dropout = config.model.dropout
    _require(dropout is None or 0 <= dropout < 1, "model.dropout", "must be in [0, 1) or null", dropout)
    _validate_pruning(config.pruning, config.training.max_steps)
    method = pruning_method(config.pruning.method)
    freezes_weights = method is not None and method.freezes_weights
    task_type = TASKS[d.task].type
    if config.model.head == "auto":
        config.model.head = "label_words" if freezes_weights and task_type.label_word_head else "classifier"
    if task_type.label_word_head:  # SMP keeps the pretrained head: a label-word read of the masked-LM head
        _require(not (freezes_weights and config.model.head == "classifier"), "model.head",
                 f"{config.pruning.method} keeps the pretrained head frozen and needs label_words", config.model.head)
    else:  # token classification, extractive QA: no word to read a tag or a span at; SMP trains the new head
        _require(config.model.head != "label_words", "model.head",
                 f"task {d.task} ({task_type.name}) has no label words; use classifier", config.model.head)
    _require(config.model.calibrate_label_words is None or config.model.head == "label_words",
             "model.calibrate_label_words", f"calibrates the label-word head only, and model.head is "
             f"{config.model.head!r}; leave it unset", config.model.calibrate_label_words)
    _require(config.model.tokenizer is None or config.model.init == "random", "model.tokenizer",
             "chooses the tokenizer of a random model only (model.init=random); a pretrained checkpoint reads "
             "with its own; leave it unset", config.model.tokenizer)
    k = config.distill
    _require(k.alpha_ce >= 0 and k.alpha_kd >= 0, "distill.alpha_kd", "weights must be >= 0", (k.alpha_ce, k.alpha_kd))
    _require(k.temperature > 0, "distill.temperature", "must be > 0", k.temperature)


DEFAULT_REGULARIZER_LAMBDA = 400.0


def pruning_method(name: str):
    """The pruner class of ``pruning.method`` (None for ``none``): its class attributes are the method's rules.

    Imported here, not at the top: the pruning package needs torch, which a dense run's config does not."""
    if name == "none":
        return None
    from sparse_dist.pruning.build import PRUNERS

    return PRUNERS[name]


def regularized_methods() -> tuple[str, ...]:
    """Methods whose pruner adds the sigmoid-mass regulariser (their pruner class says ``regularized``)."""
    from sparse_dist.pruning.build import PRUNERS

    return tuple(method for method, pruner in PRUNERS.items() if pruner.regularized)


def __getattr__(name: str):
    if name == "REGULARIZED_METHODS":  # derived from the registry of methods, on first use
        return regularized_methods()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _validate_pruning(p: PruningConfig, max_steps: int) -> None:
    """Check the pruning section and fill in the method's defaults (scope, mask interval, regulariser weight)."""
    method = pruning_method(p.method)
    if method is None:
        return
    if p.scope == "auto":
        _require(method.default_scope is not None, "pruning.scope",
                 f"{p.method} has no default scope: choose one of {', '.join(method.scopes)}", p.scope)
        p.scope = method.default_scope
    _require(p.scope in method.scopes, "pruning.scope", f"{p.method} supports {', '.join(method.scopes)}", p.scope)
    _require(0 < p.target_remaining <= 1, "pruning.target_remaining", "must be in (0, 1]", p.target_remaining)
    _require(p.initial_warmup_steps >= 0, "pruning.initial_warmup_steps", "must be >= 0", p.initial_warmup_steps)
    _require(p.final_warmup_steps >= 0, "pruning.final_warmup_steps", "must be >= 0", p.final_warmup_steps)
    _require(p.initial_warmup_steps + p.final_warmup_steps < max_steps, "pruning.final_warmup_steps",
             f"initial + final warm-up must leave a ramp before training.max_steps={max_steps}",
             p.initial_warmup_steps + p.final_warmup_steps)
    _require(p.score_lr > 0, "pruning.score_lr", "must be > 0", p.score_lr)
    _require(p.temperature > 0, "pruning.temperature", "must be > 0", p.temperature)
    _require(0 <= p.soft_threshold < 1, "pruning.soft_threshold", "must be in [0, 1)", p.soft_threshold)
    _require(0 <= p.soft_min_remaining < 1, "pruning.soft_min_remaining", "must be in [0, 1)", p.soft_min_remaining)
    _require(p.window_steps >= 1, "pruning.window_steps", "must be >= 1", p.window_steps)
    _require(0 <= p.beta1 < 1, "pruning.beta1", "must be in [0, 1)", p.beta1)
    _require(0 <= p.beta2 <= 1, "pruning.beta2", "must be in [0, 1]", p.beta2)
    if method.regularized:
        if p.regularizer_lambda is None:
            p.regularizer_lambda = DEFAULT_REGULARIZER_LAMBDA
        _require(p.regularizer_lambda >= 0, "pruning.regularizer_lambda", "must be >= 0", p.regularizer_lambda)
    else:
        _require(p.regularizer_lambda is None, "pruning.regularizer_lambda",
                 f"{p.method} has no regulariser (only {' and '.join(regularized_methods())} do); leave it unset",
                 p.regularizer_lambda)
    if method.mask_updates == "every_step":
        _require(p.prune_every_steps is None, "pruning.prune_every_steps",
                 f"{p.method} updates its masks at every step; leave it unset", p.prune_every_steps)
    elif method.mask_updates == "window_ends":
        # A mask is chosen only right after an EMA update of the importance, at a window end (step % window_steps
        # == 0): before the first one there is no importance to choose from (it would be all zeros).
        _require(p.window_steps <= max_steps, "pruning.window_steps",
                 f"{p.method} chooses masks at window ends; the first must come by training.max_steps={max_steps}",
                 p.window_steps)
        if p.prune_every_steps is None:
            p.prune_every_steps = p.window_steps
        _require(p.prune_every_steps >= 1 and p.prune_every_steps % p.window_steps == 0, "pruning.prune_every_steps",
                 f"{p.method} updates masks at window ends: must be a multiple of "
                 f"pruning.window_steps={p.window_steps}", p.prune_every_steps)
    else:
        if p.prune_every_steps is None:
            p.prune_every_steps = 1
        _require(p.prune_every_steps >= 1, "pruning.prune_every_steps", "must be >= 1", p.prune_every_steps)


# --------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------


def config_to_dict(config: RunConfig) -> dict[str, Any]:
    """The config as plain YAML-ready data: one mapping per section (derived fields left out)."""
    out = {}
    for name in _section_fields(RunConfig):
        section = dataclasses.asdict(getattr(config, name))
        out[name] = {k: list(v) if isinstance(v, tuple) else v for k, v in section.items()}
    return out


def dump_config(config: RunConfig, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML; loading it back gives the same config."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))


def field_docs(cls: type) -> dict[str, str]:
    """The one-line docstrings written under each field of a config dataclass."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, following in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)):
            docs[node.target.id] = str(following.value.value)
    return docs


def describe_config() -> str:
    """Every section and key with its default and docstring: the text behind ``--help-config``."""
    lines = []
    defaults = RunConfig()
    for name in _section_fields(RunConfig):
        section = getattr(defaults, name)
        lines.append(f"{name}:  # {type(section).__doc__}")
        docs = field_docs(type(section))
        for key in _section_fields(type(section)):
            value = getattr(section, key)
            lines.append(f"  {key}: {value!r:<24} # {docs.get(key, '')}")
    return "\n".join(lines)
