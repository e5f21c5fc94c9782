"""The task-type interface: everything that depends on what kind of problem a task is.

A task type is one object per kind of problem (sequence classification, regression, text-to-text
generation, ...). It owns the task's label column, its encoding for each model interface and the
collator, the ``AutoModelFor*`` class it needs, how a batch becomes per-example predictions, and the
logits that distillation and self-regularization read. The model interface is the model family's
:attr:`~sparse_dist.models.families.base.ModelFamily.kind`: ``encoder`` (a head on the encoder),
``seq2seq`` (the task phrased as text, :meth:`TaskType.source_segments` -> :meth:`TaskType.target_text`)
or ``decoder`` (the same phrasing for a causal LM: prompt then target in one sequence, the loss on the
target tokens only, generation continues the prompt).
Which interfaces a type serves, and how, is decided here and nowhere else.

:class:`TaskType` implements the pipeline that sequence-level types share (a text or a pair in, one
label per example out); a type of another shape (token classification, extractive QA) overrides
:meth:`encode_train`, :meth:`encode_eval`, :meth:`collator`, :meth:`predict_batch` and
:meth:`distill_losses`, and where needed :meth:`loss_labels` (labels not in ``labels``), :meth:`score`
(predictions reduced before scoring: QA's windows to answers) and :meth:`distill_logits`. Heavy libraries
are imported inside the methods: the config imports the task registry to check ``data.task``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sparse_dist.config import ConfigError

if TYPE_CHECKING:
    import datasets
    import torch
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

    from sparse_dist.tasks.spec import TaskSpec


class TaskType:
    """A sequence-level task type; subclasses fill in the label and the text-to-text phrasing."""

    name = "task"
    """What ``TaskSpec.kind`` reports: classification, regression, generation, ..."""
    label_dtype = "int64"
    """The ``datasets`` dtype of the canonical ``label`` column."""
    problem_type = "single_label_classification"
    """The encoder head's ``problem_type`` in the transformers config (which loss it computes)."""
    regression = False
    """Whether outputs are scores: MSE in the label-word head and in distillation, not distributions."""
    label_word_head = True
    """Whether an encoder can serve it with SMP's label-word head (a masked-LM read at the first token)."""

    # --- data ---------------------------------------------------------------------------------------

    def num_labels(self, task: TaskSpec) -> int:
        """Output size of an encoder head."""
        return len(task.label_names)

    def label_value(self, task: TaskSpec, value: Any, where: str, row: int) -> Any:
        """The canonical label of a label cell read from a file (raises ``DataError`` naming ``where``, ``row``)."""
        raise NotImplementedError

    def gold(self, raw: datasets.Dataset) -> list:
        """The gold answers of a dev split, in ``idx`` order."""
        return list(raw["label"])

    def train_examples(self, raw: datasets.Dataset) -> datasets.Dataset:
        """Training examples from a training split (WebNLG: one per reference sentence)."""
        return raw

    # --- the model ----------------------------------------------------------------------------------

    def check_model(self, task: TaskSpec, kind: str, config: PretrainedConfig, name: str, head: str,
                    key: str) -> list[int] | None:
        """Refuse a model this type cannot serve through interface ``kind`` with ``head`` (a classifier of
        other classes); return the order that puts a fine-tuned classifier's outputs in the task's class order
        (None: already in order). Raises :class:`ConfigError` naming ``key``."""
        if kind != "encoder" or head == "label_words":  # label words are spoken in the task's order
            return None
        from sparse_dist.models.label_order import checkpoint_labels, compute_label_order

        return compute_label_order(checkpoint_labels(config), task, key, name)

    def model_class(self, kind: str, label_words: bool):
        """The ``transformers`` auto class to load the model with."""
        from transformers import (
            AutoModelForCausalLM,
            AutoModelForMaskedLM,
            AutoModelForSeq2SeqLM,
            AutoModelForSequenceClassification,
        )

        if kind == "seq2seq":
            return AutoModelForSeq2SeqLM
        if kind == "decoder":
            return AutoModelForCausalLM
        return AutoModelForMaskedLM if label_words else AutoModelForSequenceClassification

    def configure_model(self, task: TaskSpec, config: PretrainedConfig, kind: str) -> None:
        """Set the head's size and labels in the model's config before it is built (encoders)."""
        if kind != "encoder":
            return
        config.num_labels = task.num_labels
        config.problem_type = self.problem_type
        if task.label_names:
            config.id2label = dict(enumerate(task.label_names))
            config.label2id = {name: i for i, name in enumerate(task.label_names)}

    def head_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The task loss of a head built here (SMP's label-word head), the same as transformers' heads."""
        import torch.nn.functional as F

        return F.cross_entropy(logits.float(), labels)

    # --- text-to-text phrasing ------------------------------------------------------------------------

    def source_segments(self, task: TaskSpec, example: dict[str, Any]) -> list[tuple[str, bool]]:
        """The T5 input of one example as pieces joined by spaces: (text, whether truncation may shorten it).

        Field names are kept whole; the example's own texts give way when the input is too long.
        """
        segments = [(f"{task.text_prefix} {task.text_fields[0]}:", False), (example["text_a"], True)]
        if task.has_pair:
            segments += [(f"{task.text_fields[1]}:", False), (example["text_b"], True)]
        return segments

    def target_text(self, task: TaskSpec, label: Any) -> str:
        """The T5 target string of a label."""
        raise NotImplementedError

    def training_target(self, task: TaskSpec, example: dict[str, Any]) -> str:
        """The T5 target string of a training example."""
        return self.target_text(task, example["label"])

    def parse_prediction(self, task: TaskSpec, text: str) -> Any:
        """Generated text back to a prediction comparable with the gold answers."""
        raise NotImplementedError

    def class_targets(self, task: TaskSpec) -> list[str]:
        """Every target string a text-to-text model must produce whole (empty: targets may be cut)."""
        return []

    # --- encoding -----------------------------------------------------------------------------------

    def encode_train(self, task: TaskSpec, raw: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, kind: str,
                     max_seq_length: int, max_target_length: int, doc_stride: int | None = None) -> datasets.Dataset:
        """Tokenized training examples with ``labels``. ``doc_stride`` (``data.doc_stride``) is read by types
        that cut long inputs into overlapping windows (extractive QA)."""
        from sparse_dist.data.encode import (
            check_class_targets,
            encode_pair_inputs,
            encode_prompt_and_target,
            encode_text_to_text_inputs,
        )

        raw = self.train_examples(raw)
        if kind == "seq2seq":
            check_class_targets(task, tokenizer, max_target_length)

        def encode(batch: dict[str, list]) -> dict[str, list]:
            examples = [dict(zip(batch, values)) for values in zip(*batch.values())]
            if kind == "encoder":
                features = encode_pair_inputs(tokenizer, batch, max_seq_length)
                features["labels"] = batch["label"]
                return features
            features = encode_text_to_text_inputs(task, tokenizer, examples, max_seq_length)
            targets = [self.training_target(task, example) for example in examples]
            if kind == "decoder":
                return encode_prompt_and_target(tokenizer, features["input_ids"], targets, max_target_length)
            features["labels"] = tokenizer(text_target=targets, truncation=True,
                                           max_length=max_target_length)["input_ids"]
            return features

        return raw.map(encode, batched=True, remove_columns=raw.column_names, keep_in_memory=True,
                       desc=f"tokenizing {task.name} train")

    def encode_eval(self, task: TaskSpec, raw: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, kind: str,
                    max_seq_length: int, doc_stride: int | None = None, n_best: int = 20,
                    max_answer_length: int = 30) -> tuple[datasets.Dataset, list]:
        """Tokenized dev inputs (with ``idx``) and the gold answers in ``idx`` order. ``doc_stride``, ``n_best``
        and ``max_answer_length`` are extractive QA's windows and post-processing (``data.*``); other types
        ignore them."""
        from sparse_dist.data.encode import encode_pair_inputs, encode_text_to_text_inputs

        def encode(batch: dict[str, list]) -> dict[str, list]:
            examples = [dict(zip(batch, values)) for values in zip(*batch.values())]
            if kind == "encoder":
                features = encode_pair_inputs(tokenizer, batch, max_seq_length)
            else:
                features = encode_text_to_text_inputs(task, tokenizer, examples, max_seq_length)
            features["idx"] = batch["idx"]
            return features

        gold = self.gold(raw)
        encoded = raw.map(encode, batched=True, remove_columns=raw.column_names, keep_in_memory=True,
                          desc=f"tokenizing {task.name} dev")
        return encoded, gold

    def collator(self, tokenizer: PreTrainedTokenizerBase, kind: str):
        """Pads encoded examples into a batch (``idx`` kept apart)."""
        from sparse_dist.data.encode import Collator

        return Collator(tokenizer, kind)

    def loss_labels(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The labels of a training batch, as the losses of :mod:`sparse_dist.distill.losses` read them."""
        return batch["labels"]

    # --- predictions --------------------------------------------------------------------------------

    def check_generation(self, task: TaskSpec, tokenizer: PreTrainedTokenizerBase, kind: str,
                         max_new_tokens: int) -> None:
        """Refuse an ``eval.max_new_tokens`` that would cut a class word short: it would parse as no class."""
        if kind == "encoder":
            return
        from sparse_dist.data.encode import longest_class_target

        target, length = longest_class_target(task, tokenizer, add_special_tokens=False)
        if length > max_new_tokens:
            raise ConfigError(f"eval.max_new_tokens: the {task.name} target {target!r} is {length} tokens in this "
                              f"vocabulary and must be generated whole, got {max_new_tokens}")

    def predict_batch(self, task: TaskSpec, model: torch.nn.Module, batch: dict[str, torch.Tensor], kind: str,
                      generate) -> list:
        """One prediction per example of ``batch``; ``generate(batch)`` returns the decoded texts (text-to-text).
        Under ZeRO-3 this is collective: every rank calls it for the same number of batches."""
        if kind == "encoder":
            return self.predictions_from_logits(model(**batch).logits.float())
        return [self.parse_prediction(task, text) for text in generate(batch)]

    def predictions_from_logits(self, logits: torch.Tensor) -> list:
        """Per-example predictions of an encoder head."""
        return logits.argmax(dim=-1).tolist()

    def score(self, task: TaskSpec, predictions: list, gold: Any) -> dict[str, float]:
        """The task's metrics of a whole dev set's predictions (in ``idx`` order) against its gold answers."""
        from sparse_dist.metrics import compute_metrics

        return compute_metrics(task.metrics, predictions, gold)

    # --- distillation -------------------------------------------------------------------------------

    def distill_logits(self, outputs) -> torch.Tensor:
        """What a teacher and its student are compared on (the model output's ``logits``)."""
        return outputs.logits

    def distill_losses(self, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, adaptive: bool,
                       alpha_ce: float, alpha_kd: float, temperature: float) -> dict[str, torch.Tensor]:
        """Distillation losses of :mod:`sparse_dist.distill.losses`: fixed weights (an external teacher), or
        PINS' adaptive weights (``adaptive``)."""
        from sparse_dist.distill.losses import adaptive_kd, standard_kd

        if adaptive:
            return adaptive_kd(student, teacher, labels, self.regression, temperature)
        return standard_kd(student, teacher, labels, self.regression, alpha_ce, alpha_kd, temperature)
