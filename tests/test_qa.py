"""Extractive QA (SQuAD) end to end: windows, training with pruning on 2 ranks, and exact distributed evaluation.

A tiny BERT reads SQuAD questions in 128-token windows with a 32-token stride, so every question has several
windows; evaluation deals windows to ranks round-robin, so a question's windows land on both ranks, and the
gathered answers must be the single-process answers exactly. Training runs magnitude pruning (ZeRO-2) and
PINS with self-regularization on start and end distributions (ZeRO-3): the kept count is exact and the masks
are the same on every rank.
"""

import hashlib
import math

import numpy as np
import pytest
import torch
import torch.distributed as dist

from harness import run_distributed
from runs import DATA_DIR, tiny_config
from sparse_dist.config import ConfigError, load_config
from sparse_dist.data.extractive_qa import postprocess_qa_predictions
from sparse_dist.distributed.env import init_distributed
from sparse_dist.pruning.export import full_masks
from sparse_dist.pruning.schedule import kept_count
from sparse_dist.tasks.extractive_qa import MAX_ANSWER_LENGTH, N_BEST_SIZE
from sparse_dist.trainer import Trainer

QA_DATA = {"max_seq_length": 128, "doc_stride": 32, "max_train_examples": 12, "max_eval_examples": 3}
QA_TRAINING = {"global_batch_size": 8, "micro_batch_size": 2, "max_steps": 3}


def qa_config(root, world_size: int, **sections):
    sections = {"data": QA_DATA, "training": QA_TRAINING, **sections}
    return tiny_config(root, world_size=world_size, task="squad", **sections)


# --- config and model checks (no ranks) -----------------------------------------------------------------------


def test_squad_refuses_t5_naming_the_key(tmp_path):
    from sparse_dist.models.build import check_model_for_task, load_checkpoint_config
    from sparse_dist.tasks import get_task

    with pytest.raises(ConfigError, match=r"^model\.name_or_path: .*needs an encoder"):
        check_model_for_task(load_checkpoint_config("tiny-t5"), get_task("squad"), "tiny-t5", "classifier")


def test_squad_refuses_label_words_and_smp_gets_the_qa_head():
    base = ["data.task=squad", f"data.local_dir={DATA_DIR}"]
    assert load_config(None, [*base, "pruning.method=smp", "pruning.scope=per_type"]).model.head == "classifier"
    with pytest.raises(ConfigError, match=r"^model\.head: task squad \(extractive_qa\) has no label words"):
        load_config(None, [*base, "model.head=label_words"])
    assert load_config(None, base).model.head == "classifier"


