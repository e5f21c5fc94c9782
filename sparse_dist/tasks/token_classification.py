"""Token classification: a tag per word (NER on CoNLL-2003), on encoders only.

Words are tokenized pre-split; a word's tag sits on its first sub-word and every other position (later
sub-words, special tokens, padding) has label -100, which the loss, distillation and
:func:`~sparse_dist.distill.losses.loss_units` skip (:mod:`sparse_dist.data.token_classification`). A
dev example's prediction is the tag name of each word, read at its first sub-word; its gold answer is the
tag names of its words, every word included (a word cut by ``data.max_seq_length`` is predicted ``O``).
Metrics are entity-level precision, recall, F1 (``conlleval``'s reading, via seqeval) and token accuracy
(:func:`~sparse_dist.data.conll.compute_ner_metrics`).

Distillation needs nothing of its own: the task's logits are ``(B, L, C)`` and its labels ``(B, L)``,
which :mod:`sparse_dist.distill.losses` already compares position by position, keeping only the positions
whose label is not -100, for the student and the teacher alike.

Not served: text-to-text models (T5), and SMP's label-word head (there is no word to read a tag at,
:attr:`label_word_head`). SMP runs with the token-classification layer instead: the encoder is frozen, and
the mask scores and the new (unpruned) ``classifier`` train (:mod:`sparse_dist.pruning.learned`).
"""

from __future__ import annotations

from typing import Any

from sparse_dist.config import ConfigError
from sparse_dist.tasks.base import TaskType

WORD_COLUMNS = ("word_ids", "num_words")
"""Per-example columns of dev inputs that map sub-word predictions back to words; kept out of the model."""


class TokenClassification(TaskType):
    name = "token_classification"
    label_word_head = False

    def label_value(self, task, value: Any, where: str, row: int) -> list[int]:
        """A sequence of tag ids or tag names -> tag ids."""
        from sparse_dist.data.load import DataError

        names = task.label_names
        out = []
        for tag in value:
            if isinstance(tag, str) and tag in names:
                out.append(names.index(tag))
            elif isinstance(tag, int) and 0 <= tag < len(names):
                out.append(tag)
            else:
                raise DataError(f"{where}: row {row + 1}: unknown tag {tag!r} for task {task.name} "
                                f"(expected one of {', '.join(names)})")
        return out

    # --- the model ----------------------------------------------------------------------------------

    def check_model(self, task, kind: str, config, name: str, head: str, key: str) -> None:
        if kind != "encoder":
            raise ConfigError(f"{key}: {name} is a {config.model_type} ({kind}) model; task {task.name} "
                              "(token classification) needs an encoder such as BERT or RoBERTa")
        return None  # label words are refused by the config (label_word_head)

    def model_class(self, kind: str, label_words: bool):
        from transformers import AutoModelForTokenClassification

        return AutoModelForTokenClassification

    def configure_model(self, task, config, kind: str) -> None:
        config.num_labels = task.num_labels
        config.id2label = dict(enumerate(task.label_names))
        config.label2id = {name: i for i, name in enumerate(task.label_names)}

    # --- encoding -----------------------------------------------------------------------------------

    def encode_train(self, task, raw, tokenizer, kind: str, max_seq_length: int, max_target_length: int,
                     doc_stride: int | None = None):
        from sparse_dist.data.token_classification import encode_token_labels

        def encode(batch: dict[str, list]) -> dict[str, list]:
            features = encode_token_labels(tokenizer, batch["tokens"], batch["label"], max_seq_length)
            del features["word_ids"]
            return features

        return raw.map(encode, batched=True, remove_columns=raw.column_names, keep_in_memory=True,
                       desc=f"tokenizing {task.name} train")

    def encode_eval(self, task, raw, tokenizer, kind: str, max_seq_length: int, doc_stride: int | None = None,
                    n_best: int = 20, max_answer_length: int = 30):
        from sparse_dist.data.token_classification import encode_token_labels

        def encode(batch: dict[str, list]) -> dict[str, list]:
            features = encode_token_labels(tokenizer, batch["tokens"], batch["label"], max_seq_length)
            del features["labels"]
            features["num_words"] = [len(words) for words in batch["tokens"]]
            features["idx"] = batch["idx"]
            return features

        gold = [[task.label_names[t] for t in tags] for tags in raw["label"]]
        encoded = raw.map(encode, batched=True, remove_columns=raw.column_names, keep_in_memory=True,
                          desc=f"tokenizing {task.name} dev")
        return encoded, gold

    def collator(self, tokenizer, kind: str):
        return TokenCollator(tokenizer)

    # --- predictions and metrics ----------------------------------------------------------------------

    def predict_batch(self, task, model, batch, kind: str, generate) -> list:
        """Tag names per word, one list per example. Collective under ZeRO-3 (one forward pass)."""
        from sparse_dist.data.token_classification import compute_word_predictions

        word_ids, num_words = batch.pop("word_ids").tolist(), batch.pop("num_words").tolist()
        tokens = model(**batch).logits.float().argmax(dim=-1).tolist()
        names = task.label_names
        return [[names[t] for t in compute_word_predictions(predicted, ids, n)]
                for predicted, ids, n in zip(tokens, word_ids, num_words)]

    def score(self, task, predictions: list, gold: list) -> dict[str, float]:
        from sparse_dist.data.conll import compute_ner_metrics

        scores = compute_ner_metrics(predictions, gold)
        return {name: scores[name] for name in task.metrics}


class TokenCollator:
    """Pads token-classification examples: ``labels`` with -100, ``word_ids`` with -1; ``idx`` apart."""

    def __init__(self, tokenizer):
        from transformers import DataCollatorForTokenClassification

        self._pad = DataCollatorForTokenClassification(tokenizer, return_tensors="pt")

    def __call__(self, features: list[dict[str, Any]]) -> dict:
        import torch

        from sparse_dist.data.token_classification import NO_WORD

        features = [dict(f) for f in features]
        idx = [f.pop("idx") for f in features if "idx" in f]
        word_ids = [f.pop("word_ids") for f in features if "word_ids" in f]
        num_words = [f.pop("num_words") for f in features if "num_words" in f]
        batch = {key: value for key, value in self._pad(features).items() if value is not None}
        if word_ids:
            width = batch["input_ids"].shape[1]
            batch["word_ids"] = torch.tensor([ids + [NO_WORD] * (width - len(ids)) for ids in word_ids])
            batch["num_words"] = torch.tensor(num_words, dtype=torch.long)
        if idx:
            batch["idx"] = torch.tensor(idx, dtype=torch.long)
        return batch


TOKEN_CLASSIFICATION = TokenClassification()
