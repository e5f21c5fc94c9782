"""The real ``slurm/pins_t5_large.sh`` across two SLURM nodes (network namespaces, ``slurm_two_nodes.py``),
one rank per node: both nodes' torchrun agents meet and the run ends with the same masks, weights and
teacher, bit for bit, as one node running both ranks; a node whose processes are killed mid-run stops
the job promptly, which is requeued and finishes from its last checkpoint, again bit for bit."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO
from slurm_two_nodes import NODES, TwoNodeCluster, missing_requirements
from sparse_dist.distributed.ops import OPS, extensions_dir

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# The tiny config's 12 steps (global batch 8, checkpoints every 4, evaluation every 4), as test_slurm.py runs
# it. One CPU thread per rank in both layouts (the job script would give the one rank of a node both of
# its CPUs): the number of threads can change how CPU kernels split their sums.
OPTIONS = ("--gpus-per-node=0", "--cpus-per-task=2", "--mem=2G")
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, request):
    problem = missing_requirements()
    if problem:
        pytest.skip(f"cannot start a two-node SLURM cluster: {problem}")
    cluster = TwoNodeCluster(tmp_path_factory.mktemp("slurm2"))
    cluster.env["TORCH_EXTENSIONS_DIR"] = str(request.getfixturevalue("ops_dir"))  # every job's environment
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def ops_dir(tmp_path_factory) -> Path:
    """The built C++ ops for the jobs, in a private copy of this user's extension directory: a run elsewhere on
    this machine (with another ninja, or other sources) cannot force a rebuild of minutes in the middle of
    a test, and a node killed here cannot leave a lock there (see sparse_dist/distributed/ops.py)."""
    private = tmp_path_factory.mktemp("torch_extensions")
    for op in OPS:
        if (extensions_dir() / op).is_dir():  # copy2: the modification times ninja compares are kept
            shutil.copytree(extensions_dir() / op, private / op, ignore=shutil.ignore_patterns("lock"))
    subprocess.run([sys.executable, "-m", "sparse_dist.distributed.ops"], check=True, capture_output=True,
                   env={**os.environ, "TORCH_EXTENSIONS_DIR": str(private), "PYTHONPATH": str(REPO)})
    return private


def submit(cluster, run_dir: Path, logs: Path, data_dir: Path, nodes: int, ranks_per_node: int) -> int:
    env = {"CONFIG": "configs/tiny_pins_t5_webnlg.yaml", "RUN_DIR": str(run_dir),
           "GPUS_PER_NODE": str(ranks_per_node), "VENV": os.environ.get("VENV", str(REPO / ".venv")),
           "OMP_NUM_THREADS": "1", "MASTER_PORT": ""}  # the job derives its port, inside its namespace
    logs.mkdir(parents=True, exist_ok=True)
    return cluster.sbatch("slurm/pins_t5_large.sh", f"data.local_dir={data_dir}", "metrics.progress_bar=false",
                          options=(f"--nodes={nodes}", *OPTIONS, f"--output={logs}/%x-%j.out"), env=env, cwd=REPO)


def finished(fields: dict) -> bool:
    return fields.get("JobState") in FINISHED


def run_to_the_end(cluster, root: Path, data_dir: Path, nodes: int, ranks_per_node: int) -> tuple[Path, str]:
    run_dir, logs = root / "run", root / "logs"
    job = submit(cluster, run_dir, logs, data_dir, nodes, ranks_per_node)
    fields = cluster.wait(job, finished, 900, "finished")
    log = (logs / f"pins-t5-large-{job}.out").read_text()
    assert fields["JobState"] == "COMPLETED", log[-4000:]
    return run_dir, log


@pytest.fixture(scope="module")
def two_node_run(cluster, tmp_path_factory, data_dir):
    """The tiny config on two nodes, one rank each: (run directory, job log)."""
    return run_to_the_end(cluster, tmp_path_factory.mktemp("two_nodes"), data_dir, nodes=2, ranks_per_node=1)


# --- comparing runs ----------------------------------------------------------------------------------------

def artifacts(run_dir: Path) -> dict[str, Path]:
    """What a finished run leaves that must not depend on how its ranks were placed: the exported model and
    mask, and the last checkpoint (engine state with ZeRO shards and Adam moments, and each rank's pruning
    state: importance statistics, masks, the self-regularization teacher's partition, RNG)."""
    last = (run_dir / "checkpoints" / "latest").read_text().strip()
    found = {}
    for base in (run_dir / "final", run_dir / "checkpoints" / last):
        for path in sorted(base.rglob("*")):
            if path.is_file() and path.name != "manifest.json":  # the manifest holds hashes of the rest
                found[str(path.relative_to(run_dir))] = path
    return found


# Python's and numpy's generators are saved with the other RNG states but never seeded, and nothing in a run
# draws from them: their states differ between any two runs, however the ranks are placed.
UNSEEDED = ("/rng/python", "/rng/numpy")


def differences(a, b, where: str = "") -> list[str]:
    """Where two loaded objects differ; tensors compared bit for bit."""
    if where.endswith(UNSEEDED):
        return []
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        same = a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(-1).view(torch.uint8),
                                                                         b.view(-1).view(torch.uint8))
        if same:
            return []
        delta = (a.double() - b.double()).abs().max().item() if a.shape == b.shape else float("nan")
        return [f"{where}: tensors differ (max abs difference {delta:.3g})"]
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{where}: keys {sorted(map(str, a.keys() ^ b.keys()))} in one only"]
        return [d for key in a for d in differences(a[key], b[key], f"{where}/{key}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where}: length {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]")]
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):  # numpy's RNG state
        return [] if a.dtype == b.dtype and np.array_equal(a, b) else [f"{where}: arrays differ"]
    if type(a) is type(b) and hasattr(a, "__dict__") and type(a).__eq__ is object.__eq__:  # DeepSpeed's loss scaler
        return differences(vars(a), vars(b), where)
    return [] if a == b else [f"{where}: {a!r:.80} != {b!r:.80}"]


