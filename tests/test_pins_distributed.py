"""PLATON and PINS under ZeRO 0-3 with 1 and 2 ranks; teachers; teacher updates."""

import hashlib
import math
import re

import pytest
import torch
import torch.distributed as dist

from agreement import SelectionSpy, compare
from harness import run_distributed
from runs import tiny_config
from sparse_dist.data.sampler import TrainBatchSampler
from sparse_dist.data.task_data import build_train_loader
from sparse_dist.distributed.env import init_distributed
from sparse_dist.distributed.gather import iter_full_parameters, track_gathered_peak
from sparse_dist.pruning.export import full_masks
from sparse_dist.pruning.schedule import kept_count
from sparse_dist.trainer import Trainer
from test_importance_units import reference_platon

pytestmark = pytest.mark.distributed
WINDOW, STEPS = 2, 6


def pruning(method: str, **extra) -> dict:
    return {"method": method, "scope": "global", "target_remaining": 0.5, "window_steps": WINDOW,
            "prune_every_steps": 2, "final_warmup_steps": 1, **extra}


def batches_for(trainer, world_size: int, rank: int):
    sampler = TrainBatchSampler(len(trainer.task_data.train), 4, 2, rank, world_size, seed=7)
    return iter(build_train_loader(trainer.task_data, sampler))


def single_process_reference(method: str, root: str) -> dict:
    """One rank, ZeRO-0, clipping active: the pruner's statistics against a recomputation from the weights
    before and after each step and the clipped gradient, all captured here around the optimizer step."""
    env = init_distributed()
    config = tiny_config(root, training={"global_batch_size": 4, "micro_batch_size": 2, "max_steps": STEPS,
                                         "max_grad_norm": 0.05}, pruning=pruning(method))
    trainer = Trainer(config, env)
    engine, pruner = trainer.engine, trainer.pruner
    weights = [pruner.pretrained.get_submodule(s.name).weight for s in pruner.sites]
    trainable = [p for p in engine.module.parameters() if p.requires_grad]
    batches = batches_for(trainer, 1, 0)
    pruner.start()
    engine.train()
    observed = []
    for step in range(1, STEPS + 1):
        for micro in range(2):
            batch = next(batches)
            engine.backward(engine(**batch).loss)
            if micro == 1:  # the accumulation boundary: what the optimizer is about to use
                norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in trainable)).item()
                coefficient = min(1.0, 0.05 / (norm + 1e-6))
                grads = [w.grad.detach().clone() * coefficient for w in weights]
                before = [w.detach().clone() for w in weights]
                lr = engine.optimizer.param_groups[0]["lr"]
            engine.step()
        after = [w.detach().clone() for w in weights]
        if method == "pins":
            observed.append([(g * (lr * g - w)).abs() for w, g in zip(before, grads)])
        else:
            observed.append([(w * g).abs() for w, g in zip(after, grads)])
        pruner.step(step)
    mismatches = 0
    for index, state in enumerate(pruner.states):
        series = [step[index].reshape(-1).tolist() for step in observed]
        window, average, uncertainty = reference_platon(series, WINDOW, 0.85, 0.95)
        for got, want in ((state.window, window), (state.average, average), (state.uncertainty, uncertainty)):
            mismatches += int((~torch.isclose(got, torch.tensor(want), rtol=1e-5, atol=1e-12)).sum())
    return {"mismatches": mismatches, "nonzero": int(sum((s.average != 0).sum() for s in pruner.states))}


@pytest.mark.parametrize("method", ["platon", "pins"])
def test_importance_equals_a_hand_computed_single_process_reference(method, tmp_path):
    result = run_distributed(single_process_reference, 1, method, str(tmp_path))[0]
    assert result["nonzero"] > 0
    assert result["mismatches"] == 0


def full_state(pruner, comm) -> list[torch.Tensor]:
    """Every rank's fragments of the importance statistics, put back into whole tensors (tests only)."""
    out = []
    for key in ("average", "uncertainty"):
        for site, fragment, state in zip(pruner.sites, pruner.fragments, pruner.states):
            whole = torch.zeros(site.numel, dtype=torch.float32)
            whole[fragment.start:fragment.start + fragment.numel] = getattr(state, key)
            comm.all_reduce(whole)
            out.append(whole)
    return out


