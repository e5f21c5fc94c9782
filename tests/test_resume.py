"""Exact resume, preemption, crash safety, corrupt checkpoints, and resuming on another world size.

(ZeRO 1-3 on another world size, the optimizer state included: ``test_elastic_resume.py``.)

Runs are PINS with self-regularization (importance statistics, masks, a teacher that is updated at
evaluations) with dropout on, so that every piece of state, RNG included, must come back for the
resumed run to end bit for bit where the uninterrupted one does.
"""

import hashlib
import json
import os
import signal
from pathlib import Path

import pytest
import torch.distributed as dist

from harness import run_distributed
from runs import tiny_config
from sparse_dist.checkpoint import Checkpointer
from sparse_dist.config import ConfigError
from sparse_dist.distributed.env import init_distributed
from sparse_dist.distributed.gather import full_master, iter_full_parameters
from sparse_dist.preflight import incomplete_because
from sparse_dist.pruning.export import full_masks
from sparse_dist.trainer import Trainer
from state_digest import full_pruning_state

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
STEPS, KILL_AFTER = 8, 5


def config_for(run_dir: str, stage: int, world_size: int, dropout: float = 0.1):
    config = tiny_config(run_dir, world_size=world_size, zero={"stage": stage},
                         training={"global_batch_size": 4, "micro_batch_size": 2, "max_steps": STEPS,
                                   "max_grad_norm": 0.0},
                         eval={"eval_every_steps": 2}, checkpoint={"save_every_steps": 2, "keep_last": 3},
                         pruning={"method": "pins", "scope": "global", "target_remaining": 0.4, "window_steps": 2,
                                  "prune_every_steps": 2},
                         distill={"self_regularization": True})
    config.model.dropout = dropout
    return config


def digest(trainer: Trainer) -> str:
    """Hash of everything that must match: working weights, fp32 masters, masks, the final teacher."""
    h = hashlib.sha256()
    for name, tensor in iter_full_parameters(trainer.engine.module):
        h.update(name.encode())
        h.update(tensor.numpy().tobytes())
    for _, param in trainer.engine.module.named_parameters():
        h.update(full_master(param).numpy().tobytes())
    for name, mask in full_masks(trainer.pruner, trainer.comm).items():
        h.update(name.encode())
        h.update(mask.numpy().tobytes())
    teacher = getattr(trainer.distiller, "self_teacher", None)
    if teacher is not None:
        for _, tensor in iter_full_parameters(teacher.model):
            h.update(tensor.numpy().tobytes())
    return h.hexdigest()


def inject(trainer: Trainer, fault: str, rank_only: int | None = None) -> None:
    """After step KILL_AFTER: SIGTERM (handled: save, stop) or a real SIGKILL (nothing saved after it)."""
    step_fn = trainer.train_step

    def step(batches):
        loss = step_fn(batches)
        if trainer.step + 1 == KILL_AFTER and (rank_only is None or dist.get_rank() == rank_only):
            os.kill(os.getpid(), signal.SIGTERM if fault == "sigterm" else signal.SIGKILL)
        return loss

    trainer.train_step = step


def uninterrupted_and_sigterm(stages: list[int], root: str) -> dict:
    env = init_distributed()
    out = {}
    for stage in stages:
        baseline = Trainer(config_for(f"{root}/z{stage}_baseline", stage, env.world_size), env)
        baseline.train()
        out[(stage, "baseline")] = digest(baseline)
        interrupted = Trainer(config_for(f"{root}/z{stage}_sigterm", stage, env.world_size), env)
        inject(interrupted, "sigterm", rank_only=0)  # one rank signalled: the ranks must still agree
        stopped = interrupted.train()
        resumed = Trainer(config_for(f"{root}/z{stage}_sigterm", stage, env.world_size), env)
        result = resumed.train()
        out[(stage, "sigterm")] = {"stopped_at": stopped.steps or interrupted.step, "was_stopped": stopped.stopped,
                                   "digest": digest(resumed), "finished": result.steps}
        dist.barrier()
    return out


