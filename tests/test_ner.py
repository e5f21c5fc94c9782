"""NER on CoNLL-2003 (token classification): encoding, config rules, and pruned training on 2 ranks.

The distributed cases run tiny BERT on a slice of the real CoNLL-2003 files under ZeRO-2 and ZeRO-3 with a
pruning method, and check that the gathered evaluation (17 dev sentences on 2 ranks in batches of 4: rank 1
runs a filler batch whose outputs must be dropped) equals, prediction for prediction and metric for metric,
what one process computes over the whole dev set, that masks are the same on every rank and keep exactly
the scheduled number of weights, and that PINS' per-token self-regularization trains.
"""

import hashlib
import shutil

import pytest
import torch
import torch.distributed as dist

from harness import run_distributed
from runs import DATA_DIR, tiny_config
from sparse_dist.config import ConfigError, load_config
from sparse_dist.data.conll import CONLL2003_LABELS
from sparse_dist.data.load import check_data_source, load_split
from sparse_dist.data.sampler import eval_shard
from sparse_dist.distributed.env import init_distributed
from sparse_dist.pruning.export import full_masks
from sparse_dist.pruning.schedule import kept_count
from sparse_dist.tasks import get_task

TASK = "conll2003"
DEV = {"max_eval_examples": 17}
EVAL_BATCH = 4


def ner_config(root, world_size=1, **sections):
    data = {**DEV, **sections.pop("data", {})}
    return tiny_config(root, world_size=world_size, task=TASK, data=data, **sections)


# --- config, data, encoding ---------------------------------------------------------------------


def test_label_words_are_refused_naming_the_key_and_smp_gets_the_tag_head():
    base = [f"data.task={TASK}", f"data.local_dir={DATA_DIR}"]
    assert load_config(None, [*base, "pruning.method=smp", "pruning.scope=local"]).model.head == "classifier"
    with pytest.raises(ConfigError, match=r"^model\.head: task conll2003 .* has no label words"):
        load_config(None, [*base, "model.head=label_words"])
    assert load_config(None, base).model.head == "classifier"


def test_t5_is_refused_naming_the_key():
    from sparse_dist.models.build import check_model_for_task, load_checkpoint_config

    config = load_checkpoint_config("tiny-t5")
    with pytest.raises(ConfigError, match=r"^model\.name_or_path: tiny-t5 is a t5 .*needs an encoder"):
        check_model_for_task(config, get_task(TASK), "tiny-t5", "classifier")


def test_a_bad_line_is_one_config_error_before_ranks_start(tmp_path):
    directory = tmp_path / "conll2003"
    shutil.copytree(DATA_DIR / "conll2003", directory, ignore=shutil.ignore_patterns("train.txt"))
    (directory / "train.txt").write_text("EU NNP B-NP B-ORG\nrejects VBZ B-VP B-PERSON\n\n")
    with pytest.raises(ConfigError, match=r"^data\.local_dir: .*train\.txt: line 2: NER tag 'B-PERSON'"):
        check_data_source(get_task(TASK), str(tmp_path))
    check_data_source(get_task(TASK), str(DATA_DIR))  # the real files pass


def test_the_hub_route_names_the_local_files():
    from sparse_dist.data.load import DataError

    with pytest.raises(DataError, match=r"eriktks/conll2003:train: .*loading script.*data\.local_dir"):
        load_split(get_task(TASK), "train", None)


