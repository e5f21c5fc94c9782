"""Process setup: start the process group the same way under every launcher, and rank-aware logging.

``python -m launch.train`` (one process, no launcher variables), the ``deepspeed`` launcher, ``torchrun``
and SLURM-started launchers all end up in :func:`init_distributed`, which returns a :class:`DistEnv`
describing this process. The backend and device come from DeepSpeed's accelerator: NCCL and a GPU
where there is one, gloo and the CPU otherwise.

A rank never joins a rendezvous store that is not its job's. Under ``torchrun`` the store is the
agent's (the job scripts make the first node host it or fail, see ``slurm/common.sh``). Otherwise
(``env://``: the deepspeed launcher, :func:`~sparse_dist.distributed.spawn.run_distributed`) rank 0
creates the store at MASTER_ADDR:MASTER_PORT, and a port already taken stops it with one line instead of
the silent fallback to joining; it writes a token that every rank of the job shares (the job id, or the
launcher process that started all ranks on one machine), and the other ranks join only a store holding
that token. A one-process run always takes a free loopback port of its own.

Every command ends its group (:func:`shutdown_distributed`) and its process (:func:`finish_process`: a
process that started gloo ranks leaves without the interpreter's teardown, which could abort it). On CPU
the names of DeepSpeed's shared-memory all-reduce buffers are unlinked as soon as every rank has mapped
them (:mod:`sparse_dist.distributed.shm`), so that no exit of a rank leaves them in /dev/shm.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import socket
import sys
import warnings
from dataclasses import dataclass
from datetime import timedelta
from typing import NoReturn

import torch
import torch.distributed as dist

from sparse_dist.distributed.ops import use_venv_ninja
from sparse_dist.distributed.shm import unlink_shm_buffer_names


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    started_group: bool = False
    """Whether the :func:`init_distributed` call that made this started the process group (else a caller
    had): :func:`shutdown_distributed` ends only such a group."""

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


def free_port() -> int:
    """A TCP port on the loopback interface that no one listens on now (the OS picks it; another process may
    still take it before the caller binds it, so a rendezvous on it must still refuse a taken port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RendezvousError(RuntimeError):
    """This job's ranks cannot meet: the port is taken, or the store there is another job's. One line."""


_JOB_KEY = "sparse_dist/job"
_TOKEN_WAIT = timedelta(seconds=60)  # rank 0 writes the token right after creating the store


def _job_token() -> str | None:
    """What every rank of this job shares and no other job's ranks have; None if the environment cannot
    tell (a multi-node launch that names no job)."""
    if os.environ.get("SPARSE_DIST_JOB_ID"):
        return f"job {os.environ['SPARSE_DIST_JOB_ID']}"
    if os.environ.get("SLURM_JOB_ID"):
        return f"SLURM job {os.environ['SLURM_JOB_ID']}.{os.environ.get('SLURM_STEP_ID', 'batch')}"
    local = os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("LOCAL_SIZE"))
    if local is not None and local == os.environ.get("WORLD_SIZE"):
        return f"launcher {socket.gethostname()}:{os.getppid()}"  # one process started every rank
    return None


def _job_store(rank: int, world_size: int, timeout: timedelta) -> dist.Store:
    """This job's store at MASTER_ADDR:MASTER_PORT, created by rank 0 and joined by the others only if it
    carries this job's token (:class:`RendezvousError` otherwise). All ranks call."""
    addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    token = _job_token()
    try:
        store = dist.TCPStore(addr, port, world_size, is_master=rank == 0, timeout=timeout, wait_for_workers=False)
    except RuntimeError as error:  # DistNetworkError: the port is taken (rank 0) or nobody listens (others)
        if rank == 0 and "EADDRINUSE" in str(error):
            raise RendezvousError(f"MASTER_PORT {port} on {addr} is already in use, by another job's rendezvous "
                                  "store or another program; this job does not join a store it did not create. "
                                  "Choose a free port (--master_port)") from None
        first = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
        raise RendezvousError(f"rank {rank} cannot {'create' if rank == 0 else 'reach'} the rendezvous store at "
                              f"{addr}:{port}: {first}") from None
    if token is not None:
        if rank == 0:
            store.set(_JOB_KEY, token)
        else:
            try:
                store.wait([_JOB_KEY], _TOKEN_WAIT)
                found = store.get(_JOB_KEY).decode()
            except RuntimeError:
                found = None
            if found != token:
                owner = f"belongs to {found}" if found else "carries no job token"
                raise RendezvousError(f"the rendezvous store at {addr}:{port} {owner}, not to this job ({token}): "
                                      "MASTER_PORT is another job's; refusing to join it")
    return dist.PrefixStore(f"sparse_dist/{token}/", store)