def killed(stage: int, run_dir: str) -> None:
    env = init_distributed()
    trainer = Trainer(config_for(run_dir, stage, env.world_size), env)
    inject(trainer, "sigkill")
    trainer.train()


def restarted(stage: int, run_dir: str, dropout: float = 0.1) -> dict:
    env = init_distributed()
    trainer = Trainer(config_for(run_dir, stage, env.world_size, dropout), env)
    result = trainer.train()
    resumed_from = sorted(p.name for p in (Path(run_dir) / "checkpoints").glob("step*"))
    return {"digest": digest(trainer), "steps": result.steps, "checkpoints": resumed_from}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    return root, run_distributed(uninterrupted_and_sigterm, 2, [0, 1, 2, 3], str(root))[0]


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_sigterm_saves_at_the_step_boundary_and_resume_is_exact(runs, stage):
    _, results = runs
    record = results[(stage, "sigterm")]
    assert record["was_stopped"] and record["finished"] == STEPS
    assert record["digest"] == results[(stage, "baseline")], f"ZeRO-{stage}: resumed run differs"


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_sigkill_then_restart_is_exact(runs, stage, tmp_path):
    _, results = runs
    run_dir = str(tmp_path / "run")
    with pytest.raises(RuntimeError, match="produced no result"):
        run_distributed(killed, 2, stage, run_dir)
    saved = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step*"))
    assert saved == ["step00000002", "step00000004"]  # the last save before the kill after step 5
    result = run_distributed(restarted, 2, stage, run_dir)[0]
    assert result["steps"] == STEPS
    assert result["digest"] == results[(stage, "baseline")], f"ZeRO-{stage}: restarted run differs"


def crash_during_save(run_dir: str) -> None:
    env = init_distributed()
    trainer = Trainer(config_for(run_dir, 2, env.world_size), env)
    write = Checkpointer._write_manifest

    def dying(self, path, step):
        if step == 4:  # DeepSpeed's files and the trainer state are written; manifest and marker are not
            os.kill(os.getpid(), signal.SIGKILL)
        write(self, path, step)

    Checkpointer._write_manifest = dying
    trainer.train()


def test_a_crash_in_the_middle_of_a_save_leaves_the_previous_checkpoint_in_use(runs, tmp_path):
    _, results = runs
    run_dir = tmp_path / "run"
    with pytest.raises(RuntimeError, match="produced no result"):
        run_distributed(crash_during_save, 2, str(run_dir))
    assert (run_dir / "checkpoints" / "latest").read_text() == "step00000002"
    assert (run_dir / "checkpoints" / "step00000004").is_dir()  # the half-written one
    result = run_distributed(restarted, 2, 2, str(run_dir))[0]
    assert result["digest"] == results[(2, "baseline")]


def test_a_corrupt_checkpoint_is_reported_and_the_previous_one_used(runs, tmp_path, capfd):
    root, results = runs
    run_dir = tmp_path / "run"
    with pytest.raises(RuntimeError, match="produced no result"):
        run_distributed(killed, 2, 1, str(run_dir))
    victim = next((run_dir / "checkpoints" / "step00000004").rglob("*optim_states.pt"))
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])  # truncated
    result = run_distributed(restarted, 2, 1, str(run_dir))[0]
    assert result["digest"] == results[(1, "baseline")]
    err = capfd.readouterr().err
    assert f"checkpoint {run_dir / 'checkpoints' / 'step00000004'} is not usable" in err
    assert "truncated" in err and "resumed from" in err and "step00000002" in err


def stop_after(stage: int, run_dir: str) -> tuple[str, str]:
    """Train until the SIGTERM after step KILL_AFTER; the state that was saved, as digests."""
    env = init_distributed()
    trainer = Trainer(config_for(run_dir, stage, env.world_size), env)
    inject(trainer, "sigterm")
    assert trainer.train().stopped
    return digest(trainer), full_pruning_state(trainer)


