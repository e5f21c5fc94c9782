"""Elastic resume: a ZeRO 1-3 checkpoint written by N ranks resumes on M ranks.

Each case trains N ranks until a SIGTERM after step STOP_AFTER (which saves that step), takes the whole
state that was saved, restores the checkpoint on M ranks and compares: full working weights, fp32
masters, both Adam moments, Adam's step count and learning rates, masks, pruning statistics and the
self-regularization teacher must come back bit for bit. The M ranks then finish the run at the exact kept
count. The cases grow and shrink the world and cover every stage, with learned scores (movement: the
scores' Adam state is DeepSpeed's) and with PINS (importance statistics, a teacher updated at
evaluations). The full masters are read through DeepSpeed's own ``safe_get_full_fp32_param``, not
through the fragments the checkpoint is written from.
"""

import hashlib
import os
import signal

import pytest
import torch
import torch.distributed as dist

from harness import run_distributed
from runs import tiny_config
from sparse_dist.distributed.env import init_distributed
from sparse_dist.distributed.fragments import build_fragments
from sparse_dist.distributed.gather import full_master, full_numel, iter_full_parameters
from sparse_dist.distributed.optimizer_state import optimizer_groups
from sparse_dist.distributed.reshard import assemble
from sparse_dist.pruning.export import full_masks
from sparse_dist.trainer import Trainer
from state_digest import full_pruning_state

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
STEPS, STOP_AFTER = 6, 3
PRUNABLE = 16_384  # weights in tiny-bert's prunable matrices
TARGET = 0.4


def config_for(run_dir: str, stage: int, world_size: int, method: str):
    # A global batch of 6 single-example micro-batches divides over 1, 2 and 3 ranks: the same examples
    # make every step on any world size.
    pruning = {"method": method, "scope": "global", "target_remaining": TARGET}
    distill = {}
    if method == "pins":
        pruning.update(window_steps=2, prune_every_steps=2)
        distill = {"self_regularization": True}
    return tiny_config(run_dir, world_size=world_size, zero={"stage": stage},
                       training={"global_batch_size": 6, "micro_batch_size": 1, "max_steps": STEPS,
                                 "max_grad_norm": 0.0},
                       eval={"eval_every_steps": 2 if method == "pins" else 0}, pruning=pruning, distill=distill)


def _hash(tensors) -> str:
    h = hashlib.sha256()
    for name, tensor in tensors:
        h.update(name.encode())
        h.update(tensor.contiguous().numpy().tobytes())
    return h.hexdigest()


def snapshot(trainer: Trainer) -> dict:
    """Hashes of the whole training state, part by part. All ranks call."""
    module = trainer.engine.module
    trainable = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
    groups = [(group["lr"], float(optimizer.state[flat]["step"]))
              for optimizer, group, flats in optimizer_groups(trainer.engine) for flat in flats]
    out = {"step": trainer.step, "lr_and_adam_step": sorted(set(groups)),
           "weights": _hash(iter_full_parameters(module)),
           "masters": _hash((name, full_master(p)) for name, p in trainable),
           "exp_avg": _hash(full_moments(trainer, trainable, "exp_avg")),
           "exp_avg_sq": _hash(full_moments(trainer, trainable, "exp_avg_sq")),
           "masks": _hash(full_masks(trainer.pruner, trainer.comm).items()),
           "pruning": full_pruning_state(trainer)}
    teacher = getattr(trainer.distiller, "self_teacher", None)
    if teacher is not None:
        out["teacher"] = _hash(iter_full_parameters(teacher.model))
    return out


def full_moments(trainer: Trainer, named, key: str) -> list[tuple[str, torch.Tensor]]:
    """Whole Adam moments ``key`` of the ``named`` parameters, from every rank's fragment. All ranks call.
    (DeepSpeed's safe_get_full_optimizer_state knows ZeRO-1/2 moments only once its own optimizer
    created them eagerly, which the torch AdamW that runs on CPU does not.)"""
    mine = [(f.start, f.optimizer_state(key).clone() if f.numel else torch.empty(0))
            for f in build_fragments(trainer.engine, named)]
    every = [None] * dist.get_world_size()
    dist.all_gather_object(every, mine)
    return [(name, assemble([rank[i] for rank in every], 0, full_numel(p))) for i, (name, p) in enumerate(named)]


def stop_after(stage: int, method: str, run_dir: str) -> dict:
    """Train until the SIGTERM after step STOP_AFTER; the state that was saved."""
    env = init_distributed()
    trainer = Trainer(config_for(run_dir, stage, env.world_size, method), env)
    step_fn = trainer.train_step

    def step(batches):
        shares = step_fn(batches)
        if trainer.step + 1 == STOP_AFTER:
            os.kill(os.getpid(), signal.SIGTERM)
        return shares

    trainer.train_step = step
    assert trainer.train().stopped
    return snapshot(trainer)


def restore_and_finish(stage: int, method: str, run_dir: str) -> dict:
    env = init_distributed()
    trainer = Trainer(config_for(run_dir, stage, env.world_size, method), env)
    assert trainer.restore()
    restored = snapshot(trainer)
    result = trainer.train()  # resumes from the checkpoint again, and trains on
    return {"restored": restored, "steps": result.steps, "remaining": result.sparsity["remaining"]}


@pytest.mark.parametrize(("stage", "saved_by", "resumed_by", "method"),
                         [(1, 1, 2, "movement"), (2, 3, 2, "pins"), (3, 2, 3, "movement"), (3, 2, 1, "pins")])
def test_a_zero_checkpoint_resumes_on_another_world_size_exactly(tmp_path, stage, saved_by, resumed_by, method):
    run_dir = str(tmp_path / "run")
    saved = run_distributed(stop_after, saved_by, stage, method, run_dir)[0]
    result = run_distributed(restore_and_finish, resumed_by, stage, method, run_dir)[0]
    assert saved["step"] == STOP_AFTER
    for part, value in saved.items():
        assert result["restored"][part] == value, f"ZeRO-{stage} {saved_by} -> {resumed_by} ranks: {part} differs"
    assert result["steps"] == STEPS
    assert result["remaining"] == round(TARGET * PRUNABLE) / PRUNABLE
