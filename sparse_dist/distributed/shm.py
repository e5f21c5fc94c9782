"""DeepSpeed's CPU shared-memory all-reduce buffers: drop their names once every rank has mapped them.

On CPU, when all ranks of a job share one machine (the ``deepspeed`` launcher sets ``LOCAL_SIZE`` equal to
``WORLD_SIZE``), DeepSpeed's communication op (``deepspeed_shm_comm``, ``csrc/cpu/comm/shm.cpp``) creates
one POSIX shared-memory segment per rank, ``/dev/shm/deepspeed_allreduce_buffer_<uid>_<addr>_<port>_<rank>``
(69 MB each), while DeepSpeed's comm backend starts (``shm_initialize``): each rank creates its own with
``shm_open(O_CREAT)`` and maps it, then polls ``shm_open`` until it has opened and mapped every peer's. The
op never unlinks them (its ``shared_close`` is never called), so every run leaves ``world_size`` segments
in tmpfs, RAM that stays taken until reboot, whether the ranks exit normally or are killed.

Nothing opens these names after ``shm_initialize``: every later collective goes through the mappings. A
POSIX shared-memory segment stays valid while it is mapped after its name is unlinked, and its memory is
freed when the last mapping goes. So once every rank has returned from DeepSpeed's comm init (a barrier),
the names can go: from then on no exit, normal or SIGKILL, OOM or a node failure, leaves anything behind.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch.distributed as dist

BUFFER_PREFIX = "/dev/shm/deepspeed_allreduce_buffer_"
"""Path prefix of DeepSpeed's CPU all-reduce buffers (``SHM_BUFFER_NAME`` in ``shm.cpp``; glibc keeps
POSIX shared memory in /dev/shm)."""


def mapped_shm_buffers(maps_path: str | Path = "/proc/self/maps") -> dict[Path, int]:
    """DeepSpeed all-reduce buffers this process has mapped and that still have a name, as path -> inode.

    Read from ``maps_path`` (``/proc/<pid>/maps`` format: address, perms, offset, device, inode,
    pathname); a segment whose name was unlinked shows as ``<path> (deleted)`` there and is left out. Empty
    when the file cannot be read (not Linux, where DeepSpeed's op is not built either). Needs no process
    group.
    """
    try:
        lines = Path(maps_path).read_text().splitlines()
    except OSError:
        return {}
    buffers = {}
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith(BUFFER_PREFIX) and not fields[5].endswith(" (deleted)"):
            buffers[Path(fields[5])] = int(fields[4])
    return buffers


def unlink_shm_buffer_names() -> list[Path]:
    """Unlink the names of the DeepSpeed all-reduce buffers this rank has mapped; the paths it removed.

    All ranks must call it, right after DeepSpeed's comm init (``deepspeed.init_distributed``), which
    returns on a rank only once it has mapped every peer's buffer: the barrier here makes that true of all
    ranks before any name goes. Every rank unlinks every buffer it has mapped (a peer may have removed one
    first), and a path only while it is still the segment this process mapped (same inode), so a file that
    is not this job's is never touched. A no-op (but still a barrier) when DeepSpeed made no buffers: on
    GPUs, under ``torchrun`` (no ``LOCAL_SIZE``), or for a job spread over several machines. Any ZeRO stage.
    """
    dist.barrier()
    removed = []
    for path, inode in mapped_shm_buffers().items():
        try:
            if os.stat(path).st_ino != inode:
                continue  # the name now belongs to another segment, not the one this job mapped
            os.unlink(path)
        except FileNotFoundError:
            continue  # a peer unlinked it first
        removed.append(path)
    return removed