def importance_everywhere(stages: list[int], root: str) -> dict:
    """Each method and stage: hashes of the whole statistics and masks after every step, counts, zeros."""
    env = init_distributed()
    out = {}
    for method in ("platon", "pins"):
        for stage in stages:
            config = tiny_config(f"{root}/{method}_z{stage}_ws{env.world_size}", world_size=env.world_size,
                                 training={"global_batch_size": 4, "micro_batch_size": 2, "max_steps": STEPS,
                                           "max_grad_norm": 0.0}, zero={"stage": stage}, pruning=pruning(method))
            trainer = Trainer(config, env)
            pruner, records = trainer.pruner, []
            step_fn = pruner.step
            spy = SelectionSpy(pruner)  # the scores and thresholds of the last selection

            def step(t, pruner=pruner, records=records, step_fn=step_fn, trainer=trainer, spy=spy):
                step_fn(t)
                stats = full_state(pruner, trainer.comm)
                masks = full_masks(pruner, trainer.comm)
                scores, cuts = spy.seen(trainer.comm)
                weights = dict(iter_full_parameters(pruner.pretrained))
                zero_where_pruned = all(bool((weights[f"{s.name}.weight"].reshape(-1)[~masks[s.name]] == 0).all())
                                        for s in pruner.sites)
                records.append({"step": t, "target": pruner.target,
                                "update": pruner.schedule.is_update_step(t, True),
                                "stats": torch.cat(stats),
                                "masks": hashlib.sha256(b"".join(masks[s.name].numpy().tobytes()
                                                                 for s in pruner.sites)).hexdigest(),
                                "mask": torch.cat([masks[s.name] for s in pruner.sites]),
                                "scores": scores, "cuts": cuts,
                                "kept": sum(int(masks[s.name].sum()) for s in pruner.sites),
                                "zero_where_pruned": zero_where_pruned})

            pruner.step = step
            trainer.train()
            out[(method, stage)] = {"records": records, "total": sum(s.numel for s in pruner.sites)}
            dist.barrier()
    return out


@pytest.fixture(scope="module")
def everywhere(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("importance"))
    return {ws: run_distributed(importance_everywhere, ws, [0, 1, 2, 3], root) for ws in (1, 2)}


@pytest.mark.slow
@pytest.mark.parametrize("method", ["platon", "pins"])
def test_statistics_agree_and_masks_differ_only_at_the_threshold_for_zero_0_to_3_and_1_or_2_ranks(everywhere,
                                                                                                  method):
    """Statistics and masks: identical, bit for bit, across ZeRO 0-2 at one world size (the same arithmetic:
    ZeRO-1/2 step the same fp32 values on flat partitions). To rounding across world sizes (the gradient
    reduction rounds differently) and under ZeRO-3 (its backward rounds differently: gradients differ by
    ~1e-11 with the same weights). Where they agree only to rounding, a mask may differ from the reference
    only in elements whose importance lies within that rounding of the threshold (tests/agreement.py)."""
    reference = everywhere[1][0][(method, 0)]["records"]
    assert len(reference) == STEPS
    for ws, ranks in everywhere.items():
        for rank, result in enumerate(ranks):
            same_world = result[(method, 0)]["records"]
            for stage in (0, 1, 2, 3):
                records = result[(method, stage)]["records"]
                where = f"{method}: ZeRO-{stage}, {ws} rank(s), rank {rank}"
                if stage < 3:
                    assert [r["masks"] for r in records] == [r["masks"] for r in same_world], where
                for step, (got, want, near) in enumerate(zip(records, same_world, reference), 1):
                    if stage < 3:
                        assert torch.equal(got["stats"], want["stats"]), f"{where}, step {step}"
                    scale = float(near["stats"].abs().max())
                    torch.testing.assert_close(got["stats"], near["stats"], rtol=1e-3, atol=1e-9 * scale,
                                               msg=lambda m, where=where, step=step: f"{where}, step {step}: {m}")
                    agreement = compare(got["mask"], got["scores"], got["cuts"],
                                        near["mask"], near["scores"], near["cuts"])
                    assert agreement.unexplained == 0, f"{where}, step {step}: {agreement}"
                    assert agreement.threshold_delta <= agreement.delta, f"{where}, step {step}: {agreement}"


@pytest.mark.slow
@pytest.mark.parametrize("method", ["platon", "pins"])
def test_global_kept_count_exact_and_pruned_weights_zero_after_every_update(everywhere, method):
    result = everywhere[2][0][(method, 3)]
    updates = [r for r in result["records"] if r["update"]]
    assert [r["step"] for r in updates] == [2, 4, 5, 6]  # every 2 steps in the ramp, every step after it
    for record in updates:
        assert record["kept"] == kept_count(record["target"], result["total"]), record["step"]
        assert record["zero_where_pruned"], record["step"]
    assert updates[-1]["target"] == 0.5


