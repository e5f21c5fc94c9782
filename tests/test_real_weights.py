"""The real all-MiniLM-L6-v2 learns SST-2 (real data) well above chance, on 2 CPU ranks under ZeRO-2."""

import pytest
from harness import run_distributed

from sparse_dist.config import load_config
from sparse_dist.distributed.env import init_distributed
from sparse_dist.trainer import Trainer

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def fine_tune_minilm(run_dir: str, data_dir: str) -> dict:
    env = init_distributed()
    config = load_config("configs/minilm_sst2.yaml", [
        f"job.run_dir={run_dir}", f"data.local_dir={data_dir}", "data.max_train_examples=2000",
        "data.max_eval_examples=256", "training.max_steps=60", "optimizer.warmup_steps=6",
        "eval.eval_every_steps=0", "checkpoint.save_every_steps=0", "checkpoint.save_final_model=false",
        "metrics.progress_bar=false"], world_size=env.world_size)
    return Trainer(config, env).train().final_metrics


def test_minilm_sst2_well_above_chance(tmp_path, data_dir):
    metrics = run_distributed(fine_tune_minilm, 2, str(tmp_path), str(data_dir))
    assert metrics[0] == metrics[1]
    assert metrics[0]["accuracy"] >= 0.70, metrics  # chance is 0.5 (the dev set is balanced)


def smp_prune_minilm(run_dir: str, data_dir: str) -> tuple[dict, dict]:
    """The demo's SMP-S run (configs/smp_minilm_sst2.yaml) at 50% remaining, on a smaller budget."""
    env = init_distributed()
    config = load_config("configs/smp_minilm_sst2.yaml", [
        f"job.run_dir={run_dir}", f"data.local_dir={data_dir}", "data.max_train_examples=2000",
        "data.max_eval_examples=256", "training.max_steps=120", "pruning.final_warmup_steps=30",
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
    assert metrics["accuracy"] >= 0.65, metrics  # chance is 0.5; frozen weights, only the mask learned
