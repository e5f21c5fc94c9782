"""Knowledge distillation from an external teacher (``distill.teacher``): 0.5 CE + 0.5 T^2 KL at T = 2,
with the teacher's logits equal to those of the same directory loaded by plain transformers."""

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification

from harness import run_distributed
from runs import tiny_config
from sparse_dist.distributed.env import init_distributed
from sparse_dist.trainer import Trainer

pytestmark = pytest.mark.distributed


def train_teacher(root: str) -> str:
    """A dense tiny BERT fine-tuned for a few steps and exported: the teacher."""
    env = init_distributed()
    config = tiny_config(f"{root}/teacher", world_size=env.world_size, training={"max_steps": 4},
                         checkpoint={"save_final_model": True})
    Trainer(config, env).train()
    return f"{root}/teacher/final/model"


def distil(root: str, teacher: str, stage: int) -> dict:
    env = init_distributed()
    config = tiny_config(f"{root}/student_z{stage}", world_size=env.world_size, zero={"stage": stage},
                         pruning={"method": "movement", "scope": "global", "target_remaining": 0.5},
                         distill={"teacher": teacher})
    trainer = Trainer(config, env)
    result = trainer.train()  # 3 steps; then the loss on a fixed batch, with the masks of the last update
    batch = trainer.task_data.collator([trainer.task_data.train[i] for i in range(4)])
    student = trainer.engine.module.eval()
    with torch.no_grad():
        outputs = student(**batch)
        parts = trainer.distiller.loss(outputs, batch)
        teacher_logits = trainer.distiller.teacher.logits(batch)
    student_logits = outputs.logits
    return {"loss": float(parts["loss"]), "student": student_logits, "teacher": teacher_logits,
            "labels": batch["labels"], "inputs": {k: v for k, v in batch.items() if k not in ("labels", "idx")},
            "final_loss_finite": all(torch.isfinite(torch.tensor(v)) for v in result.final_metrics.values()),
            "steps": result.steps}


@pytest.mark.parametrize("stage", [2, 3])
def test_external_teacher_loss_is_half_ce_half_kd_at_t2(stage, tmp_path):
    teacher_dir = run_distributed(train_teacher, 2, str(tmp_path))[0]
    reference = AutoModelForSequenceClassification.from_pretrained(teacher_dir).eval()
    for result in run_distributed(distil, 2, str(tmp_path), teacher_dir, stage):
        with torch.no_grad():
            expected_teacher = reference(**result["inputs"]).logits
        torch.testing.assert_close(result["teacher"], expected_teacher, rtol=1e-5, atol=1e-6)
        student, teacher, T = result["student"], result["teacher"], 2.0
        ce = F.cross_entropy(student, result["labels"])
        kl = F.kl_div(F.log_softmax(student / T, -1), F.softmax(teacher / T, -1), reduction="batchmean")
        assert result["loss"] == pytest.approx(float(0.5 * ce + 0.5 * T**2 * kl), rel=1e-5)
        assert result["steps"] == 3 and result["final_loss_finite"]
