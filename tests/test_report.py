"""``sparse-dist report``: a finished and a stopped tiny run give a PNG and an HTML page; other directories
are refused with one line and exit status 2."""

import base64
import json
import os
import signal

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from harness import run_distributed
from runs import tiny_config
from sparse_dist.cli import main as cli
from sparse_dist.distributed.env import init_distributed
from sparse_dist.report import REMAINING_MAP_TAG, RunRecord, compute_remaining_grid, read_run
from sparse_dist.trainer import Trainer

STEPS, STOP_AFTER = 6, 3
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny_pruned_runs(root: str) -> None:
    """A finished magnitude run and one stopped by SIGTERM after step STOP_AFTER, both evaluated every 2 steps."""
    env = init_distributed()
    for name, stop_after in (("finished", None), ("stopped", STOP_AFTER)):
        config = tiny_config(f"{root}/{name}", world_size=env.world_size,
                             training={"max_steps": STEPS}, eval={"eval_every_steps": 2},
                             metrics={"tensorboard": True}, checkpoint={"save_final_model": True},
                             pruning={"method": "magnitude", "scope": "global", "target_remaining": 0.4,
                                      "final_warmup_steps": 2, "prune_every_steps": 1})
        trainer = Trainer(config, env)
        if stop_after:
            step_fn = trainer.train_step

            def step(batches, step_fn=step_fn, trainer=trainer):
                shares = step_fn(batches)
                if trainer.step + 1 == STOP_AFTER:
                    os.kill(os.getpid(), signal.SIGTERM)
                return shares

            trainer.train_step = step
        assert trainer.train().stopped == bool(stop_after)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("report_runs")
    run_distributed(tiny_pruned_runs, 1, str(root))
    return root


def check_outputs(run_dir, out_dir) -> None:
    png = (out_dir / "report.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 20_000
    page = (out_dir / "report.html").read_text()
    assert f"data:image/png;base64,{base64.b64encode(png).decode()}" in page  # self-contained
    assert str(run_dir.resolve()) in page


@pytest.mark.distributed
def test_report_on_a_finished_run(runs, tmp_path):
    run_dir = runs / "finished"
    assert cli(["report", str(run_dir), "--out", str(tmp_path)]) == 0
    check_outputs(run_dir, tmp_path)
    record = read_run(run_dir)
    assert record.state == "finished" and record.grid_source == "final/model/sparsity.json"
    assert record.grid.layers == ["0", "1"] and record.grid.types == ["Q", "K", "V", "O", "U", "D"]
    sparsity = json.loads((run_dir / "final" / "model" / "sparsity.json").read_text())
    kept = sum(m["kept"] for m in sparsity["matrices"].values())
    assert kept == sparsity["kept"]
    assert np.nansum(record.grid.remaining * 1024 * np.array([1, 1, 1, 1, 2, 2])) == pytest.approx(kept)
    assert [step for step, _ in record.scalars["eval/accuracy"]] == [2, 4, 6]
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    maps = events.Images(REMAINING_MAP_TAG)  # the heat map, logged at every evaluation
    assert [image.step for image in maps] == [2, 4, 6] and maps[-1].encoded_image_string.startswith(PNG_MAGIC)
    assert record.scalars["prune/remaining"][-1][1] == pytest.approx(0.4, abs=1e-3)


@pytest.mark.distributed
def test_report_on_a_stopped_run_uses_the_map_logged_at_its_last_evaluation(runs):
    run_dir = runs / "stopped"
    assert not (run_dir / "COMPLETED").exists() and (run_dir / "checkpoints" / "latest").is_file()
    assert cli(["report", str(run_dir)]) == 0
    check_outputs(run_dir, run_dir)
    record = read_run(run_dir)
    assert record.state == "not finished" and record.checkpoint_step == STOP_AFTER
    assert record.grid_source.startswith("TensorBoard")  # the evaluation at step 2
    remaining_at_2 = dict(record.scalars["prune/remaining"])[2]
    weights = np.array([1, 1, 1, 1, 2, 2]) / 16  # each type's share of the 16,384 prunable weights
    assert np.nansum(record.grid.remaining * weights) == pytest.approx(remaining_at_2)


def test_report_refuses_a_directory_that_is_not_a_run(tmp_path, capsys):
    assert cli(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path) in err[0] and "not a run directory" in err[0]
    assert cli(["report", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_remaining_grid_and_teacher_update_marks():
    matrices = {"a": {"layer": "0", "type": "Q", "kept": 1, "total": 4},
                "b": {"layer": "1", "type": "K", "kept": 3, "total": 4}}
    grid = compute_remaining_grid(matrices)
    assert grid.layers == ["0", "1"] and grid.types == ["Q", "K"]
    assert grid.remaining[0, 0] == 0.25 and grid.remaining[1, 1] == 0.75 and np.isnan(grid.remaining[0, 1])
    # The count is logged at log steps; the trainer evaluates after logging: updates at evaluations 3 and 9.
    record = RunRecord(run_dir=None, config={}, state="finished",
                       scalars={"teacher/updates": [(2, 0.0), (4, 1.0), (6, 1.0), (8, 1.0), (10, 2.0)],
                                "eval/accuracy": [(3, 0.5), (6, 0.5), (9, 0.6)]})
    assert record.teacher_update_steps() == [3, 9]


def test_a_run_without_tensorboard_events_takes_its_evaluations_from_completed(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("job:\n  name: quiet\npruning:\n  method: magnitude\n")
    (tmp_path / "COMPLETED").write_text(json.dumps({
        "steps": 4, "final": {"accuracy": 0.75}, "sparsity": {"remaining": 0.5, "sparsity": 0.5},
        "evals": [{"step": 2, "target_remaining": 0.7, "accuracy": 0.5},
                  {"step": 4, "target_remaining": 0.5, "accuracy": 0.75}]}))
    record = read_run(tmp_path)
    assert record.state == "finished" and record.events_age_s is None
    assert record.scalars == {"eval/accuracy": [(2, 0.5), (4, 0.75)], "prune/remaining_target": [(2, 0.7), (4, 0.5)]}
    assert cli(["report", str(tmp_path)]) == 0 and (tmp_path / "report.png").read_bytes().startswith(PNG_MAGIC)