def test_doc_stride_must_be_shorter_than_the_window(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.doc_stride"):
        load_config(None, ["data.task=squad", "data.max_seq_length=128", "data.doc_stride=128"])


def test_a_misplaced_answer_is_one_config_line_before_ranks_start(tmp_path):
    import json

    from sparse_dist.preflight import check_run

    squad = tmp_path / "data" / "squad"
    squad.mkdir(parents=True)
    article = {"title": "T", "paragraphs": [{"context": "The cat sat.", "qas": [
        {"id": "q1", "question": "Who sat?", "answers": [{"text": "cat", "answer_start": 0}]}]}]}
    for name in ("train-v1.1-first50articles.json", "dev-v1.1.json"):
        (squad / name).write_text(json.dumps({"data": [article]}))
    config = qa_config(tmp_path / "run", 1, data={**QA_DATA, "local_dir": str(tmp_path / "data")})
    with pytest.raises(ConfigError, match=r"^data\.local_dir: .*question q1: answer 0 'cat' is not at answer_start"):
        check_run(config)


# --- distributed ----------------------------------------------------------------------------------------------


def evaluate_fresh_model(root: str, stage: int) -> dict:
    """The untrained model's window logits and metrics on the dev questions, and which rank read which window."""
    env = init_distributed()
    trainer = Trainer(qa_config(root, env.world_size, zero={"stage": stage}, eval={"micro_batch_size": 1}), env)
    dev = trainer.task_data.dev[0]
    predictions = trainer.evaluator.predict(trainer.engine.module, dev)
    metrics = trainer.evaluator.evaluate(trainer.engine.module)
    answers = postprocess_qa_predictions(dev.gold.examples, dev.gold.windows, np.stack([s for s, _ in predictions]),
                                         np.stack([e for _, e in predictions]), N_BEST_SIZE, MAX_ANSWER_LENGTH)
    return {"windows": len(predictions), "example_id": dev.gold.windows["example_id"], "metrics": metrics,
            "answers": answers, "digest": hashlib.sha256(b"".join(s.tobytes() + e.tobytes()
                                                                  for s, e in predictions)).hexdigest()}


@pytest.mark.distributed
@pytest.mark.slow  # 4-6 minutes on 2 shared cores: one and two ranks, every window forwarded on its own
@pytest.mark.parametrize("stage", [2, 3])
def test_distributed_evaluation_equals_single_process_exactly(stage, tmp_path):
    single = run_distributed(evaluate_fresh_model, 1, str(tmp_path / "ws1"), stage)[0]
    both = run_distributed(evaluate_fresh_model, 2, str(tmp_path / "ws2"), stage)
    # Windows go to ranks round-robin (r, r+2, ...): a question with windows i and i+1 is on both ranks.
    ids = single["example_id"]
    assert any(ids[i] == ids[i + 1] for i in range(len(ids) - 1))
    assert single["windows"] % 2 == 1  # rank 1 runs one padding batch, whose outputs must be dropped
    for rank in both:
        assert rank["windows"] == single["windows"]
        assert rank["digest"] == single["digest"]
        assert rank["answers"] == single["answers"]
        assert rank["metrics"] == single["metrics"]
    assert set(single["metrics"]) == {"exact_match", "f1"}


def train_and_prune(root: str, stage: int, pruning: dict, distill: dict) -> dict:
    env = init_distributed()
    config = qa_config(root, env.world_size, zero={"stage": stage}, pruning=pruning, distill=distill,
                       eval={"eval_every_steps": 1})
    trainer = Trainer(config, env)
    result = trainer.train()
    pruner = trainer.pruner
    masks = full_masks(pruner, trainer.comm)
    digest = hashlib.sha256(b"".join(masks[s.name].numpy().tobytes() for s in pruner.sites)).hexdigest()
    dist.barrier()
    return {"losses": [loss for _, loss in result.losses], "metrics": result.final_metrics, "digest": digest,
            "kept": sum(int(masks[s.name].sum()) for s in pruner.sites), "total": sum(s.numel for s in pruner.sites),
            "target": pruner.target, "teacher": distill and trainer.distiller.report().get("teacher/updates")}


@pytest.mark.distributed
@pytest.mark.parametrize("stage, pruning, distill", [
    (2, {"method": "magnitude", "scope": "global", "target_remaining": 0.5, "prune_every_steps": 1}, {}),
    (3, {"method": "pins", "scope": "global", "target_remaining": 0.5, "window_steps": 1, "prune_every_steps": 1},
     {"self_regularization": True}),
], ids=["magnitude-zero2", "pins-selfreg-zero3"])
def test_two_ranks_train_and_prune_squad(stage, pruning, distill, tmp_path):
    ranks = run_distributed(train_and_prune, 2, str(tmp_path), stage, pruning, distill)
    first = ranks[0]
    assert first["target"] == pytest.approx(0.5)
    assert first["kept"] == kept_count(first["target"], first["total"])
    assert all(rank["digest"] == first["digest"] for rank in ranks)  # the same masks on every rank
    assert all(rank["metrics"] == first["metrics"] for rank in ranks)
    assert all(math.isfinite(loss) for loss in first["losses"]) and len(first["losses"]) == QA_TRAINING["max_steps"]
    assert set(first["metrics"]) == {"exact_match", "f1"}
    if distill:
        assert first["teacher"] >= 1  # the first evaluation made a teacher; later steps distilled from it


def test_qa_distillation_compares_start_and_end_distributions():
    from types import SimpleNamespace

    from sparse_dist.tasks.extractive_qa import EXTRACTIVE_QA

    torch.manual_seed(0)
    start, end = torch.randn(3, 10), torch.randn(3, 10)
    batch = {"start_positions": torch.tensor([1, 2, 0]), "end_positions": torch.tensor([4, 2, 0])}
    logits = EXTRACTIVE_QA.distill_logits(SimpleNamespace(start_logits=start, end_logits=end))
    labels = EXTRACTIVE_QA.loss_labels(batch)
    parts = EXTRACTIVE_QA.distill_losses(logits, logits.clone(), labels, False, 1.0, 0.0, 2.0)
    ce = (torch.nn.functional.cross_entropy(start, batch["start_positions"])
          + torch.nn.functional.cross_entropy(end, batch["end_positions"])) / 2  # transformers' QA loss
    assert torch.allclose(parts["ce"], ce)
    assert float(parts["kd"]) == pytest.approx(0.0, abs=1e-6)
    adaptive = EXTRACTIVE_QA.distill_losses(logits, logits.clone(), labels, True, 0.0, 0.0, 1.0)
    assert torch.isfinite(adaptive["loss"])


def test_squad_files_exist():
    assert (DATA_DIR / "squad" / "dev-v1.1.json").is_file()


def test_n_best_and_max_answer_length_are_config_keys_that_reach_post_processing():
    from transformers import AutoTokenizer

    from sparse_dist.data.load import load_split
    from sparse_dist.models.build import resolve_model_source
    from sparse_dist.tasks import get_task

    base = ["data.task=squad", f"data.local_dir={DATA_DIR}"]
    for key in ("n_best", "max_answer_length"):
        with pytest.raises(ConfigError, match=rf"^data\.{key}: must be >= 1, got 0"):
            load_config(None, [*base, f"data.{key}=0"])
    config = load_config(None, base)
    assert (config.data.n_best, config.data.max_answer_length) == (N_BEST_SIZE, MAX_ANSWER_LENGTH) == (20, 30)

    task = get_task("squad")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_source("tiny-bert"))
    raw = load_split(task, "validation", str(DATA_DIR), 1)  # "Denver Broncos": more than one token
    answer = raw[0]["answers"]
    first, last = answer["answer_start"][0], answer["answer_start"][0] + len(answer["text"][0])

    def scored(**postprocess):
        _, gold = task.type.encode_eval(task, raw, tokenizer, "encoder", 128, doc_stride=32, **postprocess)
        predictions = []
        for offsets in gold.windows["offset_mapping"]:  # logits that point at the gold span in every window
            start, end = np.zeros(len(offsets), np.float32), np.zeros(len(offsets), np.float32)
            for token, offset in enumerate(offsets):
                start[token] += 10.0 * (offset is not None and offset[0] == first)
                end[token] += 10.0 * (offset is not None and offset[1] == last)
            predictions.append((start, end))
        return gold, task.type.score(task, predictions, gold)

    gold, metrics = scored()
    assert (gold.n_best, gold.max_answer_length) == (20, 30) and metrics["exact_match"] == 100.0
    gold, metrics = scored(n_best=3, max_answer_length=1)  # the gold span is longer than one token
    assert (gold.n_best, gold.max_answer_length) == (3, 1) and metrics["exact_match"] == 0.0
