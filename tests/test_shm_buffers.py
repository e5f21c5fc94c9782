"""DeepSpeed's CPU shared-memory all-reduce buffers leave nothing in /dev/shm, whether the ranks exit or are
killed, and the op's collectives still work once the names are gone (sparse_dist/distributed/shm.py).

The ranks are started here as plain processes (``LOCAL_SIZE`` set as the ``deepspeed`` launcher sets it,
which is what makes DeepSpeed create the buffers), so that the test can SIGKILL them. Only the buffers of
the port this test's ranks used are ever removed: other jobs on the machine have theirs."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sparse_dist.distributed.env import free_port
from sparse_dist.distributed.shm import BUFFER_PREFIX, mapped_shm_buffers

WORLD_SIZE = 2

# One rank: join the job, reduce a tensor under and one over the op's 1 MB threshold (its two code paths)
# through DeepSpeed's shared-memory all-reduce, report, then exit or wait to be killed.
RANK_PROGRAM = """
import os, sys, time
import torch
import deepspeed.comm as ds_comm
from sparse_dist.distributed.env import init_distributed
from sparse_dist.distributed.shm import BUFFER_PREFIX

init_distributed()
rank = int(os.environ["RANK"])
lines = [line.split(maxsplit=5)[5].rstrip("\\n") for line in open("/proc/self/maps") if BUFFER_PREFIX in line]
named = {line for line in lines if not line.endswith(" (deleted)")}
deleted = {line for line in lines if line.endswith(" (deleted)")}
exact = []
for numel in (1_000, 600_000):  # 4 KB and 2.4 MB of float32
    tensor = torch.full((numel,), float(rank + 1))
    ds_comm.inference_all_reduce(tensor)
    exact.append(bool(torch.equal(tensor, torch.full((numel,), 3.0))))
ready = f"mapped {len(named) + len(deleted)} named {len(named)} exact {exact}"
report = os.path.join(os.environ["READY_DIR"], f"rank{rank}")
with open(report + ".tmp", "w") as handle:
    handle.write(ready)
os.replace(report + ".tmp", report)  # whole, or not there yet
if sys.argv[1] == "wait":
    time.sleep(600)
"""


def left_buffers(port: int) -> list[Path]:
    """This port's DeepSpeed buffers still named in /dev/shm."""
    return sorted(Path(BUFFER_PREFIX).parent.glob(f"{Path(BUFFER_PREFIX).name}*_{port}_*"))


def run_ranks(tmp_path: Path, then: str) -> tuple[dict[int, str], list[Path]]:
    """Start the ranks, wait for both to report, let them exit (``then="exit"``) or SIGKILL them
    (``then="wait"``); their reports and the buffers their port left behind."""
    port = free_port()
    base = {key: value for key, value in os.environ.items()
            if key not in ("LOCAL_WORLD_SIZE", "TORCHELASTIC_USE_AGENT_STORE")}
    processes = []
    try:
        for rank in range(WORLD_SIZE):
            env = dict(base, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE),
                       LOCAL_SIZE=str(WORLD_SIZE), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                       OMP_NUM_THREADS="1", READY_DIR=str(tmp_path))
            log = open(tmp_path / f"rank{rank}.log", "w")
            processes.append(subprocess.Popen([sys.executable, "-c", RANK_PROGRAM, then], env=env,
                                              stdout=log, stderr=subprocess.STDOUT))
        reports = tmp_path / "rank0", tmp_path / "rank1"
        deadline = time.monotonic() + 300
        while not all(path.exists() for path in reports):
            failed = [p.returncode for p in processes if p.poll() not in (None, 0)]
            if failed or time.monotonic() > deadline:
                logs = "\n".join((tmp_path / f"rank{r}.log").read_text()[-2000:] for r in range(WORLD_SIZE))
                pytest.fail(f"ranks did not report (exit codes {failed}):\n{logs}")
            time.sleep(0.2)
        if then == "wait":
            for process in processes:
                process.send_signal(signal.SIGKILL)
        for process in processes:
            process.wait(timeout=120)
        if then == "exit":
            assert [p.returncode for p in processes] == [0, 0]
        else:
            assert [p.returncode for p in processes] == [-signal.SIGKILL] * WORLD_SIZE
        return {r: (tmp_path / f"rank{r}").read_text() for r in range(WORLD_SIZE)}, left_buffers(port)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        for path in left_buffers(port):  # this test's own port only
            path.unlink()


def test_mapped_buffers_are_read_from_the_maps_file(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text(
        f"7f00-7f10 rw-s 00000000 00:1a 1001                       {BUFFER_PREFIX}0_127.0.0.1_29500_0\n"
        f"7f10-7f20 rw-s 00000000 00:1a 1002                       {BUFFER_PREFIX}0_127.0.0.1_29500_1 (deleted)\n"
        "7f20-7f30 r--p 00000000 08:01 2003                       /usr/lib/libc.so.6\n"
        "7f30-7f40 rw-p 00000000 00:00 0\n")
    assert mapped_shm_buffers(maps) == {Path(f"{BUFFER_PREFIX}0_127.0.0.1_29500_0"): 1001}
    assert mapped_shm_buffers(tmp_path / "missing") == {}


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("then", ["exit", "wait"], ids=["normal_exit", "sigkill"])
def test_no_buffer_outlives_its_ranks(tmp_path, then):
    reports, left = run_ranks(tmp_path, then)
    assert left == []
    # Each rank mapped its own and its peer's buffer, no longer named, and both reductions were exact.
    assert reports == {r: "mapped 2 named 0 exact [True, True]" for r in range(WORLD_SIZE)}
