"""Sharded masks under ZeRO 0-3 and 1-3 ranks: identical masks, exact counts, pruned weights stay zero.

A tiny BERT is pruned to 30% of its encoder weights by magnitude, with the global threshold from the
distributed selection over each rank's fragments. The mask is applied after one optimizer step (so
that Adam moments exist), then two more steps run with the gradients of pruned weights zeroed inside
the optimizer step. Every copy is then gathered and checked: the working copy the forward pass
reads, the fp32 master and both Adam moments must be exactly zero where the mask prunes.
"""

import math

import pytest
import torch.distributed as dist

from harness import run_distributed
from runs import tiny_config
from sparse_dist.data.sampler import TrainBatchSampler
from sparse_dist.data.task_data import build_train_loader
from sparse_dist.distributed.bitmask import PackedMask
from sparse_dist.distributed.comm import TorchCommunicator
from sparse_dist.distributed.env import init_distributed
from sparse_dist.distributed.fragments import build_fragments
from sparse_dist.distributed.gather import full_master, full_optimizer_state, full_shape, iter_full_parameters
from sparse_dist.distributed.masking import apply_masks, gather_full_mask, zero_masked_grads
from sparse_dist.distributed.select import ScoreShard, select_topk
from sparse_dist.distributed.step_tap import OptimizerStepTap
from sparse_dist.trainer import Trainer

pytestmark = pytest.mark.distributed
REMAINING = 0.3


def prunable(module):
    return [(n, p) for n, p in module.named_parameters() if ".encoder.layer." in n and n.endswith(".weight")
            and len(full_shape(p)) == 2]


def prune_and_train(stages: list[int], root: str) -> dict:
    env = init_distributed()
    comm = TorchCommunicator()
    out = {}
    for stage in stages:
        config = tiny_config(f"{root}/z{stage}_ws{env.world_size}", world_size=env.world_size,
                             training={"global_batch_size": 12, "micro_batch_size": 2, "max_steps": 3},
                             zero={"stage": stage}, optimizer={"weight_decay": 0.01})
        trainer = Trainer(config, env)
        engine = trainer.engine
        named = prunable(engine.module)
        fragments = build_fragments(engine, named)
        # Scores from the initial weights, identical in every configuration.
        shards = [ScoreShard(f.master().detach().abs().clone(), 0, f.index, f.start) for f in fragments]
        total = sum(math.prod(full_shape(p)) for _, p in named)
        k = round(REMAINING * total)
        threshold = select_topk(shards, [k], comm)[0]
        masks = [PackedMask.pack(threshold.mask(s)) for s in shards]
        state_bytes = sum(m.nbytes + 4 * s.scores.numel() for m, s in zip(masks, shards))

        sampler = TrainBatchSampler(len(trainer.task_data.train), 12, 2, env.rank, env.world_size, seed=7)
        batches = iter(build_train_loader(trainer.task_data, sampler))
        engine.train()
        trainer.train_step([next(batches) for _ in range(config.grad_accum_steps)])  # moments now exist
        apply_masks(fragments, masks, comm)
        by_index = {f.index: m for f, m in zip(fragments, masks)}
        tap = OptimizerStepTap(engine, fragments)
        tap.before.append(lambda active, masks=by_index: zero_masked_grads(active, [masks[f.index] for f in active],
                                                                            comm))
        for _ in range(2):
            trainer.train_step([next(batches) for _ in range(config.grad_accum_steps)])
        tap.remove()

        full_masks = {f.name: gather_full_mask(f, m, comm) for f, m in zip(fragments, masks)}
        working = dict(iter_full_parameters(engine.module))
        violations, kept = {}, 0
        for name, param in named:
            mask = full_masks[name]
            pruned = ~mask
            kept += int(mask.sum())
            copies = {"working": working[name].reshape(-1), "master": full_master(param).reshape(-1)}
            for key in ("exp_avg", "exp_avg_sq"):
                copies[key] = full_optimizer_state(engine, param, key)
            for copy, values in copies.items():
                violations[copy] = violations.get(copy, 0) + int((values[pruned] != 0).sum())
            kept_zero = int((working[name].reshape(-1)[mask] == 0).sum())
            violations["kept-but-zero"] = violations.get("kept-but-zero", 0) + kept_zero
        out[stage] = {"masks": {n: m.tolist() for n, m in full_masks.items()}, "kept": kept, "k": k,
                      "violations": violations, "state_bytes": state_bytes}
        dist.barrier()
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("masks"))
    return {ws: run_distributed(prune_and_train, ws, [0, 1, 2, 3], root) for ws in (1, 2, 3)}


def test_masks_identical_across_stages_and_world_sizes(runs):
    reference = runs[1][0][0]["masks"]
    for ws, ranks in runs.items():
        for rank, result in enumerate(ranks):
            for stage in (0, 1, 2, 3):
                assert result[stage]["masks"] == reference, f"ZeRO-{stage}, {ws} rank(s), rank {rank}"


def test_kept_count_is_exact(runs):
    for ranks in runs.values():
        for result in ranks:
            for stage in (0, 1, 2, 3):
                assert result[stage]["kept"] == result[stage]["k"]


def test_pruned_weights_stay_zero_in_every_copy(runs):
    for ws, ranks in runs.items():
        for stage in (0, 1, 2, 3):
            violations = ranks[0][stage]["violations"]
            assert violations == {"working": 0, "master": 0, "exp_avg": 0, "exp_avg_sq": 0, "kept-but-zero": 0}, \
                f"ZeRO-{stage}, {ws} rank(s): {violations}"


def test_pruning_state_per_rank_falls_with_world_size(runs):
    for stage in (0, 1, 2, 3):
        single = runs[1][0][stage]["state_bytes"]
        for ws in (2, 3):
            per_rank = [r[stage]["state_bytes"] for r in runs[ws]]
            assert max(per_rank) < single
            if stage in (0, 3):  # even splits: each rank holds its 1/ws share (up to rounding per tensor)
                assert max(per_rank) <= single / ws * 1.02 + 64
            else:  # ZeRO-1/2 partition the flat buffer of all parameters; shares follow those boundaries
                assert sum(per_rank) == pytest.approx(single, rel=0.02)
