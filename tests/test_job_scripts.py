"""The decisions of the job scripts in ``slurm/`` (complete, requeue, which rendezvous port), run by bash with
stand-ins for ``srun`` and ``scontrol``: seconds, no cluster. ``test_slurm.py`` runs them on a real one."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runs import DATA_DIR

REPO = Path(__file__).resolve().parents[1]
CONFIG = "configs/tiny_bert_sst2.yaml"

# srun stands in for srun + torchrun + the ranks: it records its command line, environment and pid, then runs
# until USR1 or TERM, which it answers like ranks that save a checkpoint and stop: it writes the checkpoint
# marker and exits with STUB_SIGNAL_STATUS (75, the ranks' RESUMABLE_EXIT, as the deepspeed launcher passes it
# on; torchrun exits 1 instead). With STUB_FAIL set it fails at once instead, like ranks killed with their
# node, or like torchrun agents whose rendezvous timed out (they write their error file and exit 1).
SRUN = """#!/bin/bash
echo "$@" > "$STUBS/srun.args"
printf '%s\\0' "$@" > "$STUBS/srun.argv"
echo "$MASTER_PORT" > "$STUBS/srun.port"
echo $$ > "$STUBS/srun.pid"
if [ "${STUB_FAIL:-}" = rendezvous_timeout ]; then
  echo '{"message": {"message": "RendezvousTimeoutError: ", "extraInfo": {}}}' > "$RUN_DIR/torchrun_errors/node0.json"
  exit 1
fi
if [ -n "${STUB_FAIL:-}" ]; then  # the ranks die (SIGKILL: status 137), after saving a checkpoint or before
  if [ "$STUB_FAIL" = after_checkpoint ]; then
    mkdir -p "$RUN_DIR/checkpoints" && echo step00000004 > "$RUN_DIR/checkpoints/latest"
  fi
  exit 137
fi
stop() {
  mkdir -p "$RUN_DIR/checkpoints" && echo step00000008 > "$RUN_DIR/checkpoints/latest"
  exit "${STUB_SIGNAL_STATUS:-75}"
}
trap stop USR1 TERM
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
    environment = {k: v for k, v in environment.items() if v is not None}  # None: not set at all
    return subprocess.Popen(["bash", "slurm/smp_bert_base.sh", f"data.local_dir={DATA_DIR}", *overrides], cwd=REPO,
                            env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def output_of(job: subprocess.Popen, timeout_s: float = 120) -> str:
    """The job's output once it ends; it and its stand-ins are killed if it has not after ``timeout_s``."""
    try:
        return job.communicate(timeout=timeout_s)[0]
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.communicate()


def wait_for(path: Path, job: subprocess.Popen, timeout_s: float = 120) -> None:
    """Until ``path`` exists; the job and its stand-ins are killed if it ends or times out first."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if job.poll() is not None or time.monotonic() > deadline:
            if job.poll() is None:
                os.killpg(job.pid, signal.SIGKILL)
            raise AssertionError(f"{path} did not appear:\n{job.communicate()[0]}")
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
    output = output_of(job)
    assert job.returncode == 0, output
    assert f"not complete: {run_dir / 'COMPLETED'} records 8 steps and training.max_steps is 3000" in output
    assert "USR1: the ranks stopped (launcher exit status 75) after saving step00000008" in output
    assert "run not complete: requeueing job 4242" in output and "run complete" not in output
    assert (tmp_path / "venv" / "bin" / "scontrol.log").read_text().split("\n")[0] == "requeue 4242"


def held(port: int) -> socket.socket:
    """A listening socket on ``port``, as another job's rendezvous store would hold it."""
    sock = socket.socket()
    sock.bind(("", port))
    sock.listen()
    return sock


def test_the_rendezvous_port_is_the_jobs_own_and_free(tmp_path):
    derived = 10000 + 4242 % 20000
    with held(derived):  # another job's store sits on the port job 4242 would derive
        job = start_job(tmp_path, tmp_path / "run", MASTER_PORT=None)
        stubs = tmp_path / "venv" / "bin"
        try:
            wait_for(stubs / "srun.started", job)
        finally:
            os.killpg(job.pid, signal.SIGKILL)
            job.communicate()
    port = int((stubs / "srun.port").read_text())
    assert derived < port < derived + 100
    command = (stubs / "srun.args").read_text()
    assert f"--rdzv_endpoint localhost:{port} " in command  # where every node's torchrun meets
    assert '--rdzv_conf "is_host=$(( SLURM_NODEID == 0 )),join_timeout=$2"' in command  # the first node hosts
    assert f"node {tmp_path / 'run' / 'torchrun_errors'} 600 torchrun " in command  # RDZV_TIMEOUT_S's default
    # What each node runs: its torchrun, told whether it hosts the store and how long to wait for the others,
    # with an error file of its own (here `echo` stands in for torchrun).
    argv = (stubs / "srun.argv").read_text().split("\0")[:-1]
    wrapper = argv.index("-c")
    per_node, arguments = argv[wrapper + 1], argv[wrapper + 2:]
    assert arguments[:4] == ["node", str(tmp_path / "run" / "torchrun_errors"), "600", "torchrun"]
    for node in (0, 1):
        ran = subprocess.run(["bash", "-c", per_node.replace('exec "$3"', 'echo "$TORCHELASTIC_ERROR_FILE"; exec echo'),
                              *arguments], env={**os.environ, "SLURM_NODEID": str(node)}, capture_output=True,
                             text=True, check=True).stdout.splitlines()
        assert ran[0] == str(tmp_path / "run" / "torchrun_errors" / f"node{node}.json")
        assert ran[1].startswith(f"--rdzv_conf is_host={int(node == 0)},join_timeout=600 --nnodes 1 ")
        assert ran[1].endswith(f"launch/train.py --config {CONFIG} job.run_dir={tmp_path / 'run'} "
                               f"data.local_dir={DATA_DIR}")


def test_a_given_rendezvous_port_in_use_stops_the_job_with_one_line(tmp_path):
    with socket.socket() as probe:
        probe.bind(("", 0))
        port = probe.getsockname()[1]
    with held(port):
        job = start_job(tmp_path, tmp_path / "run", MASTER_PORT=str(port))
        output = output_of(job, timeout_s=60)
    assert job.returncode == 2, output
    assert output.strip().splitlines()[-1] == (f"MASTER_PORT {port} is in use on {socket.gethostname()} (another "
                                               "job's rendezvous?); unset it to let the job pick a free port")
    assert not (tmp_path / "venv" / "bin" / "srun.started").exists()


def test_ranks_that_fail_after_saving_a_checkpoint_requeue_the_job(tmp_path):
    run_dir = tmp_path / "run"
    job = start_job(tmp_path, run_dir, STUB_FAIL="after_checkpoint")
    output = output_of(job)
    assert job.returncode == 0, output
    assert "ranks failed (exit status 137) after saving step00000004: requeueing job 4242 to resume from it" in output
    assert (tmp_path / "venv" / "bin" / "scontrol.log").read_text().split("\n")[0] == "requeue 4242"


def test_ranks_that_fail_before_any_new_checkpoint_stop_the_job(tmp_path):
    # A failure that comes back before the next checkpoint (a bug, bad data) must not requeue forever.
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "latest").write_text("step00000004\n")  # from an earlier attempt
    job = start_job(tmp_path, run_dir, STUB_FAIL="before_checkpoint")
    output = output_of(job)
    assert job.returncode == 137, output
    assert output.strip().splitlines()[-1] == ("run stopped (exit status 137) before completing: resubmit to resume "
                                               "from its checkpoint")
    assert not (tmp_path / "venv" / "bin" / "scontrol.log").exists()