def test_labels_on_first_subword_and_predictions_back_to_words():
    from transformers import AutoTokenizer

    from sparse_dist.models.build import resolve_model_source

    task = get_task(TASK)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_source("tiny-bert"))
    raw = load_split(task, "validation", str(DATA_DIR), 5)
    train = task.type.encode_train(task, raw, tokenizer, "encoder", 48, 8)
    inputs, gold = task.type.encode_eval(task, raw, tokenizer, "encoder", 48)
    assert set(train.column_names) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    for example, tags in zip(train, raw["label"]):
        labelled = [label for label in example["labels"] if label != -100]
        assert labelled == tags[:len(labelled)] and example["labels"][0] == -100  # [CLS]
    assert gold[0] == [CONLL2003_LABELS[t] for t in raw["label"][0]]
    batch = task.type.collator(tokenizer, "encoder")([inputs[i] for i in range(3)])
    assert batch["word_ids"].shape == batch["input_ids"].shape and batch["idx"].tolist() == [0, 1, 2]

    class Oracle(torch.nn.Module):  # logits that put each first sub-word on its gold tag
        def forward(self, input_ids, attention_mask, token_type_ids):
            logits = torch.zeros(*input_ids.shape, len(CONLL2003_LABELS))
            for row, ids in enumerate(word_ids):
                for position, word in enumerate(ids):
                    if word >= 0:
                        logits[row, position, raw["label"][row][word]] = 1.0
            return type("Out", (), {"logits": logits})

    word_ids = batch["word_ids"].tolist()
    predicted = task.type.predict_batch(task, Oracle(), {k: v for k, v in batch.items() if k != "idx"},
                                        "encoder", None)
    # Words cut by max_seq_length (this tokenizer spells words out) are predicted O, the rest as gold.
    assert predicted == [[tag if i in ids else "O" for i, tag in enumerate(g)] for g, ids in zip(gold, word_ids)]
    assert predicted != gold[:3]  # an entity was cut here: it stays in the gold and counts as missed
    assert task.type.score(task, gold[:3], gold[:3])["f1"] == 1.0


# --- two ranks, ZeRO-2 and ZeRO-3, pruning ------------------------------------------------------


def predict_every_shard(trainer, dev) -> list:
    """Every dev prediction computed on this rank alone, in the very batches the ranks use (so the same
    floating-point sums), in dataset order: what one process holding the model would predict."""
    env, task = trainer.env, trainer.task_data.task
    out = {}
    for rank in range(env.world_size):
        for indices in eval_shard(len(dev.inputs), rank, env.world_size, EVAL_BATCH):
            batch = trainer.task_data.collator([dev.inputs[i] for i in indices])
            idx = batch.pop("idx").tolist()
            predictions = task.type.predict_batch(task, trainer.engine.module,
                                                  {k: v.to(env.device) for k, v in batch.items()}, "encoder", None)
            out.update(zip(idx, predictions))
    return [out[i] for i in range(len(dev.inputs))]


def pruned_runs(stages: list[int], root: str) -> dict:
    from sparse_dist.trainer import Trainer

    env = init_distributed()
    out = {}
    for stage in stages:
        config = ner_config(f"{root}/z{stage}_ws{env.world_size}", world_size=env.world_size,
                            training={"global_batch_size": 8, "micro_batch_size": 2, "max_steps": 4},
                            eval={"micro_batch_size": EVAL_BATCH}, zero={"stage": stage},
                            pruning={"method": "magnitude", "scope": "global", "target_remaining": 0.4,
                                     "prune_every_steps": 1, "final_warmup_steps": 1})
        trainer = Trainer(config, env)
        dev = trainer.task_data.dev[0]
        before = trainer.evaluator.predict(trainer.engine.module, dev)
        result = trainer.train()
        model = trainer.engine.module
        gathered = trainer.evaluator.predict(model, dev)
        alone = predict_every_shard(trainer, dev)
        model.train()
        metrics = trainer.evaluator.evaluate(model)
        masks = full_masks(trainer.pruner, trainer.comm)
        sites = trainer.pruner.sites
        out[stage] = {"before": before, "gathered": gathered, "alone": alone, "metrics": metrics,
                      "alone_metrics": trainer.task_data.task.type.score(trainer.task_data.task, alone,
                                                                                   dev.gold),
                      "final": result.final_metrics, "losses": [loss for _, loss in result.losses],
                      "kept": sum(int(masks[s.name].sum()) for s in sites), "size": sum(s.numel for s in sites),
                      "digest": hashlib.sha256(b"".join(masks[s.name].numpy().tobytes() for s in sites)).hexdigest()}
        dist.barrier()
    return out


