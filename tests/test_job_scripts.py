"""The decisions of the job scripts in ``slurm/`` (complete, requeue, which rendezvous port), run by bash with
stand-ins for ``srun`` and ``scontrol``: seconds, no cluster. ``test_slurm.py`` runs them on a real one."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from runs import DATA_DIR

REPO = Path(__file__).resolve().parents[1]
CONFIG = "configs/tiny_bert_sst2.yaml"

# srun stands in for srun + torchrun + the ranks: it records its command line and environment, then runs
# until USR1 or TERM, which it answers like a run that saved its checkpoint (status 75).
SRUN = """#!/bin/bash
echo "$@" > "$STUBS/srun.args"
echo "$MASTER_PORT" > "$STUBS/srun.port"
trap 'exit 75' USR1 TERM
touch "$STUBS/srun.started"
while true; do sleep 0.1; done
"""
SCONTROL = """#!/bin/bash
if [ "$1 $2" = "show hostnames" ]; then echo localhost; else echo "$@" >> "$STUBS/scontrol.log"; fi
"""


def start_job(tmp_path: Path, run_dir: Path, *overrides: str, **env: str) -> subprocess.Popen:
    """``slurm/smp_bert_base.sh`` as SLURM would start it on the first node of job 4242."""
    stubs = tmp_path / "venv" / "bin"
    stubs.mkdir(parents=True)
    python = f'#!/bin/sh\nexec "{sys.executable}" "$@"\n'  # this environment's Python, as the job's venv
    for name, text in {"srun": SRUN, "scontrol": SCONTROL, "python": python}.items():
        (stubs / name).write_text(text)
        (stubs / name).chmod(0o755)
    environment = {**os.environ, "PYTHONPATH": str(REPO), "VENV": str(tmp_path / "venv"), "STUBS": str(stubs),
                   "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "localhost", "SLURM_JOB_NUM_NODES": "1",
                   "SLURM_SUBMIT_DIR": str(REPO), "CONFIG": CONFIG, "RUN_DIR": str(run_dir), "GPUS_PER_NODE": "1",
                   **env}
    return subprocess.Popen(["bash", "slurm/smp_bert_base.sh", f"data.local_dir={DATA_DIR}", *overrides], cwd=REPO,
                            env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(path: Path, job: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert job.poll() is None, job.communicate()[0]
        assert time.monotonic() < deadline, f"{path} did not appear in {timeout_s} s"
        time.sleep(0.2)


def test_a_completed_marker_of_a_shorter_run_does_not_end_an_extended_job(tmp_path):
    # A finished 8-step run, extended to 3000 steps and sent USR1 (time limit) while training: it must be
    # requeued, not declared complete by the 8-step run's marker.
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "COMPLETED").write_text(json.dumps({"steps": 8, "max_steps": 8, "final": {}, "evals": []}))
    job = start_job(tmp_path, run_dir, "training.max_steps=3000")
    wait_for(tmp_path / "venv" / "bin" / "srun.started", job)
    job.send_signal(signal.SIGUSR1)
    output = job.communicate(timeout=120)[0]
    assert job.returncode == 0, output
    assert f"not complete: {run_dir / 'COMPLETED'} records 8 steps and training.max_steps is 3000" in output
    assert "run not complete: requeueing job 4242" in output and "run complete" not in output
    assert (tmp_path / "venv" / "bin" / "scontrol.log").read_text().split("\n")[0] == "requeue 4242"