def restore_and_finish(stage: int, run_dir: str) -> dict:
    env = init_distributed()
    trainer = Trainer(config_for(run_dir, stage, env.world_size), env)
    assert trainer.restore()
    restored = {"step": trainer.step, "digest": digest(trainer), "pruning": full_pruning_state(trainer)}
    finished = Trainer(config_for(run_dir, stage, env.world_size), env).train()
    return {**restored, "steps": finished.steps, "remaining": finished.sparsity["remaining"]}


def test_resume_on_another_world_size_reshards_the_pruning_state(tmp_path):
    # ZeRO-0's engine state is whole in the checkpoint; the masks, importance statistics and the teacher's
    # partitions that two ranks saved are assembled into one rank's fragments: the restored state is
    # exactly the saved one, and the run finishes on one rank at the exact target.
    run_dir = str(tmp_path / "run")
    saved, saved_pruning = run_distributed(stop_after, 2, 0, run_dir)[0]
    result = run_distributed(restore_and_finish, 1, 0, run_dir)[0]
    assert result["step"] == KILL_AFTER
    assert result["digest"] == saved and result["pruning"] == saved_pruning
    assert result["steps"] == STEPS and result["remaining"] == round(0.4 * 16_384) / 16_384


def resume_elsewhere(stage: int, run_dir: str) -> str:
    env = init_distributed()
    try:
        Trainer(config_for(run_dir, stage, env.world_size), env).train()
    except ConfigError as error:
        return str(error)
    return ""


def test_a_zero_checkpoint_without_optimizer_fragments_says_clearly_that_it_needs_its_world_size(tmp_path):
    # As a checkpoint written before elastic resume: DeepSpeed's files only, which need their world size.
    run_dir = tmp_path / "run"
    run_distributed(stop_after, 2, 2, str(run_dir))
    for path in (run_dir / "checkpoints").glob("step*"):
        manifest = json.loads((path / "manifest.json").read_text())
        for old in path.glob("optimizer_fragments_rank*.pt"):
            old.unlink()
            del manifest["files"][old.name]
        (path / "manifest.json").write_text(json.dumps(manifest))
    message = run_distributed(resume_elsewhere, 1, 2, str(run_dir))[0]
    assert "written by 2 ranks under ZeRO-2 and this job has 1, but it holds no optimizer fragments" in message
    assert "Resume with 2 ranks" in message


def files(run_dir: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(run_dir)): (p.stat().st_size, p.stat().st_mtime_ns) for p in run_dir.rglob("*")
            if p.is_file()}


def restart_with_another_method(run_dir: str) -> dict:
    """A finished magnitude run, restarted in its run directory with a movement config, then exported."""
    from launch.export import main as export_main

    env = init_distributed()
    pruning = {"scope": "global", "target_remaining": 0.5}
    finished = tiny_config(run_dir, world_size=env.world_size, training={"max_steps": 2},
                           pruning={"method": "magnitude", **pruning})
    Trainer(finished, env).train()
    before = files(Path(run_dir))
    movement = tiny_config(run_dir, world_size=env.world_size, training={"max_steps": 2},
                           pruning={"method": "movement", **pruning})
    try:
        Trainer(movement, env).train()
        refusal = None
    except Exception as error:  # noqa: BLE001 - the test says which kind of failure it was
        refusal = (type(error).__name__, str(error))
    after = files(Path(run_dir))
    export_status = export_main(["--run-dir", run_dir, "--out", f"{run_dir}_export"])
    return {"refusal": refusal, "unchanged": before == after, "export_status": export_status}


