"""Checks of a run against this machine, its files and its run directory, before any rank starts.

:func:`check_run` is what ``launch/train.py --check`` runs, and what every start runs before it joins a
process group: each problem it can see is a :class:`ConfigError` of one line naming the key, exit status
2, instead of a traceback from every rank minutes later. It reads configs, tokenizers, file headers and
checkpoint manifests, never weights or whole datasets but CoNLL-2003's (under a second):

- a precision this machine lacks (``training.precision``);
- a model or teacher that cannot be found (offline and not cached; ``model.init: pretrained`` never falls
  back to random weights), a ``model.init: random`` name with no published architecture, a random model's
  tokenizer that cannot be loaded or whose ids do not fit (``model.tokenizer``), or a model that cannot serve
  the task: an encoder
  for a generation task or a text-to-text model for NER, a classifier fine-tuned on other classes or other
  labels, label words that are not single tokens, a label-word calibration asked of a family without a
  masked-LM head (T5), a teacher of another kind or vocabulary than the student (``model.name_or_path``,
  ``model.head``, ``model.calibrate_label_words``, ``distill.teacher``), inputs longer than an encoder reads
  (``data.max_seq_length``);
- local data that is missing while the hub is offline, or lacks a file or a column, or (CoNLL-2003, whose
  files are small enough to read whole) has a malformed line or an unknown tag (``data.local_dir``);
- a run directory whose checkpoints belong to another run, are past ``training.max_steps``, or would be
  mixed with a fresh start (:func:`sparse_dist.checkpoint.check_run_dir`).
"""

from __future__ import annotations

from pathlib import Path

from sparse_dist.checkpoint import check_run_dir, completion_mismatch, run_signature
from sparse_dist.config import ConfigError, RunConfig
from sparse_dist.data.load import check_data_source
from sparse_dist.distributed.deepspeed_config import resolve_precision
from sparse_dist.distributed.env import device_capabilities
from sparse_dist.tasks import get_task


def check_run(config: RunConfig) -> None:
    """Raise :class:`ConfigError` for the first problem found (see the module docstring). No process group."""
    from sparse_dist.models.build import (
        check_model_for_task,
        load_checkpoint_config,
        load_model_config,
        load_tokenizer,
        teacher_head,
    )
    from sparse_dist.models.families import get_family
    from sparse_dist.models.label_words import check_calibration, label_word_ids

    task = get_task(config.data.task)
    signature = config_signature(config)

    model = config.model
    student = load_model_config(model)
    check_model_for_task(student, task, model.name_or_path, model.head)
    family = get_family(student.model_type)
    check_calibration(family, model.calibrate_label_words, model.name_or_path)
    reads_label_words = family.label_words and model.head == "label_words"
    if family.absolute_positions or reads_label_words:
        tokenizer = load_tokenizer(model, student)
    if family.absolute_positions:
        limit = tokenizer.model_max_length  # absolute positions: longer inputs fail at their first batch
        if limit < 1_000_000 and config.data.max_seq_length > limit:  # (a huge value means "not recorded")
            raise ConfigError(f"data.max_seq_length: {model.name_or_path} reads at most {limit} tokens, got "
                              f"{config.data.max_seq_length}")
    if reads_label_words:
        try:
            label_word_ids(tokenizer, task.label_words, family)
        except ValueError as error:
            raise ConfigError(f"model.head: label_words with {model.name_or_path}: {error}") from None

    teacher_name = config.distill.teacher
    if teacher_name:
        teacher = load_checkpoint_config(teacher_name, "distill.teacher")
        if get_family(teacher.model_type).kind != family.kind:
            raise ConfigError(f"distill.teacher: {teacher_name} is a {teacher.model_type} model and the student "
                              f"{model.name_or_path} a {student.model_type} model; their logits cannot be compared")
        if getattr(teacher, "vocab_size", None) != getattr(student, "vocab_size", None):
            raise ConfigError(f"distill.teacher: {teacher_name} has a vocabulary of {teacher.vocab_size} tokens and "
                              f"the student {model.name_or_path} of {student.vocab_size}; the teacher reads the "
                              "student's token ids")
        check_model_for_task(teacher, task, teacher_name, teacher_head(teacher_name, model.head), "distill.teacher")

    check_data_source(task, config.data.local_dir)
    check_run_dir(Path(config.job.run_dir) / "checkpoints", signature, config.world_size, config.checkpoint.resume,
                  config.training.max_steps)


def config_signature(config: RunConfig) -> dict:
    """The run's checkpoint signature as this machine resolves it (precision). Raises :class:`ConfigError`."""
    on_accelerator, bf16 = device_capabilities()
    return run_signature(config, resolve_precision(config.training, on_accelerator, bf16))


def incomplete_because(config: RunConfig) -> str | None:
    """Why the run this config asks for is not complete (None: its COMPLETED marker matches). For job
    scripts deciding whether to requeue; no process group."""
    return completion_mismatch(Path(config.job.run_dir), config_signature(config), config.training.max_steps)
