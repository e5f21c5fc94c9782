"""What each task is: its columns, labels, dev sets, metrics, and how it reads as text for T5.

One :class:`TaskSpec` per GLUE task and for WebNLG. A spec names the task's hub dataset and its
local layout (the original GLUE TSV files, as in ``../shared/data``), so loaders stay generic.
Label ids follow the hub datasets (``nyu-mll/glue``), so local and hub data train the same head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["classification", "regression", "generation"]


@dataclass(frozen=True)
class LocalLayout:
    """How a task's files look in a local directory (the GLUE TSV distribution)."""

    directory: str
    """Sub-directory of data.local_dir (e.g. ``glue/SST-2``)."""
    files: dict[str, str]
    """Split name -> file name inside the directory."""
    columns: dict[str, str]
    """Canonical column (text_a, text_b, label) -> column name in the file."""
    header: bool = True
    """False for files without a header row (CoLA); then ``names`` gives the columns."""
    names: tuple[str, ...] = ()


@dataclass(frozen=True)
class TaskSpec:
    """A task: enough to load it, tokenize it, score it, and phrase it as text-to-text."""

    name: str
    kind: Kind
    hub_path: str
    hub_name: str | None
    hub_columns: dict[str, str]
    """Canonical column (text_a, text_b, label) -> hub column."""
    label_names: tuple[str, ...] = ()
    """Class names in label-id order (classification); empty for regression and generation."""
    dev_splits: tuple[str, ...] = ("validation",)
    """Dev sets evaluated; the first one drives model selection."""
    metrics: tuple[str, ...] = ("accuracy",)
    primary_metric: str = "accuracy"
    """The metric that decides "better" (best checkpoint, PINS teacher updates)."""
    text_prefix: str = ""
    """T5 task prefix ("sst2 sentence: ...")."""
    text_fields: tuple[str, ...] = ("sentence",)
    """T5 names of text_a (and text_b) in the input string."""
    target_words: tuple[str, ...] = ()
    """T5 target string per class (defaults to label_names)."""
    label_words: tuple[str, ...] = ()
    """Words whose masked-LM logits at the first token serve as class logits (SMP's frozen head), in
    label-id order; a regression task uses the logit of its one word."""
    score_range: tuple[float, float] | None = None
    """Regression: the lowest and highest score a label can take (STS-B: 0 to 5)."""
    local: LocalLayout | None = None
    train_split: str = "train"

    @property
    def num_labels(self) -> int:
        """Output size of an encoder head: classes, or 1 for regression."""
        return len(self.label_names) if self.kind == "classification" else 1

    @property
    def has_pair(self) -> bool:
        return "text_b" in self.hub_columns

    @property
    def words(self) -> tuple[str, ...]:
        return self.target_words or self.label_names


def _glue(name: str, *, kind: Kind = "classification", columns: dict[str, str], labels: tuple[str, ...] = (),
          metrics: tuple[str, ...] = ("accuracy",), primary: str = "accuracy", text_fields: tuple[str, ...],
          local: LocalLayout, dev_splits: tuple[str, ...] = ("validation",), words: tuple[str, ...],
          score_range: tuple[float, float] | None = None) -> TaskSpec:
    return TaskSpec(name=name, kind=kind, hub_path="nyu-mll/glue", hub_name=name, hub_columns=columns,
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
        "stsb", kind="regression", columns=_PAIR, metrics=("pearson", "spearman"), primary="pearson",
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
    "webnlg": TaskSpec(
        name="webnlg", kind="generation", hub_path="web_nlg", hub_name="webnlg_challenge_2017",
        hub_columns={}, metrics=("bleu",), primary_metric="bleu", text_prefix="translate triples to text",
        text_fields=(), local=LocalLayout(directory="webnlg", files={"train": "train", "validation": "dev"},
                                          columns={}),
        dev_splits=("validation",)),
}


def get_task(name: str) -> TaskSpec:
    """The spec of a task by name; a clear error for an unknown one."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}") from None


def split_label(split: str) -> str:
    """Short name of a dev split for metric tags: validation -> '', validation_mismatched -> 'mismatched'."""
    return split.removeprefix("validation").lstrip("_")