def compare_runs(a: Path, b: Path) -> tuple[int, list[str]]:
    """(number of files compared, the differences) between the artifacts of two finished runs."""
    files_a, files_b = artifacts(a), artifacts(b)
    assert files_a.keys() == files_b.keys(), sorted(files_a.keys() ^ files_b.keys())
    found = []
    for name, path in files_a.items():
        other = files_b[name]
        if path.read_bytes() == other.read_bytes():
            continue
        if path.suffix in {".pt", ".bin"}:  # pickles may differ in bytes only; compare what they hold
            load = {"map_location": "cpu", "weights_only": False}
            found += differences(torch.load(path, **load), torch.load(other, **load), name)
        else:
            found.append(f"{name}: bytes differ")
    return len(files_a), found


def placements(log: str) -> set[tuple[str, int]]:
    """(host, node rank) of every rank, from the lines each rank logs at startup."""
    return {(host, int(node)) for host, node in re.findall(r"rank \d+ of \d+ on host (\S+): node rank (\d+)", log)}


# --- tests -------------------------------------------------------------------------------------------------

def test_two_nodes_one_rank_each_match_one_node_with_two_ranks(cluster, two_node_run, tmp_path, data_dir):
    run_dir, log = two_node_run
    expected = "command: srun --nodes=2 --ntasks=2 --ntasks-per-node=1 torchrun --nnodes 2 --nproc_per_node 1"
    assert expected in log, log[:3000]
    assert "2 node(s) x 1 ranks" in log and "2 rank(s)" in log and "step 12/12" in log
    assert placements(log) == {(NODES[0], 0), (NODES[1], 1)}, log[:6000]  # each node's agent started a rank
    assert json.loads((run_dir / "COMPLETED").read_text())["steps"] == 12

    one_node_dir, one_node_log = run_to_the_end(cluster, tmp_path, data_dir, nodes=1, ranks_per_node=2)
    assert "1 node(s) x 2 ranks" in one_node_log
    assert len({host for host, _ in placements(one_node_log)}) == 1
    compared, found = compare_runs(run_dir, one_node_dir)
    assert compared > 10 and not found, found
    last = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()
    state = torch.load(last / "trainer_rank1.pt", map_location="cpu", weights_only=False)
    teacher = state["distiller"]["teacher"]  # this rank's partition of every teacher weight: (start, values)
    assert len(teacher) > 10 and all(isinstance(part[1], torch.Tensor) for part in teacher.values()), teacher.keys()
    final_a = json.loads((run_dir / "COMPLETED").read_text())["final"]
    assert final_a == json.loads((one_node_dir / "COMPLETED").read_text())["final"]


