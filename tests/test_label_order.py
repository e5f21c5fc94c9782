"""A fine-tuned classifier whose labels are listed in another order than the task's, used as the model or
as the teacher: its outputs are matched to the task's classes by name, or refused with a clear line."""

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertForSequenceClassification

from harness import run_distributed
from sparse_dist.config import ConfigError, ModelConfig
from sparse_dist.models.build import build_model
from sparse_dist.models.label_order import compute_label_order
from sparse_dist.models.tiny import tiny_checkpoint
from sparse_dist.tasks import get_task

SENTENCES = ["a charming and often affecting journey", "the movie is terrible", "great story", "not good",
             "one of the best films", "bad", "it is a good film to see", "the city was great"]


def fine_tuned(directory: Path, labels: dict[int, str]) -> Path:
    """A tiny BERT sequence classifier whose head is trained-looking (random, seeded) and named ``labels``."""
    torch.manual_seed(3)
    model = BertForSequenceClassification.from_pretrained(tiny_checkpoint("tiny-bert"), num_labels=len(labels),
                                                          id2label=labels, label2id={v: k for k, v in labels.items()})
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint("tiny-bert"))
    with torch.no_grad():
        model.classifier.weight.normal_(0, 1.0)
        model.classifier.bias.zero_()
        logits = model.eval()(**tokenizer(SENTENCES, padding=True, return_tensors="pt")).logits
        model.classifier.bias.copy_(-logits.median(0).values)  # centred, so that more than one class is predicted
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def inputs(directory: Path) -> dict:
    return dict(AutoTokenizer.from_pretrained(directory)(SENTENCES, padding=True, return_tensors="pt"))


def predicted_names(model, config_id2label, batch) -> list[str]:
    with torch.no_grad():
        return [config_id2label[i] for i in model.eval()(**batch).logits.argmax(-1).tolist()]


def test_a_classifier_fine_tuned_with_swapped_labels_predicts_the_same_classes(tmp_path):
    checkpoint = fine_tuned(tmp_path / "swapped", {0: "positive", 1: "negative"})
    reference = AutoModelForSequenceClassification.from_pretrained(checkpoint)
    batch = inputs(checkpoint)
    expected = predicted_names(reference, reference.config.id2label, batch)
    assert len(set(expected)) == 2  # both classes occur, so an inversion cannot go unseen

    task = get_task("sst2")
    built = build_model(ModelConfig(name_or_path=str(checkpoint), head="classifier"), task,
                        {"zero_optimization": {"stage": 0}}, seed=0)
    assert predicted_names(built.model, dict(enumerate(task.label_names)), batch) == expected
    with torch.no_grad():
        torch.testing.assert_close(built.model.eval()(**batch).logits, reference(**batch).logits[:, [1, 0]])


def test_label_order_by_name():
    sst2, mnli = get_task("sst2"), get_task("mnli")
    assert compute_label_order(("negative", "positive"), sst2, "model.name_or_path", "m") is None
    assert compute_label_order(("POSITIVE", "NEGATIVE"), sst2, "model.name_or_path", "m") == [1, 0]
    # DynaBERT's MNLI teachers: contradiction, entailment, neutral.
    assert compute_label_order(("contradiction", "entailment", "neutral"), mnli, "distill.teacher", "t") == [1, 2, 0]
    assert compute_label_order(("LABEL_0", "LABEL_1"), sst2, "model.name_or_path", "m") is None  # nothing to match
    assert compute_label_order(None, sst2, "model.name_or_path", "m") is None  # not a classifier


@pytest.mark.parametrize("labels, message", [
    (("negative", "neutral", "positive"), "distill.teacher: t is a classifier of 3 label(s) (negative, neutral, "
                                          "positive); task sst2 needs 2: negative, positive"),
    (("good", "bad"), "distill.teacher: t was fine-tuned with labels (good, bad), which are not the labels of task "
                      "sst2 (negative, positive); cannot tell which output is which class"),
])
def test_unmatchable_labels_are_refused_with_the_key_named(labels, message):
    with pytest.raises(ConfigError) as caught:
        compute_label_order(labels, get_task("sst2"), "distill.teacher", "t")
    assert str(caught.value) == message


def offloaded_teacher_logits(checkpoint: str, batch: dict) -> torch.Tensor:
    """The teacher as training builds it: ZeRO-3 partitioned in CPU memory, through build_model."""
    from sparse_dist.distill.teacher import OffloadedTeacher

    task = get_task("sst2")
    teacher_cfg = ModelConfig(name_or_path=checkpoint, head="classifier")
    student_ds = {"train_micro_batch_size_per_gpu": len(SENTENCES), "bf16": {"enabled": False}}
    teacher = OffloadedTeacher(lambda ds: build_model(teacher_cfg, task, ds, 0, key="distill.teacher"), student_ds,
                               on_gpu=False)
    return teacher.logits(batch)


@pytest.mark.distributed
def test_a_teacher_with_swapped_labels_is_remapped_under_zero3(tmp_path):
    checkpoint = fine_tuned(tmp_path / "swapped", {0: "positive", 1: "negative"})
    reference = AutoModelForSequenceClassification.from_pretrained(checkpoint).eval()
    batch = inputs(checkpoint)
    logits = run_distributed(offloaded_teacher_logits, 1, str(checkpoint), batch)[0]
    with torch.no_grad():
        torch.testing.assert_close(logits, reference(**batch).logits[:, [1, 0]])
