"""The training objective: the task loss, or distillation from a teacher, and when the teacher changes.

- No teacher: the model's own task loss.
- External teacher (``distill.teacher``): ``a_ce CE + a_kd T^2 KL`` for the whole run.

The task's type (:mod:`sparse_dist.tasks.base`) says which logits are compared (of the student's and of
the teacher's outputs alike: extractive QA stacks start and end logits), against which labels, and with
which losses of :mod:`sparse_dist.distill.losses` (MSE for a regression).
- Self-regularization (``distill.self_regularization``, PINS): the teacher is the student's best state
  on the dev set so far. Every evaluation that improves the task's primary metric (on all ranks, the
  same decision everywhere) makes the teacher a copy of the current student, pruned weights and all.
  Until the first such copy the loss is the task loss, or, if ``distill.teacher`` is given, adaptive
  distillation from that external teacher. The loss is PINS' adaptive-alpha loss.

Teachers live in CPU memory, sharded (:class:`~sparse_dist.distill.teacher.OffloadedTeacher`); for SMP,
whose weights never change, a teacher is an older mask (:class:`~sparse_dist.distill.teacher.MaskTeacher`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from sparse_dist.config import DistillConfig
from sparse_dist.tasks.base import TaskType

log = logging.getLogger(__name__)


class Distiller:
    """Task loss only. Subclasses distill."""

    teacher = None

    def loss(self, outputs, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{"loss": what to minimise, and its parts}, each a mean over the batch's target tokens (text-to-text)
        or examples (:func:`~sparse_dist.distill.losses.loss_units`); the trainer weights micro-batches by
        their share of the global batch. All ranks call (teachers run collective forwards)."""
        return {"loss": outputs.loss}

    def on_evaluation(self, improved: bool) -> None:
        """After every evaluation; ``improved`` is the same on all ranks. All ranks call."""

    def report(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, states: list[dict]) -> None:
        """Restore from the states every rank saved (resharded if the world size changed)."""


class ExternalDistillation(Distiller):
    def __init__(self, config: DistillConfig, teacher, task_type: TaskType):
        self.config, self.teacher, self.task_type = config, teacher, task_type

    def loss(self, outputs, batch):
        c = self.config
        t = self.task_type
        return t.distill_losses(t.distill_logits(outputs), t.distill_logits(self.teacher.outputs(batch)),
                                t.loss_labels(batch), False, c.alpha_ce, c.alpha_kd, c.temperature)

    def report(self):
        return {}


class SelfRegularization(Distiller):
    """PINS: distil towards the best-on-dev student so far, with per-example adaptive weights."""

    def __init__(self, config: DistillConfig, make_teacher: Callable[[], object], student: torch.nn.Module,
                 task_type: TaskType, external=None):
        self.config = config
        self.make_teacher = make_teacher
        self.student = student
        self.task_type = task_type
        self.teacher = external
        self.self_teacher = None

    @property
    def active_teacher(self):
        return self.self_teacher if self.self_teacher is not None else self.teacher

    def loss(self, outputs, batch):
        teacher = self.active_teacher
        if teacher is None:
            return {"loss": outputs.loss}
        c = self.config
        t = self.task_type
        return t.distill_losses(t.distill_logits(outputs), t.distill_logits(teacher.outputs(batch)),
                                t.loss_labels(batch), True, c.alpha_ce, c.alpha_kd, c.temperature)

    def on_evaluation(self, improved: bool) -> None:
        if not improved:
            return
        if self.self_teacher is None:
            self.self_teacher = self.make_teacher()
        self.self_teacher.copy_from(self.student)
        log.info("teacher updated from the student (update %d)", self.self_teacher.updates)

    def report(self):
        # teacher/alpha_mean is logged by the trainer with the other parts of the loss (``alpha``).
        return {"teacher/updates": float(self.self_teacher.updates if self.self_teacher else 0)}

    def state_dict(self) -> dict:
        return {"updates": self.self_teacher.updates if self.self_teacher else 0,
                "teacher": self.self_teacher.state_dict() if self.self_teacher else None}

    def load_state_dict(self, states: list[dict]) -> None:
        if states[0].get("teacher") is not None:
            if self.self_teacher is None:
                self.self_teacher = self.make_teacher()
            self.self_teacher.load_state_dict([s["teacher"] for s in states])
            self.self_teacher.updates = states[0]["updates"]
