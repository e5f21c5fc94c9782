"""Pick the distiller for a config and build its teachers."""

from __future__ import annotations

from dataclasses import replace

from sparse_dist.config import DistillConfig, ModelConfig
from sparse_dist.distill.distiller import Distiller, ExternalDistillation, SelfRegularization
from sparse_dist.distill.teacher import MaskTeacher, OffloadedTeacher
from sparse_dist.models.build import build_model, teacher_head
from sparse_dist.tasks import TaskSpec


def build_distiller(config: DistillConfig, model_cfg: ModelConfig, task: TaskSpec, built, engine, pruner,
                    ds_config: dict, comm, env, seed: int) -> Distiller:
    """No distillation, an external teacher, or self-regularization (PINS). All ranks call."""
    task_type = task.type  # which logits are compared, and with which losses
    if built.family.predicts_next_token:
        task_type = NextTokenDistillation(task_type)

    def offloaded(name_or_path: str, head: str, key: str) -> OffloadedTeacher:
        teacher_cfg = replace(model_cfg, name_or_path=name_or_path, head=head, gradient_checkpointing=False)
        if key == "distill.teacher":  # an external teacher is always a trained checkpoint, whatever the student's init
            teacher_cfg = replace(teacher_cfg, init="pretrained", tokenizer=None)
        return OffloadedTeacher(lambda ds: build_model(teacher_cfg, task, ds, seed, key=key), ds_config, env.on_gpu)

    external = None
    if config.teacher:
        external = offloaded(config.teacher, teacher_head(config.teacher, model_cfg.head), "distill.teacher")
    if not config.self_regularization:
        return ExternalDistillation(config, external, task_type) if external else Distiller()
    if pruner.freezes_weights:  # SMP's encoder never changes: a teacher is an older mask (and a task head, today's)
        def make_teacher():
            return MaskTeacher(engine.module, pruner, comm)
    else:
        def make_teacher():
            return offloaded(model_cfg.name_or_path, model_cfg.head, "model.name_or_path")
    return SelfRegularization(config, make_teacher, built.model, task_type, external=external)


class NextTokenDistillation:
    """A task type's distillation for a causal LM: the logits at position t are compared on the label at
    t + 1 (the shift the model's own loss makes), so teacher and student are matched on the target tokens
    they predict, and the prompt's -100 labels drop out as they do from the task loss."""

    def __init__(self, task_type):
        self.task_type = task_type

    def distill_logits(self, outputs):
        return self.task_type.distill_logits(outputs)

    def distill_losses(self, student, teacher, labels, adaptive, alpha_ce, alpha_kd, temperature):
        return self.task_type.distill_losses(student[:, :-1], teacher[:, :-1], labels[:, 1:], adaptive, alpha_ce,
                                             alpha_kd, temperature)
