"""The nine GLUE tasks: their hub dataset (``nyu-mll/glue``), the original TSV files (as in
``../shared/data``), labels, metrics, T5 phrasing and SMP label words. STS-B is a regression, the rest
are sequence classification."""

from __future__ import annotations

from sparse_dist.tasks.base import TaskType
from sparse_dist.tasks.classification import SEQUENCE_CLASSIFICATION
from sparse_dist.tasks.regression import SEQUENCE_REGRESSION
from sparse_dist.tasks.spec import LocalLayout, TaskSpec


def _glue(name: str, *, type: TaskType = SEQUENCE_CLASSIFICATION, columns: dict[str, str], labels: tuple[str, ...] = (),
          metrics: tuple[str, ...] = ("accuracy",), primary: str = "accuracy", text_fields: tuple[str, ...],
          local: LocalLayout, dev_splits: tuple[str, ...] = ("validation",), words: tuple[str, ...],
          score_range: tuple[float, float] | None = None) -> TaskSpec:
    return TaskSpec(name=name, type=type, hub_path="nyu-mll/glue", hub_name=name, hub_columns=columns,
                    label_names=labels, dev_splits=dev_splits, metrics=metrics, primary_metric=primary,
                    text_prefix=name, text_fields=text_fields, local=local, label_words=words,
                    score_range=score_range)


def _tsv(directory: str, columns: dict[str, str], dev: dict[str, str] | None = None, **kwargs) -> LocalLayout:
    files = {"train": "train.tsv", **(dev or {"validation": "dev.tsv"})}
    return LocalLayout(directory=f"glue/{directory}", files=files, columns=columns, **kwargs)


_PAIR = {"text_a": "sentence1", "text_b": "sentence2", "label": "label"}
_ENTAILMENT = ("entailment", "not_entailment")

TASKS: dict[str, TaskSpec] = {
    "cola": _glue(
        "cola", columns={"text_a": "sentence", "label": "label"}, labels=("unacceptable", "acceptable"),
        metrics=("mcc", "accuracy"), primary="mcc", text_fields=("sentence",),
        local=_tsv("CoLA", {"text_a": "sentence", "label": "label"}, header=False,
                   names=("source", "label", "original_label", "sentence")),
        words=("incorrect", "correct")),
    "sst2": _glue(
        "sst2", columns={"text_a": "sentence", "label": "label"}, labels=("negative", "positive"),
        text_fields=("sentence",), local=_tsv("SST-2", {"text_a": "sentence", "label": "label"}),
        words=("terrible", "great")),
    "mrpc": _glue(
        "mrpc", columns=_PAIR, labels=("not_equivalent", "equivalent"), metrics=("f1", "accuracy"), primary="f1",
        text_fields=("sentence1", "sentence2"),
        local=_tsv("MRPC", {"text_a": "#1 String", "text_b": "#2 String", "label": "Quality"}),
        words=("No", "Yes")),
    "qqp": _glue(
        "qqp", columns={"text_a": "question1", "text_b": "question2", "label": "label"},
        labels=("not_duplicate", "duplicate"), metrics=("f1", "accuracy"), primary="f1",
        text_fields=("question1", "question2"),
        local=_tsv("QQP", {"text_a": "question1", "text_b": "question2", "label": "is_duplicate"}),
        words=("No", "Yes")),
    "stsb": _glue(
        "stsb", type=SEQUENCE_REGRESSION, columns=_PAIR, metrics=("pearson", "spearman"), primary="pearson",
        text_fields=("sentence1", "sentence2"),
        local=_tsv("STS-B", {"text_a": "sentence1", "text_b": "sentence2", "label": "score"}),
        words=("Yes",), score_range=(0.0, 5.0)),
    "mnli": _glue(
        "mnli", columns={"text_a": "premise", "text_b": "hypothesis", "label": "label"},
        labels=("entailment", "neutral", "contradiction"), text_fields=("premise", "hypothesis"),
        dev_splits=("validation_matched", "validation_mismatched"),
        local=_tsv("MNLI", {"text_a": "sentence1", "text_b": "sentence2", "label": "gold_label"},
                   dev={"validation_matched": "dev_matched.tsv", "validation_mismatched": "dev_mismatched.tsv"}),
        words=("Yes", "Maybe", "No")),  # natural reading; SMP's code binds them otherwise (models/label_words.py)
    "qnli": _glue(
        "qnli", columns={"text_a": "question", "text_b": "sentence", "label": "label"}, labels=_ENTAILMENT,
        text_fields=("question", "sentence"),
        local=_tsv("QNLI", {"text_a": "question", "text_b": "sentence", "label": "label"}),
        words=("Yes", "No")),
    "rte": _glue(
        "rte", columns=_PAIR, labels=_ENTAILMENT, text_fields=("sentence1", "sentence2"),
        local=_tsv("RTE", _PAIR),
        words=("Yes", "No")),
    "wnli": _glue(
        "wnli", columns=_PAIR, labels=("not_entailment", "entailment"), text_fields=("sentence1", "sentence2"),
        local=_tsv("WNLI", _PAIR),
        words=("No", "Yes")),
}
