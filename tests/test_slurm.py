"""The real ``slurm/pins_t5_large.sh`` on a one-node SLURM cluster started by the test: a job that runs to
the end (log, TensorBoard, checkpoints, export), and a job signalled mid-run that checkpoints, is requeued
and finishes from its checkpoint."""

import json
import os
import re
import time
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import REPO
from slurm_cluster import SlurmCluster, missing_requirements
from sparse_dist.distributed.env import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# Two CPU ranks on this one node; the script's GPU resources turned off, its hyperparameters untouched.
OPTIONS = ("--nodes=1", "--gpus-per-node=0", "--cpus-per-task=2", "--mem=4G")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    problem = missing_requirements()
    if problem:  # CI runs `make test` as root, which installs SLURM first, so there this never skips
        pytest.skip(f"cannot start a SLURM cluster: {problem}")
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    cluster.start()
    yield cluster
    cluster.stop()


def submit(cluster, run_dir: Path, logs: Path, data_dir, *overrides: str) -> int:
    env = {"CONFIG": "configs/tiny_pins_t5_webnlg.yaml", "RUN_DIR": str(run_dir), "GPUS_PER_NODE": "2",
           "VENV": os.environ.get("VENV", str(REPO / ".venv")), "MASTER_PORT": str(free_port())}
    logs.mkdir(parents=True, exist_ok=True)  # SLURM does not create the output file's directory
    return cluster.sbatch("slurm/pins_t5_large.sh", f"data.local_dir={data_dir}", *overrides,
                          options=(*OPTIONS, f"--output={logs}/%x-%j.out"), env=env, cwd=REPO)


def finished(fields: dict) -> bool:
    return fields.get("JobState") in {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}


def test_pins_t5_job_runs_to_the_end(cluster, tmp_path, data_dir):
    run_dir, logs = tmp_path / "run", tmp_path / "logs"
    job = submit(cluster, run_dir, logs, data_dir)
    fields = cluster.wait(job, finished, 900, "finished")
    log = (logs / f"pins-t5-large-{job}.out").read_text()
    assert fields["JobState"] == "COMPLETED", log[-3000:]

    # The job log: what ran, at which commit, on how many ranks, and how it ended.
    assert re.search(r"^commit [0-9a-f]{40}$", log, re.M), log[:2000]
    assert "command: srun --nodes=1 --ntasks=1 --ntasks-per-node=1 torchrun --nnodes 1 --nproc_per_node 2" in log
    assert "job.run_dir=" + str(run_dir) in log and f"data.local_dir={data_dir}" in log
    assert "2 rank(s)" in log and "step 12/12" in log
    assert f"run complete: {run_dir}" in log
    summary = json.loads((run_dir / "COMPLETED").read_text())
    assert summary["steps"] == 12

    # TensorBoard: training, pruning and self-regularization scalars, written once (rank 0).
    events = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    scalars = EventAccumulator(str(events[0]))
    scalars.Reload()
    tags = set(scalars.Tags()["scalars"])
    assert {"train/loss", "prune/remaining", "eval/bleu"} <= tags, sorted(tags)
    assert scalars.Scalars("prune/remaining")[-1].value == pytest.approx(0.3, abs=1e-3)

    # Checkpoints every 4 steps, the last two kept; the final export beside them.
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.is_dir())
    assert checkpoints[-1].endswith("12"), checkpoints
    report = json.loads((run_dir / "final" / "model" / "sparsity.json").read_text())
    assert report["remaining"] == pytest.approx(0.3, abs=1e-3)
    assert (run_dir / "final" / "model" / "config.json").exists()


def test_signalled_job_checkpoints_requeues_and_finishes_from_its_checkpoint(cluster, tmp_path, data_dir):
    run_dir, logs, steps = tmp_path / "run", tmp_path / "logs", 100
    # Long enough to be caught mid-run (tens of seconds of training after the first logged step); no periodic
    # checkpoints, so the only one is the signal's.
    job = submit(cluster, run_dir, logs, data_dir, f"training.max_steps={steps}", "checkpoint.save_every_steps=0",
                 "eval.eval_every_steps=0", "pruning.final_warmup_steps=25")
    log_file = logs / f"pins-t5-large-{job}.out"
    deadline = time.monotonic() + 600
    while not (log_file.exists() and re.search(rf"step \d+/{steps}", log_file.read_text())):
        assert time.monotonic() < deadline, "the job did not start training in 600 s"
        assert not finished(cluster.job(job)), log_file.read_text()[-3000:]
        time.sleep(0.5)
    cluster.run("scancel", "--signal=USR1", "--batch", str(job))  # what #SBATCH --signal=B:USR1@600 sends

    # The batch script checkpoints and requeues; SLURM holds a requeued job back a while: release it now.
    fields = cluster.wait(job, lambda f: int(f.get("Restarts", 0)) >= 1 or finished(f), 600, "requeued")
    assert int(fields.get("Restarts", 0)) == 1, log_file.read_text()[-3000:]
    cluster.release_requeued(job)
    fields = cluster.wait(job, finished, 1200, "finished after the requeue")
    log = log_file.read_text()
    assert fields["JobState"] == "COMPLETED", log[-3000:]

    assert "USR1: checkpointing, then requeueing" in log
    assert f"run not complete: requeueing job {job}" in log
    assert f"job {job} (restart 1)" in log
    saved = re.search(r"stopped after step (\d+)", log)
    resumed = re.search(r"resumed from \S+ \(step (\d+)\)", log)
    assert saved and resumed, log[-4000:]
    assert 0 < int(resumed.group(1)) == int(saved.group(1)) < steps  # from the signal's checkpoint, not from 0
    assert json.loads((run_dir / "COMPLETED").read_text())["steps"] == steps
    assert f"run complete: {run_dir}" in log