def test_a_finished_run_restarted_as_another_run_is_refused_and_left_intact(tmp_path):
    run_dir = tmp_path / "run"
    result = run_distributed(restart_with_another_method, 1, str(run_dir))[0]
    kind, message = result["refusal"]
    assert kind == "ConfigError", message
    assert message.startswith(f"job.run_dir: {run_dir / 'checkpoints' / 'step00000002'} is a checkpoint of another "
                              "run: pruning.method is 'magnitude' there, 'movement' here")
    assert result["unchanged"]  # config.yaml, checkpoints, COMPLETED, TensorBoard: nothing written
    assert result["export_status"] == 0 and (tmp_path / "run_export" / "model" / "config.json").is_file()


def signalled_before(trainer: Trainer, method: str, signum: int) -> None:
    """Send ``signum`` to this process as ``trainer.<method>`` starts (the handler only raises a flag)."""
    original = getattr(trainer, method)

    def call(*args, **kwargs):
        if method != "train_step" or trainer.step + 1 == 3:
            os.kill(os.getpid(), signum)
        return original(*args, **kwargs)

    setattr(trainer, method, call)


def signals_outside_the_step_loop(root: str) -> dict:
    """SIGTERM during the final evaluation and during the export of runs without periodic checkpoints,
    then a restart; and a finished run extended to more steps, sent USR1 at step 3 of 4."""
    env = init_distributed()
    out = {}
    for phase, method in (("evaluation", "evaluate"), ("export", "export")):
        run_dir = f"{root}/{phase}"
        config = tiny_config(run_dir, world_size=env.world_size, checkpoint={"save_final_model": True})
        trainer = Trainer(config, env)
        signalled_before(trainer, method, signal.SIGTERM)
        stopped = trainer.train()
        out[phase] = {"stopped": stopped.stopped, "steps": trainer.step,
                      "saved": sorted(p.name for p in (Path(run_dir) / "checkpoints").glob("step*")),
                      "marker": (Path(run_dir) / "COMPLETED").exists()}
        finished = Trainer(config, env).train()
        out[phase].update(restarted_steps=finished.steps, restarted_stopped=finished.stopped,
                          final=finished.final_metrics, marker_after_restart=(Path(run_dir) / "COMPLETED").exists())

    run_dir = f"{root}/extended"
    Trainer(tiny_config(run_dir, world_size=env.world_size, training={"max_steps": 2}), env).train()
    marker = json.loads((Path(run_dir) / "COMPLETED").read_text())
    extended = tiny_config(run_dir, world_size=env.world_size, training={"max_steps": 4})
    trainer = Trainer(extended, env)
    signalled_before(trainer, "train_step", signal.SIGUSR1)
    out["extended"] = {"first_marker_steps": marker["steps"], "stopped": trainer.train().stopped,
                       "step": trainer.step, "marker": (Path(run_dir) / "COMPLETED").exists(),
                       "incomplete_because": incomplete_because(extended)}
    return out


@pytest.fixture(scope="module")
def late_signals(tmp_path_factory):
    return run_distributed(signals_outside_the_step_loop, 1, str(tmp_path_factory.mktemp("late_signals")))[0]


@pytest.mark.parametrize("phase", ["evaluation", "export"])
def test_a_signal_after_the_last_step_saves_it_and_a_restart_finishes(late_signals, phase):
    record = late_signals[phase]
    assert record["stopped"] and record["steps"] == 3
    assert record["saved"] == ["step00000003"] and not record["marker"]  # the only checkpoint: the signal's
    assert record["restarted_steps"] == 3 and not record["restarted_stopped"] and record["marker_after_restart"]
    assert "accuracy" in record["final"]


def test_a_finished_run_extended_is_not_complete_until_it_ends_again(late_signals, tmp_path):
    record = late_signals["extended"]
    assert record["first_marker_steps"] == 2
    assert record["stopped"] and record["step"] == 3
    assert not record["marker"]  # the 2-step run's marker went when training went on
    assert record["incomplete_because"].endswith("COMPLETED does not exist")
