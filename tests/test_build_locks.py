"""A build lock of a C++ op left by a killed process is found and reported in one line, before any rank would
wait on it forever; a lock that a live build holds is not (``sparse_dist/distributed/ops.py``)."""

import os
import signal
import subprocess
import sys
import time

from conftest import REPO
from runs import DATA_DIR
from sparse_dist.distributed.ops import stale_build_locks

# What torch.utils.cpp_extension does around every build: create the lock with FileBaton, keep it open.
HOLD_LOCK = """
import sys, time
from torch.utils.file_baton import FileBaton
assert FileBaton(sys.argv[1]).try_acquire()
print("locked", flush=True)
time.sleep(600)
"""


def test_a_lock_left_by_a_killed_build_is_stale_and_a_held_one_is_not(tmp_path):
    lock = tmp_path / "deepspeed_shm_comm" / "lock"
    lock.parent.mkdir()
    builder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert builder.stdout.readline().strip() == "locked"
        later = time.time() + 60
        assert stale_build_locks(tmp_path, now=later) == []  # a build under way holds it
    finally:
        builder.send_signal(signal.SIGKILL)  # killed while building: torch never removes the lock
        builder.wait()
    assert lock.exists()
    assert stale_build_locks(tmp_path, now=time.time()) == []  # just made: torch may be removing it now
    [line] = stale_build_locks(tmp_path, now=later)
    assert line.startswith(f"{lock} was left by a process killed while building the op deepspeed_shm_comm")
    assert f"rm {lock}" in line


def test_a_start_beside_a_stale_lock_stops_with_one_line(tmp_path):
    lock = tmp_path / "sparse_dist_band_pass" / "lock"
    lock.parent.mkdir()
    lock.touch()
    old = time.time() - 120
    os.utime(lock, (old, old))
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path), "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "launch.train", "--check", "--config", "configs/tiny_bert_sst2.yaml",
                          f"data.local_dir={DATA_DIR}", f"job.run_dir={tmp_path / 'run'}"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines()[-1].startswith(f"build error: {lock} was left by a process killed"), \
        out.stderr[-2000:]