# torchrun exits 1 after a signal whatever its ranks return (its agent re-raises the SignalException its
# handler raised, after the ranks saved and exited 75); the deepspeed launcher passes their 75 on. The job
# script's decisions must be the same for both.
LAUNCHER_STATUS = pytest.mark.parametrize("status", [75, 1], ids=["deepspeed-launcher", "torchrun"])


def test_usr1_to_the_job_requeues_it_although_torchrun_exits_1(tmp_path):
    status = 1  # the deepspeed launcher's 75: the first test
    job = start_job(tmp_path, tmp_path / "run", STUB_SIGNAL_STATUS=str(status))
    wait_for(tmp_path / "venv" / "bin" / "srun.started", job)
    job.send_signal(signal.SIGUSR1)
    output = output_of(job)
    assert job.returncode == 0, output
    assert f"USR1: the ranks stopped (launcher exit status {status}) after saving step00000008" in output
    assert output.strip().splitlines()[-1] == "run not complete: requeueing job 4242"
    assert (tmp_path / "venv" / "bin" / "scontrol.log").read_text().splitlines() == ["requeue 4242"]


@LAUNCHER_STATUS
def test_term_to_the_job_stops_it_resumable_whatever_the_launcher_returns(tmp_path, status):
    job = start_job(tmp_path, tmp_path / "run", STUB_SIGNAL_STATUS=str(status))
    wait_for(tmp_path / "venv" / "bin" / "srun.started", job)
    job.send_signal(signal.SIGTERM)
    output = output_of(job)
    assert job.returncode == 75, output
    assert output.strip().splitlines()[-1] == (f"TERM: the ranks stopped after saving step00000008 (launcher exit "
                                               f"status {status}): resubmit to resume from it")
    assert not (tmp_path / "venv" / "bin" / "scontrol.log").exists()


def test_usr1_to_the_ranks_only_requeues_the_job_after_their_checkpoint(tmp_path):
    status = 1  # torchrun's, for ranks that exit 75 on a signal sent to them
    # scancel --signal=USR1 without --batch, or #SBATCH --signal without B:, signals the job steps, not the script.
    stubs = tmp_path / "venv" / "bin"
    job = start_job(tmp_path, tmp_path / "run", STUB_SIGNAL_STATUS=str(status))
    wait_for(stubs / "srun.started", job)
    os.kill(int((stubs / "srun.pid").read_text()), signal.SIGUSR1)
    output = output_of(job)
    assert job.returncode == 0, output
    assert output.strip().splitlines()[-1] == (f"ranks failed (exit status {status}) after saving step00000008: "
                                               "requeueing job 4242 to resume from it")
    assert (stubs / "scontrol.log").read_text().splitlines() == ["requeue 4242"]


def test_a_rendezvous_that_times_out_stops_the_job_with_one_line_and_leaves_the_run_alone(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "latest").write_text("step00000004\n")  # from an earlier attempt
    job = start_job(tmp_path, run_dir, STUB_FAIL="rendezvous_timeout", RDZV_TIMEOUT_S="30", MASTER_PORT=None)
    output = output_of(job)
    port = int((tmp_path / "venv" / "bin" / "srun.port").read_text())
    assert job.returncode == 1, output
    assert output.strip().splitlines()[-2:] == [
        "rendezvous error on node 0: not every node's torchrun joined within 30 s (RDZV_TIMEOUT_S): a node down or "
        "unreachable, or its torchrun started with another endpoint",
        f"rendezvous failed at localhost:{port} (exit status 1), no rank started: the job stops; the run directory is "
        "as it was"]
    assert (run_dir / "checkpoints" / "latest").read_text() == "step00000004\n"
    assert not (tmp_path / "venv" / "bin" / "scontrol.log").exists()