def submit_two_nodes_until_first_checkpoint(cluster, tmp_path: Path, data_dir) -> tuple[int, Path, Path, Path]:
    """Submit the tiny job on both nodes, one rank each, and return once its first checkpoint (step 4 of 12)
    is saved: the job id, run directory, job log and the checkpoint's ``latest`` file."""
    run_dir, logs = tmp_path / "run", tmp_path / "logs"
    job = submit(cluster, run_dir, logs, data_dir, nodes=2, ranks_per_node=1)
    log_file, latest = logs / f"pins-t5-large-{job}.out", run_dir / "checkpoints" / "latest"
    deadline = time.monotonic() + 600
    while not latest.exists():
        assert time.monotonic() < deadline, "no checkpoint in 600 s"
        assert not finished(cluster.job(job)), log_file.read_text()[-3000:]
        time.sleep(0.1)
    return job, run_dir, log_file, latest


def test_a_node_killed_mid_run_stops_the_job_which_is_requeued_and_finishes_from_its_checkpoint(
        cluster, two_node_run, tmp_path, data_dir):
    job, run_dir, log_file, latest = submit_two_nodes_until_first_checkpoint(cluster, tmp_path, data_dir)

    # Node 1 dies: its torchrun agent and rank, everything of the job step in its namespace (its slurmd and
    # slurmstepd live on, as a node's daemons would not, so that SLURM reports the step's failure at once).
    killed = cluster.kill_node_processes(1)
    killed_at, saved = time.monotonic(), latest.read_text().strip()
    assert any("torchrun" in command for command in killed.values()), killed
    assert any("launch/train.py" in command and "torchrun" not in command for command in killed.values()), killed

    # The other node's ranks stop (no rank waits on the dead one), and the job is requeued, not completed.
    fields = cluster.wait(job, lambda f: int(f.get("Restarts", 0)) >= 1 or finished(f), 120, "requeued")
    requeued_s = time.monotonic() - killed_at
    assert int(fields.get("Restarts", 0)) == 1 and fields["JobState"] != "COMPLETED", log_file.read_text()[-3000:]
    while any("launch/train.py" in c for node in (0, 1) for c in cluster.node_processes(node).values()):
        assert time.monotonic() - killed_at < 120, cluster.node_processes(0)
        time.sleep(0.5)
    stopped_s = time.monotonic() - killed_at
    first_attempt = log_file.read_text()
    assert re.search(rf"ranks failed \(exit status \d+\) after saving step\d+: requeueing job {job}", first_attempt)
    assert "run complete" not in first_attempt

    # SLURM holds a requeued job back a while: release it now. It resumes from the last checkpoint.
    cluster.release_requeued(job)
    fields = cluster.wait(job, finished, 900, "finished after the requeue")
    log = log_file.read_text()
    assert fields["JobState"] == "COMPLETED", log[-4000:]
    assert f"job {job} (restart 1)" in log
    resumed = re.search(r"resumed from \S+ \(step (\d+)\)", log)
    assert resumed and 0 < int(resumed.group(1)) < 12, log[-4000:]
    assert int(resumed.group(1)) >= int(saved.removeprefix("step"))
    compared, found = compare_runs(two_node_run[0], run_dir)
    assert compared > 10 and not found, found
    print(f"killed {sorted(killed.values())} after {saved}; all ranks gone {stopped_s:.1f} s later, job requeued "
          f"after {requeued_s:.1f} s, resumed from step {resumed.group(1)}; {compared} files bit for bit")


def remaining(run_dir: Path) -> float:
    return json.loads((run_dir / "COMPLETED").read_text())["sparsity"]["remaining"]


