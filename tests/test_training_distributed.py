"""Multi-rank training and evaluation under ZeRO 0-3 agree with a single-process run.

Each case spawns real gloo processes (``harness.run_distributed``) and runs the real Trainer. The
global batch (12 examples in micro-batches of 2) is the same for 1, 2 and 3 ranks, so the losses
must agree within float tolerance, and evaluation, which gathers per-example predictions, must give
exactly the single-process predictions and metrics.
"""

import pytest
import torch.distributed as dist
from harness import run_distributed

from runs import tiny_config
from sparse_dist.distributed.env import init_distributed
from sparse_dist.trainer import Trainer

pytestmark = pytest.mark.distributed

BATCH = {"global_batch_size": 12, "micro_batch_size": 2}


def train_under_stages(model: str, task: str, stages: list[int], root: str) -> dict:
    """On every rank: for each ZeRO stage, evaluate the fresh model, train 3 steps, evaluate again."""
    env = init_distributed()
    out = {}
    for stage in stages:
        config = tiny_config(f"{root}/{model}_ws{env.world_size}_z{stage}", world_size=env.world_size, model=model,
                             task=task, training=BATCH, zero={"stage": stage})
        trainer = Trainer(config, env)
        dev = trainer.task_data.dev[0]
        before = trainer.evaluator.predict(trainer.engine.module, dev)
        result = trainer.train()
        out[stage] = {"before": before, "losses": [loss for _, loss in result.losses],
                      "final": result.final_metrics, "after": trainer.evaluator.predict(trainer.engine.module, dev)}
        dist.barrier()
    return out


CASES = [("tiny-bert", "sst2"), ("tiny-t5", "rte")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("reference")
    return {case: run_distributed(train_under_stages, 1, *case, [0], str(root))[0][0] for case in CASES}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0])
def test_two_ranks_match_single_process_under_every_zero_stage(case, reference, tmp_path):
    ranks = run_distributed(train_under_stages, 2, *case, [0, 1, 2, 3], str(tmp_path))
    ref = reference[case]
    assert len(ref["losses"]) == 3
    for stage in (0, 1, 2, 3):
        for rank_result in ranks:
            got = rank_result[stage]
            assert got["before"] == ref["before"], f"ZeRO-{stage}: evaluation differs from one process"
            assert got["losses"] == pytest.approx(ref["losses"], rel=1e-4), f"ZeRO-{stage}: losses differ"
            assert got == ranks[0][stage], "ranks disagree"  # identical results on every rank


def test_three_ranks_zero3_match_single_process(reference, tmp_path):
    case = ("tiny-t5", "rte")
    ranks = run_distributed(train_under_stages, 3, *case, [3], str(tmp_path))
    ref = reference[case]
    for rank_result in ranks:
        assert rank_result[3]["before"] == ref["before"]
        assert rank_result[3]["losses"] == pytest.approx(ref["losses"], rel=1e-4)
