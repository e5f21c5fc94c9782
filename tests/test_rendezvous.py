"""A job never joins a rendezvous store that is not its own (all on the loopback interface): on a port another
job's store holds, rank 0 refuses with one line instead of falling back to joining, the other ranks refuse a
store without this job's token, and a one-process run ignores a MASTER_PORT inherited from its surroundings."""

import os
import subprocess
import sys
from pathlib import Path

import torch.distributed as dist

from sparse_dist.distributed.env import free_port

REPO = Path(__file__).resolve().parents[1]


def another_jobs_store() -> tuple[dist.TCPStore, int]:
    """The store of another sparse_dist job (SLURM job 999) on a free loopback port."""
    port = free_port()
    store = dist.TCPStore("127.0.0.1", port, 1, is_master=True, wait_for_workers=False)
    store.set("sparse_dist/job", "SLURM job 999.0")
    return store, port


def clean_environment(**variables: str) -> dict[str, str]:
    drop = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "SLURM_JOB_ID",
            "SLURM_STEP_ID", "SPARSE_DIST_JOB_ID", "TORCHELASTIC_USE_AGENT_STORE")
    return {**{k: v for k, v in os.environ.items() if k not in drop}, "PYTHONPATH": str(REPO), **variables}


def test_ranks_refuse_another_jobs_store(tmp_path, data_dir):
    store, port = another_jobs_store()
    keys = store.num_keys()
    ranks = [subprocess.Popen([sys.executable, "-m", "launch.train", "--config", "configs/tiny_bert_sst2.yaml",
                               f"job.run_dir={tmp_path / 'run'}", f"data.local_dir={data_dir}"],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=clean_environment(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                                                    LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                                                    MASTER_PORT=str(port)))
             for rank in (0, 1)]
    try:
        outputs = [rank.communicate(timeout=120) for rank in ranks]
    finally:
        for rank in ranks:
            if rank.poll() is None:
                rank.kill()
    assert [rank.returncode for rank in ranks] == [2, 2], outputs
    assert outputs[0][1].strip().splitlines()[-1] == (
        f"rendezvous error: MASTER_PORT {port} on 127.0.0.1 is already in use, by another job's rendezvous store or "
        "another program; this job does not join a store it did not create. Choose a free port (--master_port)")
    assert outputs[1][1].strip().splitlines()[-1].startswith(
        f"rendezvous error: the rendezvous store at 127.0.0.1:{port} belongs to SLURM job 999.0, not to this job")
    assert store.num_keys() == keys  # nothing written into the other job's store


def test_a_one_process_run_takes_its_own_port(tmp_path):
    store, port = another_jobs_store()
    script = ("import os; from sparse_dist.distributed.env import init_distributed; env = init_distributed(); "
              "print(env.world_size, os.environ['MASTER_PORT'])")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=clean_environment(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)))
    assert done.returncode == 0, done.stderr[-3000:]
    world_size, used = done.stdout.split()[-2:]
    assert world_size == "1" and int(used) != port
