"""Multi-rank training and evaluation under ZeRO 0-3 agree with a single-process run.

Each case spawns real gloo processes (``harness.run_distributed``) and runs the real Trainer. The
global batch (12 examples in micro-batches of 2) is the same for 1, 2 and 3 ranks, so the losses
must agree within float tolerance, and evaluation, which gathers per-example predictions, must give
exactly the single-process predictions and metrics. A per-token loss (T5) must not depend on how
the global batch is cut into micro-batches and ranks either.
"""

import pytest
import torch.distributed as dist

from harness import run_distributed
from runs import tiny_config
from sparse_dist.distributed.env import init_distributed
from sparse_dist.trainer import Trainer

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

BATCH = {"global_batch_size": 12, "micro_batch_size": 2}


def record_scalars(trainer: Trainer) -> list[dict[str, float]]:
    """The training scalars the trainer logs from now on, on every rank (rank 0 also writes them)."""
    logged = []
    log = trainer.metrics.log

    def record(scalars, step):
        if "train/loss" in scalars:
            logged.append(dict(scalars))
        log(scalars, step)

    trainer.metrics.log = record
    return logged


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
        logged = record_scalars(trainer)
        result = trainer.train()
        out[stage] = {"before": before, "losses": [loss for _, loss in result.losses],
                      "grad_norms": [scalars.get("train/grad_norm") for scalars in logged],
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
    assert len(ref["losses"]) == len(ref["grad_norms"]) == 3 and None not in ref["grad_norms"]
    for stage in (0, 1, 2, 3):
        for rank_result in ranks:
            got = rank_result[stage]
            assert got["before"] == ref["before"], f"ZeRO-{stage}: evaluation differs from one process"
            assert got["losses"] == pytest.approx(ref["losses"], rel=1e-4), f"ZeRO-{stage}: losses differ"
            assert got["grad_norms"] == pytest.approx(ref["grad_norms"], rel=1e-4), f"ZeRO-{stage}: grad norms"
            assert got == ranks[0][stage], "ranks disagree"  # identical results on every rank


def test_three_ranks_zero3_match_single_process(reference, tmp_path):
    case = ("tiny-t5", "rte")
    ranks = run_distributed(train_under_stages, 3, *case, [3], str(tmp_path))
    ref = reference[case]
    for rank_result in ranks:
        assert rank_result[3]["before"] == ref["before"]
        assert rank_result[3]["losses"] == pytest.approx(ref["losses"], rel=1e-4)


def per_token_runs(root: str, micro_batch_sizes: list[int], distill: dict) -> dict:
    """On every rank: 2 steps of tiny T5 on WebNLG (targets of 10 to 60 tokens) at global batch 16 for each
    micro-batch size; the logged loss and gradient norm of every step."""
    env = init_distributed()
    out = {}
    for micro in micro_batch_sizes:
        config = tiny_config(f"{root}/m{micro}_ws{env.world_size}", world_size=env.world_size, model="tiny-t5",
                             task="webnlg", training={"global_batch_size": 16, "micro_batch_size": micro,
                                                     "max_steps": 2},
                             data={"max_eval_examples": 2}, zero={"stage": 1}, distill=distill)
        trainer = Trainer(config, env)
        logged = record_scalars(trainer)
        result = trainer.train()
        out[micro] = {"losses": [loss for _, loss in result.losses],
                      "grad_norms": [scalars.get("train/grad_norm") for scalars in logged]}
    return out


@pytest.mark.parametrize("distill", [{}, {"teacher": "tiny-t5", "self_regularization": True}],
                         ids=["ce", "adaptive_kd"])
def test_per_token_loss_does_not_depend_on_micro_batch_size_or_world_size(distill, tmp_path):
    # Global batch 16 as 1 x 16, 2 x 8 on one rank and 1 x 8 on each of two ranks. With a teacher (the
    # student's initial state, so its KD gradient is 0 at step 1 only) the loss is PINS' per-token adaptive KD.
    one_rank = run_distributed(per_token_runs, 1, str(tmp_path), [16, 8], distill)[0]
    two_ranks = run_distributed(per_token_runs, 2, str(tmp_path), [8], distill)
    reference = one_rank[16]
    assert len(reference["losses"]) == len(reference["grad_norms"]) == 2
    for got in (one_rank[8], *(rank[8] for rank in two_ranks)):
        assert got["losses"] == pytest.approx(reference["losses"], rel=1e-5)
        assert got["grad_norms"] == pytest.approx(reference["grad_norms"], rel=1e-5)


def grad_norms_under_stages(root: str, stages: list[int]) -> dict:
    """For each ZeRO stage, 2 steps of tiny BERT (2 micro-batches each): the logged train/grad_norm."""
    env = init_distributed()
    out = {}
    for stage in stages:
        config = tiny_config(f"{root}/z{stage}", world_size=env.world_size, zero={"stage": stage},
                             training={"max_steps": 2}, data={"max_eval_examples": 4})
        trainer = Trainer(config, env)
        logged = record_scalars(trainer)
        trainer.train()
        out[stage] = [scalars.get("train/grad_norm") for scalars in logged]
    return out


def test_grad_norm_is_logged_with_the_same_value_under_every_zero_stage(tmp_path):
    norms = run_distributed(grad_norms_under_stages, 1, str(tmp_path), [0, 1, 2, 3])[0]
    assert len(norms[0]) == 2 and None not in norms[0], f"train/grad_norm missing under ZeRO-0: {norms[0]}"
    for stage in (1, 2, 3):
        assert norms[stage] == pytest.approx(norms[0], rel=1e-5), f"ZeRO-{stage}"
