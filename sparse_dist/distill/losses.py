"""Distillation losses, as pure functions of student logits, teacher logits and labels.

Shapes: classification ``(B, C)`` logits with ``(B,)`` labels; regression ``(B, 1)`` predictions with
``(B,)`` targets; text-to-text ``(B, L, V)`` logits with ``(B, L)`` labels, ``-100`` marking padding
(excluded everywhere, every non-padding target token counting as one example).

Every loss here, like the models' own task losses, is a mean over the :func:`loss_units` of its batch:
the trainer weights each micro-batch by its share of the units of the whole global batch, so that a
step's loss is the mean over all of them whatever the micro-batch size and the number of ranks.

- :func:`standard_kd`: ``a_ce * CE + a_kd * T^2 * KL(softmax(z_t / T) || softmax(z_s / T))``, the mean
  over examples (or tokens); MSE to the teacher's prediction for regression.
- :func:`adaptive_kd` (PINS self-regularization): per example ``alpha = 1 - H(softmax(z_s)) / log C``
  from the detached student logits, ``L = mean[alpha * T^2 * softCE(softmax(z_t/T), log_softmax(z_s/T))
  + (1 - alpha) * CE]``. A regression has no class distribution to be confident about: alpha = 1/2.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
"""Label of a padding position in a text-to-text target (what the collator pads with)."""


def loss_units(labels: torch.Tensor) -> int:
    """How many terms a loss over this batch averages: non-padding target tokens for ``(B, L)`` text-to-text
    labels, examples for ``(B,)`` class ids or scores."""
    if labels.dim() == 2:
        return int((labels != IGNORE_INDEX).sum())
    return labels.shape[0]


def _flatten(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor):
    """Classification and text-to-text as one case: rows of logits, labels, and which rows count."""
    if student.dim() == 3:
        student, teacher, labels = student.flatten(0, 1), teacher.flatten(0, 1), labels.flatten()
    keep = labels != IGNORE_INDEX
    return student[keep].float(), teacher[keep].float(), labels[keep]


def standard_kd(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, regression: bool,
                alpha_ce: float, alpha_kd: float, temperature: float) -> dict[str, torch.Tensor]:
    """{"loss", "ce", "kd"}: fixed-weight distillation from an external teacher."""
    if regression:
        prediction = student.squeeze(-1).float()
        ce = F.mse_loss(prediction, labels.float())
        kd = F.mse_loss(prediction, teacher.squeeze(-1).float())
    else:
        s, t, y = _flatten(student, teacher, labels)
        ce = F.cross_entropy(s, y)
        kd = temperature**2 * F.kl_div(F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1),
                                       log_target=True, reduction="batchmean")
    return {"loss": alpha_ce * ce + alpha_kd * kd, "ce": ce.detach(), "kd": kd.detach()}


def adaptive_kd(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, regression: bool,
                temperature: float) -> dict[str, torch.Tensor]:
    """{"loss", "ce", "kd", "alpha"}: PINS' self-regularization loss with per-example confidence."""
    if regression:
        prediction = student.squeeze(-1).float()
        ce = F.mse_loss(prediction, labels.float())
        kd = F.mse_loss(prediction, teacher.squeeze(-1).float())
        alpha = torch.tensor(0.5)
        return {"loss": alpha * kd + (1 - alpha) * ce, "ce": ce.detach(), "kd": kd.detach(), "alpha": alpha}
    s, t, y = _flatten(student, teacher, labels)
    classes = s.shape[-1]
    with torch.no_grad():
        probabilities = F.softmax(s, -1)
        entropy = -(probabilities * F.log_softmax(s, -1)).sum(-1)
        alpha = 1 - entropy / math.log(classes)
    ce = F.cross_entropy(s, y, reduction="none")
    kd = -temperature**2 * (F.softmax(t / temperature, -1) * F.log_softmax(s / temperature, -1)).sum(-1)
    loss = (alpha * kd + (1 - alpha) * ce).mean()
    return {"loss": loss, "ce": ce.mean().detach(), "kd": kd.mean().detach(), "alpha": alpha.mean()}
