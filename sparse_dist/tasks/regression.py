"""Sequence regression: a text or a pair of texts, one score (STS-B).

Encoders get a one-output head trained with MSE (SMP reads the logit of the task's one label word); T5
produces the score as text, rounded to 0.2 as in T5, and text that is no number parses as 0.0.
"""

from __future__ import annotations

import math
from typing import Any

from sparse_dist.tasks.base import TaskType


class SequenceRegression(TaskType):
    name = "regression"
    label_dtype = "float32"
    problem_type = "regression"
    regression = True

    def num_labels(self, task) -> int:
        return 1

    def label_value(self, task, value: Any, where: str, row: int) -> float:
        from sparse_dist.data.load import DataError

        try:
            score = float(value)
        except (TypeError, ValueError):
            score = math.nan
        if math.isnan(score):
            raise DataError(f"{where}: row {row + 1}: label {value!r} is not a number (task {task.name})")
        return score

    def head_loss(self, logits, labels):
        import torch.nn.functional as F

        return F.mse_loss(logits.squeeze(-1).float(), labels.float())

    def target_text(self, task, label) -> str:
        """The score rounded to 0.2 (as in T5)."""
        return f"{round(float(label) * 5) / 5:.1f}"

    def parse_prediction(self, task, text: str) -> float:
        """The score, or 0.0 if the text is no number."""
        try:
            return float(text.strip())
        except ValueError:
            return 0.0

    def class_targets(self, task) -> list[str]:
        return sorted({self.target_text(task, score / 5) for score in range(26)})  # 0.0 to 5.0 in steps of 0.2

    def predictions_from_logits(self, logits) -> list:
        return logits.squeeze(-1).tolist()


SEQUENCE_REGRESSION = SequenceRegression()
