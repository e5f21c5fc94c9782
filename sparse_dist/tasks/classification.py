"""Sequence classification: a text or a pair of texts, one of the task's classes (GLUE but STS-B).

Encoders get a classifier head (or SMP's label-word head); T5 produces the class word
(:attr:`~sparse_dist.tasks.spec.TaskSpec.words`) and a word it was not trained on parses as no class.
"""

from __future__ import annotations

from typing import Any

from sparse_dist.tasks.base import TaskType


class SequenceClassification(TaskType):
    name = "classification"

    def label_value(self, task, value: Any, where: str, row: int) -> int:
        """An id or a class name -> the hub's label id."""
        from sparse_dist.data.load import DataError

        names = task.label_names
        if isinstance(value, str) and value in names:
            return names.index(value)
        try:
            label = int(value)
        except (TypeError, ValueError):
            label = -1
        if isinstance(value, float) and value != label:
            label = -1
        if not 0 <= label < len(names):
            raise DataError(f"{where}: row {row + 1}: unknown label {value!r} for task {task.name} "
                            f"(expected one of {', '.join(names)} or 0..{len(names) - 1})")
        return label

    def target_text(self, task, label) -> str:
        """The class word."""
        return task.words[int(label)]

    def parse_prediction(self, task, text: str) -> int:
        """The class id, or -1 if the text is no class word."""
        text = text.strip()
        words = task.words
        return words.index(text) if text in words else -1

    def class_targets(self, task) -> list[str]:
        return [self.target_text(task, label) for label in range(len(task.words))]


SEQUENCE_CLASSIFICATION = SequenceClassification()
