"""Process setup: start the process group the same way under every launcher, and rank-aware logging.

``python -m launch.train`` (one process, no launcher variables), the ``deepspeed`` launcher, ``torchrun``
and SLURM-started launchers all end up in :func:`init_distributed`, which returns a :class:`DistEnv`
describing this process. The backend and device come from DeepSpeed's accelerator: NCCL and a GPU
where there is one, gloo and the CPU otherwise.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        """True on the one rank that writes TensorBoard events, progress bars and summaries."""
        return self.rank == 0

    @property
    def on_gpu(self) -> bool:
        return self.device.type != "cpu"


def launcher_world_size() -> int:
    """World size announced by the launcher (1 when started as a plain process). Needs no process group."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def device_capabilities() -> tuple[bool, bool]:
    """(this process computes on an accelerator, that accelerator supports bf16), from DeepSpeed's
    accelerator, as :func:`init_distributed` will pick it. Needs no process group."""
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    on_accelerator = accelerator.device_name() != "cpu"
    return on_accelerator, on_accelerator and bool(accelerator.is_bf16_supported())


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_distributed() -> DistEnv:
    """Start (or join) the process group and pick this rank's device. All ranks must call it.

    Without launcher variables this is a one-process group on a free local port, so that the rest of
    the code never special-cases "not distributed".
    """
    from deepspeed import init_distributed as ds_init_distributed
    from deepspeed.accelerator import get_accelerator

    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    accelerator = get_accelerator()
    backend = accelerator.communication_backend_name()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if accelerator.device_name() != "cpu":
        accelerator.set_device(local_rank)
    if not dist.is_initialized():
        ds_init_distributed(dist_backend=backend, verbose=False)
    device = torch.device(accelerator.device_name(local_rank) if accelerator.device_name() != "cpu" else "cpu")
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # Ranks sharing a machine share its cores; one thread pool per rank of all cores oversubscribes.
        local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("LOCAL_SIZE", "1")))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_ranks))
    return DistEnv(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                   device=device, backend=backend)


@contextlib.contextmanager
def main_process_first(env: DistEnv):
    """Let rank 0 do something first (e.g. fill a cache), then the other ranks. All ranks must enter."""
    if not env.is_main:
        dist.barrier()
    try:
        yield
    finally:
        if env.is_main:
            dist.barrier()


class _RankFormatter(logging.Formatter):
    def __init__(self, rank: int):
        super().__init__(f"%(asctime)s [rank{rank}] %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def init_logging(rank: int, level: int = logging.INFO) -> None:
    """Send log lines, each carrying the rank, to stderr.

    Rank 0 logs at ``level``; other ranks log warnings and errors only, so a many-rank job stays
    readable. DeepSpeed's and transformers' own chatter is kept to warnings.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_RankFormatter(rank))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level if rank == 0 else logging.WARNING)
    import datasets

    datasets.disable_progress_bars()  # the log says what is being loaded; bars per split are clutter
    # DeepSpeed's ZeRO all-gathers call a torch collective that torch now marks deprecated, and the
    # warning is repeated at every step; it is about DeepSpeed's code, not the run.
    warnings.filterwarnings("ignore", message=r".*all_gather_into_tensor.* is deprecated", category=FutureWarning)
    for noisy in ("DeepSpeed", "deepspeed", "torch.distributed", "transformers", "datasets", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        from deepspeed.utils import logger as ds_logger

        ds_logger.setLevel(logging.WARNING)
    except ImportError:  # pragma: no cover - deepspeed is a hard dependency
        pass
