"""What a task is: its data (hub dataset, local layout, columns, labels, dev sets, metrics) and its type.

A :class:`TaskSpec` is data; everything that depends on what kind of problem it is (columns, encoding,
head, predictions, the logits distillation reads) is asked of its :attr:`TaskSpec.type`
(:mod:`sparse_dist.tasks.base`). Label ids follow the hub datasets (``nyu-mll/glue``), so local and hub
data train the same head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sparse_dist.tasks.base import TaskType


@dataclass(frozen=True)
class LocalLayout:
    """How a task's files look in a local directory (e.g. the GLUE TSV distribution)."""

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
    """A task: enough to load it, and the type that tokenizes it, scores it and phrases it as text-to-text."""

    name: str
    type: TaskType
    """What kind of problem it is (:mod:`sparse_dist.tasks.base`): one object per task type."""
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
    reader: str = "table"
    """How its files are read (:data:`sparse_dist.data.load.READERS`): ``table`` (TSV or hub columns) or
    ``webnlg`` (WebNLG XML)."""

    @property
    def kind(self) -> str:
        """The type's name: classification, regression or generation (for reports; code asks :attr:`type`)."""
        return self.type.name

    @property
    def num_labels(self) -> int:
        """Output size of an encoder head: classes, or 1 for regression."""
        return self.type.num_labels(self)

    @property
    def has_pair(self) -> bool:
        return "text_b" in self.hub_columns

    @property
    def words(self) -> tuple[str, ...]:
        return self.target_words or self.label_names


def split_label(split: str) -> str:
    """Short name of a dev split for metric tags: validation -> '', validation_mismatched -> 'mismatched'."""
    return split.removeprefix("validation").lstrip("_")
