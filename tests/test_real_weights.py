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