def teacher_matches_student(model: str, task: str, stage: int, method: str, root: str) -> dict:
    """Right after a teacher update, the teacher's logits equal the student's, bit for bit."""
    env = init_distributed()
    prune = pruning(method) if method != "smp" else {"method": "smp", "scope": "per_type", "target_remaining": 0.5}
    config = tiny_config(root, world_size=env.world_size, model=model, task=task, zero={"stage": stage},
                         training={"global_batch_size": 4, "micro_batch_size": 2, "max_steps": 3},
                         pruning=prune, distill={"self_regularization": True})
    trainer = Trainer(config, env)
    trainer.train()  # ends with an evaluation: the first one always "improves", so a teacher exists
    distiller = trainer.distiller
    teacher = distiller.self_teacher
    batch = trainer.task_data.collator([trainer.task_data.train[i] for i in range(4)])
    student = trainer.engine.module.eval()
    with torch.no_grad():
        student_logits = student(**batch).logits
    teacher.copy_from(trainer.built.model)
    peak = track_gathered_peak(teacher.model) if method != "smp" else None
    teacher_logits = teacher.logits(batch)
    model_bytes = sum(int(math.prod(p.shape if not hasattr(p, "ds_shape") else p.ds_shape)) * 4
                      for p in trainer.built.model.parameters())
    largest_block = 0
    if peak:
        blocks = [m for name, m in teacher.model.named_modules() if re.fullmatch(r".*\.(layer|block)\.\d+", name)]
        largest_block = max(sum(p.ds_numel * 4 for p in b.parameters()) for b in blocks)
    return {"equal": bool(torch.equal(student_logits, teacher_logits)), "updates": teacher.updates,
            "device_peak": peak["bytes"] if peak else 0, "peak_names": peak["names"] if peak else [],
            "largest_block": largest_block,
            "host_bytes": teacher.host_bytes(), "model_bytes": model_bytes, "kind": type(teacher).__name__,
            "prunable": sum(s.numel for s in trainer.pruner.sites), "matrices": len(trainer.pruner.sites)}


@pytest.mark.slow
@pytest.mark.parametrize("model, task", [("tiny-bert", "rte"), ("tiny-t5", "rte")])
@pytest.mark.parametrize("stage, world_size", [(0, 1), (2, 2), (3, 2)])
def test_offloaded_teacher_gives_the_students_logits_bit_for_bit(model, task, stage, world_size, tmp_path):
    ranks = run_distributed(teacher_matches_student, world_size, model, task, stage, "pins", str(tmp_path))
    for result in ranks:
        assert result["kind"] == "OffloadedTeacher" and result["updates"] >= 2
        assert result["equal"]
        # Each rank keeps its partition only: 1/world_size of a model copy (plus partition padding).
        assert result["host_bytes"] <= result["model_bytes"] / world_size * 1.05 + 4096
        # On the device: a block at a time; embedding tables are read from the partitions and T5's tied LM
        # head computes vocabulary slices from them: never more parameters than one block made whole.
        assert 0 < result["device_peak"] <= result["largest_block"], result["peak_names"]


@pytest.mark.slow
def test_smp_teacher_is_an_older_mask(tmp_path):
    for result in run_distributed(teacher_matches_student, 2, "tiny-bert", "sst2", 3, "smp", str(tmp_path)):
        assert result["kind"] == "MaskTeacher" and result["equal"]
        # A bit per prunable weight, this rank's half of them (packing rounds up per matrix).
        assert result["host_bytes"] <= result["prunable"] / 8 / 2 + result["matrices"]


def teacher_update_steps(root: str) -> dict:
    env = init_distributed()
    config = tiny_config(root, world_size=env.world_size, task="rte",
                         training={"global_batch_size": 4, "micro_batch_size": 2, "max_steps": 10},
                         optimizer={"lr": 2e-2}, eval={"eval_every_steps": 1},
                         pruning=pruning("pins"), distill={"self_regularization": True})
    trainer = Trainer(config, env)
    copies = []
    original = trainer.distiller.on_evaluation

    def spy(improved, original=original):
        before = trainer.distiller.self_teacher.updates if trainer.distiller.self_teacher else 0
        original(improved)
        after = trainer.distiller.self_teacher.updates if trainer.distiller.self_teacher else 0
        if after > before:
            copies.append(trainer.step)

    trainer.distiller.on_evaluation = spy
    result = trainer.train()
    return {"copies": copies, "evals": [(step, m["accuracy"]) for step, m in result.evals]}


@pytest.mark.slow
def test_teacher_is_updated_exactly_when_the_dev_metric_improves(tmp_path):
    result = run_distributed(teacher_update_steps, 2, str(tmp_path))[0]
    best, improvements = None, []
    for step, accuracy in result["evals"]:
        if best is None or accuracy > best:
            best = accuracy
            improvements.append(step)
    assert result["copies"] == improvements
    assert len(result["evals"]) == 10 and 1 <= len(improvements) < 10  # steps 1-9, and the final one