def zero_patterns(run_dir: Path) -> dict[str, torch.Tensor]:
    """Where each 2-D weight of the exported model is zero: the masks folded into it."""
    from safetensors.torch import load_file

    weights = load_file(run_dir / "final" / "model" / "model.safetensors")
    return {name: tensor == 0 for name, tensor in weights.items() if tensor.dim() == 2}


def test_a_two_node_job_stopped_by_usr1_and_requeued_onto_one_node_resumes_there(
        cluster, two_node_run, tmp_path, data_dir):
    # Two nodes, one rank each; sdnode1 is drained while the job runs, and the job that USR1 requeues asks for
    # one node (SLURM gave a --nodes=1-2 job one node even with both idle, so the count is set, not left to it):
    # a 2-rank ZeRO-3 checkpoint is resumed by 1 rank on sdnode0.
    job, run_dir, log_file, latest = submit_two_nodes_until_first_checkpoint(cluster, tmp_path, data_dir)
    assert "2 node(s) x 1 ranks" in log_file.read_text()
    cluster.run("scontrol", "update", f"NodeName={NODES[1]}", "State=DRAIN", "Reason=one-node-resume-test")
    try:
        cluster.run("scancel", "--signal=USR1", "--batch", str(job))  # the time-limit warning's path
        fields = cluster.wait(job, lambda f: int(f.get("Restarts", 0)) >= 1 or finished(f), 300, "requeued")
        first_attempt = log_file.read_text()
        assert int(fields.get("Restarts", 0)) == 1, first_attempt[-3000:]
        saved = latest.read_text().strip()
        assert re.search(rf"USR1: the ranks stopped \(launcher exit status \d+\) after saving {saved}", first_attempt)
        assert "run not complete: requeueing job" in first_attempt
        # One node with one task and its CPUs: NumNodes alone leaves NumTasks=2 (one per node), which needs two.
        cluster.run("scontrol", "update", f"JobId={job}", "NumTasks=1", "NumCPUs=2")
        cluster.run("scontrol", "update", f"JobId={job}", "NumNodes=1-1")
        cluster.release_requeued(job)
        fields = cluster.wait(job, finished, 900, "finished after the requeue")
    finally:
        cluster.run("scontrol", "update", f"NodeName={NODES[1]}", "State=RESUME", check=False)
    log = log_file.read_text()
    assert fields["JobState"] == "COMPLETED", log[-4000:]
    assert f"job {job} (restart 1) on {NODES[0]}: 1 node(s) x 1 ranks" in log, log[-6000:]
    resumed = re.search(r"resumed from \S+ \(step (\d+)\)", log)
    assert resumed and int(resumed.group(1)) == int(saved.removeprefix("step")), log[-4000:]
    assert json.loads((run_dir / "COMPLETED").read_text())["steps"] == 12
    # The kept count is exact on any world size; the masks may differ from the uninterrupted two-node run's
    # only where a score lies within the rounding of a sum over ranks of the threshold (README).
    assert remaining(run_dir) == remaining(two_node_run[0])
    ours, theirs = zero_patterns(run_dir), zero_patterns(two_node_run[0])
    assert ours.keys() == theirs.keys() and len(ours) > 10
    flipped = sum(int((ours[name] != theirs[name]).sum()) for name in ours)
    total = sum(pattern.numel() for pattern in ours.values())
    print(f"USR1 after {saved} on two nodes; resumed on one rank from step {resumed.group(1)}; remaining "
          f"{remaining(run_dir)}; {flipped} of {total} mask bits differ from the uninterrupted two-node run")


def run_files(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and "torchrun_errors" not in p.parts}


def unfinished_copy(two_node_run, tmp_path: Path) -> Path:
    """A copy of the two-node run as it was before its last step's completion: checkpoints, no marker."""
    run_dir = tmp_path / "run"
    shutil.copytree(two_node_run[0], run_dir, ignore=shutil.ignore_patterns("final", "COMPLETED"))
    return run_dir


