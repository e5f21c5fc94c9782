"""Whole Adam moments of ZeRO-partitioned weights (``gather.full_optimizer_state``) under ZeRO 0, 1, 2 and 3.

Two ranks train a tiny BERT for two steps at each stage with the same data. For every trainable weight the
whole ``exp_avg`` and ``exp_avg_sq`` must come back on both ranks with the weight's element count; each
rank's own fragment of the optimizer state must sit bit for bit at its place in it; under ZeRO-3 it must
equal DeepSpeed's ``safe_get_full_optimizer_state``; and the moments of ZeRO 1-3 must match ZeRO-0's, where
the optimizer steps plain whole tensors (so the assembled layout is the weight's own).
"""

import pytest
import torch
import torch.distributed as dist

from harness import run_distributed
from runs import tiny_config
from sparse_dist.data.sampler import TrainBatchSampler
from sparse_dist.data.task_data import build_train_loader
from sparse_dist.distributed.env import init_distributed
from sparse_dist.distributed.fragments import build_fragments
from sparse_dist.distributed.gather import full_numel, full_optimizer_state
from sparse_dist.trainer import Trainer

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
MOMENTS = ("exp_avg", "exp_avg_sq")


def moments_at_each_stage(root: str) -> dict:
    env = init_distributed()
    out = {}
    for stage in (0, 1, 2, 3):
        config = tiny_config(f"{root}/z{stage}", world_size=env.world_size, zero={"stage": stage},
                             training={"global_batch_size": 4, "micro_batch_size": 2, "max_steps": 2})
        trainer = Trainer(config, env)
        engine = trainer.engine
        named = [(name, p) for name, p in engine.module.named_parameters() if p.requires_grad]
        before = full_optimizer_state(engine, named[0][1], "exp_avg")
        sampler = TrainBatchSampler(len(trainer.task_data.train), 4, 2, env.rank, env.world_size, seed=7)
        batches = iter(build_train_loader(trainer.task_data, sampler))
        engine.train()
        for _ in range(2):
            trainer.train_step([next(batches) for _ in range(config.grad_accum_steps)])
        misplaced, wrong_size, deepspeed_differs = [], [], []
        full = {}
        for fragment, (name, param) in zip(build_fragments(engine, named), named):
            for key in MOMENTS:
                whole = full_optimizer_state(engine, param, key)
                full[f"{name}/{key}"] = whole
                if whole.numel() != full_numel(param):
                    wrong_size.append(name)
                own = fragment.optimizer_state(key) if fragment.numel else torch.empty(0)
                if not torch.equal(whole[fragment.start:fragment.start + fragment.numel], own.cpu()):
                    misplaced.append(f"{name}/{key}")
                if stage == 3:
                    from deepspeed.utils import safe_get_full_optimizer_state
                    theirs = safe_get_full_optimizer_state(param, key).reshape(-1)
                    if not torch.equal(theirs, whole):
                        deepspeed_differs.append(f"{name}/{key}")
        out[stage] = {"before_step": before, "misplaced": misplaced, "wrong_size": wrong_size,
                      "deepspeed_differs": deepspeed_differs, "full": full}
        dist.barrier()
    return out


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return run_distributed(moments_at_each_stage, 2, str(tmp_path_factory.mktemp("gather")))


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_full_adam_moments_are_whole_and_in_place_at_every_stage(ranks, stage):
    for rank, result in enumerate(ranks):
        found = result[stage]
        assert found["before_step"] is None, f"ZeRO-{stage} rank {rank}: a moment before the first step"
        assert found["wrong_size"] == [] and found["misplaced"] == [], f"ZeRO-{stage} rank {rank}: {found}"
        assert found["deepspeed_differs"] == [], f"ZeRO-{stage} rank {rank}"
        assert len(found["full"]) > 20
    first, second = (result[stage]["full"] for result in ranks)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)  # every rank holds the same whole


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_partitioned_moments_match_the_whole_tensors_of_zero_0(ranks, stage):
    zero0, partitioned = ranks[0][0]["full"], ranks[0][stage]["full"]
    assert zero0.keys() == partitioned.keys()
    for key, reference in zero0.items():
        torch.testing.assert_close(partitioned[key], reference, rtol=1e-5, atol=1e-9, msg=f"ZeRO-{stage} {key}")
