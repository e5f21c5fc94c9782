"""Extractive question answering (SQuAD v1.1): the answer is a span of the context, scored by EM and F1.

Encoders only (BERT, RoBERTa: ``AutoModelForQuestionAnswering``, a start and an end logit per token); a
text-to-text model or SMP's label-word head is refused (SMP trains the new ``qa_outputs`` layer with the
mask scores on the frozen encoder instead). A context longer than the window
(``data.max_seq_length`` tokens) is cut into windows overlapping by ``data.doc_stride`` tokens
(:mod:`sparse_dist.data.extractive_qa`): one training example and one evaluation input per window.

Evaluation predicts per window (its start and end logits), and the Evaluator gathers every window of the
dev set, from all ranks, in window order, before :meth:`ExtractiveQA.score` picks one answer per question
over all of its windows: a question whose windows fell on several ranks is answered exactly as in a single
process. Distillation compares the start and the end distributions (two classifications over the window's
tokens per example), with the start and end positions as labels.
"""

from __future__ import annotations

from dataclasses import dataclass

from sparse_dist.config import ConfigError
from sparse_dist.tasks.base import TaskType
from sparse_dist.tasks.spec import TaskSpec

N_BEST_SIZE = 20
"""Candidate start and end tokens per window in post-processing (as in HF's run_qa): ``data.n_best``'s default."""
MAX_ANSWER_LENGTH = 30
"""Longest answer in tokens that post-processing considers (as in HF's run_qa): ``data.max_answer_length``'s
default."""


@dataclass
class QAGold:
    """What scoring a dev set needs besides the window logits: the questions and their windows."""

    examples: dict[str, list]
    """Columns ``id``, ``context`` and ``answers`` of the questions, in file order."""
    windows: dict[str, list]
    """``example_id`` and ``offset_mapping`` of every window, in window (``idx``) order."""
    n_best: int = N_BEST_SIZE
    """Start and end candidates per window (``data.n_best``)."""
    max_answer_length: int = MAX_ANSWER_LENGTH
    """Longest answer in tokens (``data.max_answer_length``)."""

    def __len__(self) -> int:
        return len(self.examples["id"])


class ExtractiveQA(TaskType):
    name = "extractive_qa"
    problem_type = None
    label_word_head = False  # a span has no label words: model.head=label_words is refused; SMP trains qa_outputs

    # --- data ---------------------------------------------------------------------------------------

    def num_labels(self, task: TaskSpec) -> int:
        return 2  # a start and an end logit per token (the qa_outputs layer of AutoModelForQuestionAnswering)

    # --- the model ----------------------------------------------------------------------------------

    def check_model(self, task, kind, config, name, head, key):
        if kind != "encoder":
            what = "decoder-only" if kind == "decoder" else "text-to-text"
            raise ConfigError(f"{key}: {name} is a {config.model_type} {what} model; extractive QA "
                              f"({task.name}) needs an encoder (BERT, RoBERTa) with a span head")
        return None

    def model_class(self, kind: str, label_words: bool):
        from transformers import AutoModelForQuestionAnswering

        return AutoModelForQuestionAnswering

    def configure_model(self, task, config, kind) -> None:
        config.num_labels = 2

    # --- encoding -----------------------------------------------------------------------------------

    def encode_train(self, task, raw, tokenizer, kind, max_seq_length, max_target_length, doc_stride=None):
        """One training example per window, with ``start_positions`` and ``end_positions``."""
        from sparse_dist.data.extractive_qa import encode_qa_train

        return encode_qa_train(raw, tokenizer, max_seq_length, _stride(max_seq_length, doc_stride))

    def encode_eval(self, task, raw, tokenizer, kind, max_seq_length, doc_stride=None, n_best=N_BEST_SIZE,
                    max_answer_length=MAX_ANSWER_LENGTH):
        """Model inputs of every window (``idx`` = window number) and the :class:`QAGold` to score them."""
        from sparse_dist.data.extractive_qa import encode_qa_eval

        features = encode_qa_eval(raw, tokenizer, max_seq_length, _stride(max_seq_length, doc_stride))
        windows = features.select_columns(["example_id", "offset_mapping"]).to_dict()
        inputs = features.remove_columns(["example_id", "offset_mapping"])
        inputs = inputs.add_column("idx", list(range(len(inputs))))
        examples = raw.select_columns(["id", "context", "answers"]).to_dict()
        return inputs, QAGold(examples=examples, windows=windows, n_best=n_best, max_answer_length=max_answer_length)

    def loss_labels(self, batch):
        """(B, 2): the start and end position of each window's answer ([CLS] when the window lacks it)."""
        import torch

        return torch.stack([batch["start_positions"], batch["end_positions"]], dim=1)

    # --- predictions --------------------------------------------------------------------------------

    def predict_batch(self, task, model, batch, kind, generate) -> list:
        """Per window: its start and end logits (float32 arrays), reduced per question by :meth:`score`."""
        outputs = model(**batch)
        starts = outputs.start_logits.detach().float().cpu().numpy()
        ends = outputs.end_logits.detach().float().cpu().numpy()
        return list(zip(starts, ends))

    def score(self, task, predictions: list, gold: QAGold) -> dict[str, float]:
        """Official EM and F1 of the answers post-processing picks from all windows of each question."""
        import numpy as np

        from sparse_dist.data.extractive_qa import postprocess_qa_predictions
        from sparse_dist.data.squad import compute_squad_metrics

        starts = np.stack([start for start, _ in predictions])
        ends = np.stack([end for _, end in predictions])
        answers = postprocess_qa_predictions(gold.examples, gold.windows, starts, ends, gold.n_best,
                                             gold.max_answer_length)
        return compute_squad_metrics([answers[qid] for qid in gold.examples["id"]],
                                     [a["text"] for a in gold.examples["answers"]])

    # --- distillation -------------------------------------------------------------------------------

    def distill_logits(self, outputs):
        """(B, 2, L): the start and the end logits, two distributions over the window's tokens."""
        import torch

        return torch.stack([outputs.start_logits, outputs.end_logits], dim=1)


def _stride(max_seq_length: int, doc_stride: int | None) -> int:
    return max_seq_length // 3 if doc_stride is None else doc_stride


EXTRACTIVE_QA = ExtractiveQA()