def test_a_rendezvous_port_taken_on_the_first_node_stops_the_job_with_one_line(cluster, two_node_run, tmp_path,
                                                                              data_dir):
    run_dir = unfinished_copy(two_node_run, tmp_path)
    before = run_files(run_dir)
    holder = subprocess.Popen([*cluster.in_node(0), sys.executable, "-c",
                               "import socket, sys, time; s = socket.socket(); s.bind(('', 29500)); s.listen(); "
                               "print('held', flush=True); time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        logs = tmp_path / "logs"
        logs.mkdir()
        job = cluster.sbatch("slurm/pins_t5_large.sh", f"data.local_dir={data_dir}",
                             options=("--nodes=2", *OPTIONS, f"--output={logs}/%x-%j.out"), cwd=REPO,
                             env={"CONFIG": "configs/tiny_pins_t5_webnlg.yaml", "RUN_DIR": str(run_dir),
                                  "GPUS_PER_NODE": "1", "VENV": os.environ.get("VENV", str(REPO / ".venv")),
                                  "MASTER_PORT": "29500"})
        fields = cluster.wait(job, finished, 300, "finished")
    finally:
        holder.kill()
        holder.wait()
    log = (logs / f"pins-t5-large-{job}.out").read_text()
    assert fields["JobState"] == "FAILED" and fields["ExitCode"] == "2:0", log
    assert log.strip().splitlines()[-1] == (f"MASTER_PORT 29500 is in use on {NODES[0]} (another job's rendezvous?); "
                                            "unset it to let the job pick a free port")
    assert run_files(run_dir) == before


def test_a_node_that_never_arrives_ends_the_job_at_the_rendezvous_timeout_with_one_line(
        cluster, two_node_run, tmp_path, data_dir):
    # Node 1's job step is frozen (SIGSTOP) as soon as it appears, before its torchrun can join: node 0's
    # agent waits RDZV_TIMEOUT_S for it, then fails; srun ends the frozen step.
    run_dir = unfinished_copy(two_node_run, tmp_path)
    before = run_files(run_dir)
    logs = tmp_path / "logs"
    logs.mkdir()
    submitted = time.monotonic()
    job = cluster.sbatch("slurm/pins_t5_large.sh", f"data.local_dir={data_dir}", "metrics.progress_bar=false",
                         options=("--nodes=2", *OPTIONS, f"--output={logs}/%x-%j.out"), cwd=REPO,
                         env={"CONFIG": "configs/tiny_pins_t5_webnlg.yaml", "RUN_DIR": str(run_dir),
                              "GPUS_PER_NODE": "1", "VENV": os.environ.get("VENV", str(REPO / ".venv")),
                              "OMP_NUM_THREADS": "1", "MASTER_PORT": "", "RDZV_TIMEOUT_S": "10"})
    frozen: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 300
        while not frozen:
            assert time.monotonic() < deadline, "node 1's job step did not start in 300 s"
            for pid, command in cluster.node_processes(1).items():
                os.kill(pid, signal.SIGSTOP)
                frozen[pid] = command
            time.sleep(0.02)
        assert any("torchrun" in command for command in frozen.values()), frozen
        fields = cluster.wait(job, finished, 600, "finished")
        ended_s = time.monotonic() - submitted
        while any(cluster.node_processes(node) for node in (0, 1)):  # SLURM kills the frozen step (KillWait 10 s)
            assert time.monotonic() - submitted - ended_s < 120, [cluster.node_processes(n) for n in (0, 1)]
            time.sleep(0.5)
        gone_s = time.monotonic() - submitted
    finally:
        for pid in frozen:  # whatever SLURM left frozen (nothing, when the test passes)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    log = (logs / f"pins-t5-large-{job}.out").read_text()
    assert fields["JobState"] == "FAILED", log[-4000:]
    assert log.strip().splitlines()[-2:] == [
        "rendezvous error on node 0: not every node's torchrun joined within 10 s (RDZV_TIMEOUT_S): a node down or "
        "unreachable, or its torchrun started with another endpoint",
        re.search(r"rendezvous failed at \S+ \(exit status \d+\), no rank started: the job stops; the run directory "
                  r"is as it was", log).group(0)], log[-4000:]
    assert not re.search(r"rank \d+ of \d+ on host", log)  # no rank started
    assert run_files(run_dir) == before
    print(f"node 1 frozen ({len(frozen)} processes); the job ended {ended_s:.0f} s after its submission, "
          f"the last of its processes gone {gone_s:.0f} s after it")
