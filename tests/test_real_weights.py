"""The real all-MiniLM-L6-v2 learns real data on 2 CPU ranks under ZeRO-2: SST-2 well above chance, CoNLL-2003
entity F1 well above the majority tag's, SQuAD F1 well above zero, each within a few dozen steps."""

import pytest

from harness import run_distributed
from sparse_dist.config import load_config
from sparse_dist.distributed.env import init_distributed
from sparse_dist.trainer import Trainer

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def fine_tune_minilm(run_dir: str, data_dir: str) -> dict:
    env = init_distributed()
    config = load_config("configs/minilm_sst2.yaml", [
        f"job.run_dir={run_dir}", f"data.local_dir={data_dir}", "data.max_train_examples=960",
        "data.max_eval_examples=256", "training.max_steps=30", "optimizer.warmup_steps=3", "optimizer.lr=2e-4",
        "eval.eval_every_steps=0", "checkpoint.save_every_steps=0", "checkpoint.save_final_model=false",
        "metrics.progress_bar=false"], world_size=env.world_size)
    return Trainer(config, env).train().final_metrics


def test_minilm_sst2_well_above_chance(tmp_path, data_dir):
    metrics = run_distributed(fine_tune_minilm, 2, str(tmp_path), str(data_dir))
    assert metrics[0] == metrics[1]
    # Chance is 0.5 (the dev set is balanced); 0.7695 measured (30 steps; at lr 1e-4 they reach 0.6914).
    assert metrics[0]["accuracy"] >= 0.70, metrics


def smp_prune_minilm(run_dir: str, data_dir: str) -> tuple[dict, dict]:
    """The demo's SMP-S run (configs/smp_minilm_sst2.yaml) at 50% remaining, on a smaller budget."""
    env = init_distributed()
    config = load_config("configs/smp_minilm_sst2.yaml", [
        f"job.run_dir={run_dir}", f"data.local_dir={data_dir}", "data.max_train_examples=2000",
        "data.max_eval_examples=256", "training.max_steps=80", "pruning.final_warmup_steps=20",
        "eval.eval_every_steps=0", "checkpoint.save_every_steps=0", "checkpoint.save_final_model=false",
        "metrics.progress_bar=false"], world_size=env.world_size)
    result = Trainer(config, env).train()
    return result.final_metrics, result.sparsity


def test_smp_s_minilm_sst2_at_half_the_weights_well_above_chance(tmp_path, data_dir):
    ranks = run_distributed(smp_prune_minilm, 2, str(tmp_path), str(data_dir))
    (metrics, sparsity), other = ranks[0], ranks[1]
    assert other == ranks[0]
    # SMP-S budgets are exact per matrix type; their sum is half of the prunable weights to rounding.
    assert sparsity["remaining"] == pytest.approx(0.5, abs=1e-6), sparsity
    # Chance is 0.5; frozen weights, only the mask learned. 0.6992 measured in these 80 steps (0.7109 in 100; 0.5117
    # in 60, so the budget is not cut further).
    assert metrics["accuracy"] >= 0.65, metrics


def fine_tune_minilm_on(config_path: str, run_dir: str, data_dir: str, overrides: list[str]) -> dict:
    """Dense fine-tuning of the task head and encoder from ``config_path`` on a small budget; the final dev
    metrics, and those of the majority answer where the task has one (every word tagged O)."""
    env = init_distributed()
    config = load_config(config_path, [
        f"job.run_dir={run_dir}", f"data.local_dir={data_dir}", "pruning.method=none",
        "distill.self_regularization=false", "training.global_batch_size=16", "training.micro_batch_size=8",
        "optimizer.lr=3e-4", "optimizer.warmup_steps=4", "eval.eval_every_steps=0", "checkpoint.save_every_steps=0",
        "checkpoint.save_final_model=false", "metrics.progress_bar=false", "metrics.log_every_steps=10", *overrides],
        world_size=env.world_size)
    trainer = Trainer(config, env)
    dev = trainer.task_data.dev[0]
    task = trainer.task_data.task
    majority = (task.type.score(task, [["O"] * len(words) for words in dev.gold], dev.gold)
                if task.name == "conll2003" else None)
    return {"final": trainer.train().final_metrics, "majority": majority}


def test_minilm_conll2003_entity_f1_well_above_the_majority_tag(tmp_path, data_dir):
    ranks = run_distributed(fine_tune_minilm_on, 2, "configs/minilm_conll.yaml", str(tmp_path), str(data_dir),
                            ["data.max_seq_length=128", "data.max_train_examples=2000", "data.max_eval_examples=200",
                             "training.max_steps=40"])
    assert ranks[0] == ranks[1]
    final, majority = ranks[0]["final"], ranks[0]["majority"]
    # Tagging every word O (the majority tag: 78.0% of the words of these 200 sentences) finds no entity.
    assert majority["f1"] == 0.0 and majority["accuracy"] == pytest.approx(0.7804, abs=1e-4), majority
    assert final["f1"] >= majority["f1"] + 0.3, final  # 0.42 measured on 2 ranks


def test_minilm_squad_f1_well_above_zero(tmp_path, data_dir):
    ranks = run_distributed(fine_tune_minilm_on, 2, "configs/minilm_squad.yaml", str(tmp_path), str(data_dir),
                            ["data.max_seq_length=128", "data.doc_stride=48", "data.max_train_examples=1000",
                             "data.max_eval_examples=100", "training.max_steps=40"])
    assert ranks[0] == ranks[1]
    # Percent (official v1.1 F1). The quality benchmark's dense SQuAD run on this budget (seed 1) reached 13.0.
    assert ranks[0]["final"]["f1"] >= 5.0, ranks[0]["final"]