_GROUP_STARTED = False
"""Whether :func:`init_distributed` has started a process group in this process: :func:`finish_process`
then skips the interpreter's teardown."""


def init_distributed() -> DistEnv:
    """Start (or join) the process group and pick this rank's device. All ranks must call it.

    Without launcher variables this is a one-process group on a free loopback port, so that the rest of
    the code never special-cases "not distributed". Raises :class:`RendezvousError` rather than joining
    a store that is not this job's (see the module docstring).
    """
    global _GROUP_STARTED
    from deepspeed import init_distributed as ds_init_distributed
    from deepspeed.accelerator import get_accelerator
    from deepspeed.constants import default_pg_timeout

    if "RANK" not in os.environ:
        # Not the MASTER_PORT a surrounding job may have exported: nobody else is to meet here.
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(free_port()))
    accelerator = get_accelerator()
    backend = accelerator.communication_backend_name()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if accelerator.device_name() != "cpu":
        accelerator.set_device(local_rank)
    device = torch.device(accelerator.device_name(local_rank) if accelerator.device_name() != "cpu" else "cpu")
    started = not dist.is_initialized()  # here, or by DeepSpeed below (torchrun's agent store)
    if not dist.is_initialized() and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        store = _job_store(rank, world_size, default_pg_timeout)
        bind = {"device_id": device} if device.type == "cuda" and world_size > 1 else {}  # as DeepSpeed does
        dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=default_pg_timeout,
                                **bind)
    # DeepSpeed adopts the group made above; under torchrun it makes it, env:// on the agent's store. On CPU
    # it also loads its shared-memory op, built with the same ninja as every other build (see ops.py).
    use_venv_ninja()
    ds_init_distributed(dist_backend=backend, verbose=False)
    _GROUP_STARTED = _GROUP_STARTED or started
    if device.type == "cpu":
        # The shared-memory op's buffers are never unlinked by DeepSpeed: drop their names now that every
        # rank has mapped them, so that no exit, not even SIGKILL, leaves 69 MB per rank in /dev/shm.
        unlink_shm_buffer_names()
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # Ranks sharing a machine share its cores; one thread pool per rank of all cores oversubscribes.
        local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("LOCAL_SIZE", "1")))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_ranks))
    return DistEnv(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                   device=device, backend=backend, started_group=started)


def shutdown_distributed(env: DistEnv) -> None:
    """Destroy the process group if the :func:`init_distributed` call that returned ``env`` started it
    (torch asks every program to, before it exits); a group a caller started is the caller's to end. The
    commands call it once their ranks have nothing more to exchange. Not called when an exception escapes:
    a peer may still be inside a collective this rank would wait for. One command per process: DeepSpeed
    keeps the groups it made (``deepspeed.utils.groups``, ``param._dp_group``) and cannot start again."""
    if env.started_group and dist.is_initialized():
        dist.destroy_process_group()


def finish_process(status: int) -> NoReturn:
    """End this process with ``status`` (the scripts' and console commands' last call): logging and the
    standard streams are flushed, then a process that started a process group leaves without the
    interpreter's teardown (``os._exit``).

    Why: gloo's worker threads outlive ``destroy_process_group`` wherever a group is still referenced
    (DeepSpeed keeps its groups in module globals and on every parameter, ``param._dp_group``). A worker
    that drops the last reference to a finished collective's tensor must take the GIL; once the interpreter
    is finalizing, that thread is unwound and the process aborts (``terminate called without an active
    exception``, SIGABRT) after all its work is done, and the launcher reports the finished run as failed
    (core dump: ``~AsyncAllgatherWork`` -> ``decref_pyobject`` -> ``take_gil`` -> ``PyThread_exit_thread``;
    pytorch/pytorch#190489). Everything a run writes is written and closed before its command returns.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed or broken pipe: nothing more to say
            stream.flush()
    if _GROUP_STARTED:
        with contextlib.suppress(Exception):  # C stdio buffers of native code: os._exit does not flush them
            ctypes.CDLL(None).fflush(None)
        os._exit(status)
    sys.exit(status)


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


def node_rank() -> int:
    """This process's node within the job: torchrun's GROUP_RANK (one agent per node), else SLURM_NODEID,
    else 0. Needs no process group."""
    return int(os.environ.get("GROUP_RANK", os.environ.get("SLURM_NODEID", "0")))


def log_placement(env: DistEnv) -> None:
    """One line from every rank, whatever its log level: its host, node rank and local rank, so that the
    log of a multi-node job shows where each rank ran. Each rank calls it once."""
    placement = logging.getLogger("sparse_dist.placement")
    placement.setLevel(logging.INFO)  # above the WARNING of ranks other than 0, for this line only
    placement.info("rank %d of %d on host %s: node rank %d, local rank %d", env.rank, env.world_size,
                   socket.gethostname(), node_rank(), env.local_rank)


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