@pytest.mark.distributed
@pytest.mark.slow  # 2-3 minutes on 2 shared cores: 1 and 2 ranks, ZeRO-2 and ZeRO-3
def test_two_ranks_zero2_zero3_evaluate_exactly_as_one_process_with_exact_masks(tmp_path):
    reference = run_distributed(pruned_runs, 1, [0], str(tmp_path))[0][0]
    ranks = run_distributed(pruned_runs, 2, [2, 3], str(tmp_path))
    assert len(reference["before"]) == DEV["max_eval_examples"]
    assert len({tag for sentence in reference["before"] for tag in sentence}) > 1  # not one tag everywhere
    for stage in (2, 3):
        for got in (rank[stage] for rank in ranks):
            assert got["before"] == reference["before"], f"ZeRO-{stage}: untrained predictions differ"
            assert got["gathered"] == got["alone"], f"ZeRO-{stage}: gathered predictions differ"
            assert got["metrics"] == got["alone_metrics"] == got["final"], f"ZeRO-{stage}: metrics differ"
            assert set(got["metrics"]) == {"f1", "precision", "recall", "accuracy"}
            assert got["kept"] == kept_count(0.4, got["size"]), f"ZeRO-{stage}: kept count"
            assert got["losses"] == pytest.approx(reference["losses"], rel=1e-4), f"ZeRO-{stage}: losses"
        assert ranks[0][stage]["digest"] == ranks[1][stage]["digest"], f"ZeRO-{stage}: masks differ across ranks"


def pins_self_regularization(root: str) -> dict:
    from sparse_dist.trainer import Trainer

    env = init_distributed()
    config = ner_config(root, world_size=env.world_size,
                        training={"global_batch_size": 8, "micro_batch_size": 2, "max_steps": 4},
                        optimizer={"lr": 2e-2}, eval={"eval_every_steps": 1, "micro_batch_size": EVAL_BATCH},
                        zero={"stage": 2},
                        pruning={"method": "pins", "scope": "global", "target_remaining": 0.5, "window_steps": 2,
                                 "prune_every_steps": 2, "final_warmup_steps": 1},
                        distill={"self_regularization": True})
    trainer = Trainer(config, env)
    parts = []
    distill_loss = trainer.distiller.loss

    def spy(outputs, batch):
        result = distill_loss(outputs, batch)
        parts.append({k: float(v) for k, v in result.items()})
        return result

    trainer.distiller.loss = spy
    result = trainer.train()
    masks = full_masks(trainer.pruner, trainer.comm)
    return {"parts": parts, "updates": trainer.distiller.report()["teacher/updates"],
            "kept": sum(int(masks[s.name].sum()) for s in trainer.pruner.sites),
            "size": sum(s.numel for s in trainer.pruner.sites), "losses": [loss for _, loss in result.losses]}


@pytest.mark.distributed
@pytest.mark.slow  # about 2 minutes on 2 shared cores
def test_pins_self_regularization_distils_per_token_on_two_ranks(tmp_path):
    ranks = run_distributed(pins_self_regularization, 2, str(tmp_path))
    for got in ranks:
        assert got["updates"] >= 1
        distilled = [p for p in got["parts"] if "kd" in p]
        assert distilled and all(0 <= p["alpha"] <= 1 and p["kd"] == p["kd"] for p in distilled)
        assert got["kept"] == kept_count(0.5, got["size"])
    assert ranks[0]["losses"] == ranks[1]["losses"]


# --- the real launcher --------------------------------------------------------------------------


@pytest.mark.e2e
def test_deepspeed_launcher_zero3_tiny_ner(tmp_path, data_dir):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from transformers import AutoModelForTokenClassification

    from sparse_dist.distributed.env import free_port

    repo, run_dir = Path(__file__).resolve().parents[1], tmp_path / "run"
    command = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()),
               "launch/train.py", "--config", "configs/tiny_ner_conll.yaml", f"job.run_dir={run_dir}",
               f"data.local_dir={data_dir}", "zero.stage=3", "training.max_steps=4", "eval.eval_every_steps=2",
               "pruning.final_warmup_steps=1", "metrics.progress_bar=false"]
    done = subprocess.run(command, cwd=repo, env=os.environ.copy(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    assert "tiny-bert on conll2003, 4 steps, 2 rank(s), ZeRO-3" in done.stdout
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("eval/f1")] == [2, 4]
    model = AutoModelForTokenClassification.from_pretrained(run_dir / "final" / "model")
    assert model.config.id2label[1] == "B-PER"
    prunable = [m.weight for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "classifier" not in n]
    zeros = sum(int((w == 0).sum()) for w in prunable) / sum(w.numel() for w in prunable)
    assert zeros == pytest.approx(0.5, abs=0.01)  # the encoder's linear weights at 50%; the tag head is dense

