"""A one-node SLURM cluster on this machine, for the tests of the job scripts in ``slurm/``.

munge, slurmctld and slurmd run as root with a private configuration, state and logs under a temporary
directory, on ports of their own, so a cluster already running here is left alone. The node is this
host with all of its CPUs and its memory less 2 GiB; there are no GPUs (jobs ask for
``--gpus-per-node=0``). Needs root and ``apt-get install slurm-wlm munge`` (``make test`` does both).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from sparse_dist.distributed.env import free_port


def missing_requirements() -> str | None:
    """Why a cluster cannot start here, or None."""
    if os.geteuid() != 0:
        return "the SLURM daemons must be started as root"
    absent = [name for name in ("munged", "slurmctld", "slurmd", "sbatch") if not which(name)]
    if absent:
        return f"not installed: {', '.join(absent)} (apt-get install slurm-wlm munge)"
    return None


def which(name: str) -> str | None:
    return shutil.which(name) or next((f"{d}/{name}" for d in ("/usr/sbin", "/usr/bin") if
                                       os.access(f"{d}/{name}", os.X_OK)), None)


def _memory_mib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


REQUEUE_RELEASE_S = 2
"""Seconds :meth:`SlurmClient.release_requeued` waits, once the job is pending again, before starting it:
past the second its first attempt's credential was revoked."""

SETTLED = {"PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}
"""Job states after a requeue has been processed: pending again, or already started or ended."""


class SlurmClient:
    """Job submission and polling over :meth:`run`, which each cluster defines (where the client commands run)."""

    poll_s = 0.5
    """Seconds between two looks at a job in :meth:`wait`."""

    def run(self, *command: str, check: bool = True, cwd: Path | None = None,
            env: dict | None = None) -> subprocess.CompletedProcess:
        raise NotImplementedError

    def sbatch(self, script: str, *args: str, options: tuple[str, ...] = (), env: dict | None = None,
               cwd: Path) -> int:
        """Submit ``script`` (with ``args`` passed through to it); return the job id."""
        out = self.run("sbatch", "--parsable", *options, script, *args, check=False, cwd=cwd, env=env)
        if out.returncode != 0:
            raise RuntimeError(f"sbatch failed: {out.stderr.strip()}")
        return int(out.stdout.strip().split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        """The job's fields from ``scontrol show job`` (JobState, Restarts, ExitCode, ...)."""
        text = self.run("scontrol", "-o", "show", "job", str(job_id)).stdout
        return dict(field.split("=", 1) for field in text.split() if "=" in field)

    def release_requeued(self, job_id: int, timeout_s: float = 120) -> None:
        """Start a requeued job now instead of after SLURM's hold (begin time = the credential lifetime,
        about two minutes). Once the job is pending again, waits ``REQUEUE_RELEASE_S`` and sets its start to
        now: each node's slurmd revoked the first attempt's credential at the second the job was requeued and
        rejects a credential issued within that same second ("Job credential revoked" in slurmctld's log),
        which fails the job; a release 14 ms after the requeue did, on the two-node cluster. A start time in
        the future instead would wait for the next backfill pass. A job that already started or ended is
        left to the caller."""
        fields = self.wait(job_id, lambda f: f.get("JobState") in SETTLED, timeout_s, "settled after the requeue")
        if fields["JobState"] == "PENDING":
            time.sleep(REQUEUE_RELEASE_S)
            self.run("scontrol", "update", f"JobId={job_id}", "StartTime=now")

    def wait(self, job_id: int, until, timeout_s: float, what: str) -> dict[str, str]:
        """Poll the job until ``until(fields)`` holds; an error naming ``what`` after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            fields = self.job(job_id)
            if until(fields):
                return fields
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id}: not {what} after {timeout_s:.0f} s: {fields.get('JobState')}")
            time.sleep(self.poll_s)


class SlurmCluster(SlurmClient):
    """Start with :meth:`start`, submit with :meth:`sbatch`, stop with :meth:`stop`."""

    def __init__(self, root: Path):
        self.root = root
        self.conf = root / "slurm.conf"
        self.host = socket.gethostname().split(".")[0]
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.started_munge = False

    def start(self, timeout_s: float = 60) -> None:
        for sub in ("state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(self._config())
        self._start_munge()
        for daemon in ("slurmctld", "slurmd"):
            subprocess.run([which(daemon), "-f", str(self.conf)], check=True, env=self.env)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            state = self.run("sinfo", "-h", "-n", self.host, "-o", "%T", check=False).stdout.strip()
            if state == "idle":
                return
            time.sleep(1)
        raise RuntimeError(f"the SLURM node did not become idle in {timeout_s:.0f} s (state {state!r}); "
                           f"see {self.root / 'log'}")

    def _config(self) -> str:
        root = self.root
        return "\n".join([
            "ClusterName=sparse-dist-test",
            f"SlurmctldHost={self.host}",
            f"SlurmctldPort={free_port()}",
            f"SlurmdPort={free_port()}",
            "SlurmUser=root",
            "AuthType=auth/munge",
            f"StateSaveLocation={root / 'state'}",
            f"SlurmdSpoolDir={root / 'spool'}",
            f"SlurmctldPidFile={root / 'slurmctld.pid'}",
            f"SlurmdPidFile={root / 'slurmd.pid'}",
            f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "ReturnToService=2",
            "JobRequeue=1",
            "KillWait=60",
            "MpiDefault=none",
            "SchedulerType=sched/backfill",
            f"NodeName={self.host} CPUs={os.cpu_count()} RealMemory={_memory_mib() - 2048} State=UNKNOWN",
            f"PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP",
            "",
        ])

    def _start_munge(self) -> None:
        if subprocess.run(["sh", "-c", "munge -n | unmunge"], capture_output=True).returncode == 0:
            return  # already running
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        subprocess.run(["runuser", "-u", "munge", "--", which("munged")], check=True)
        self.started_munge = True

    def run(self, *command: str, check: bool = True, cwd: Path | None = None,
            env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(list(command), capture_output=True, text=True, env={**self.env, **(env or {})},
                              cwd=cwd, check=check)

    def stop(self) -> None:
        self.run("scontrol", "shutdown", check=False)
        for daemon in ("slurmctld", "slurmd"):
            pid_file = self.root / f"{daemon}.pid"
            for _ in range(30):
                if not pid_file.exists() or not _alive(pid_file):
                    break
                time.sleep(1)
        if self.started_munge:
            pid_file = Path("/run/munge/munged.pid")
            if _alive(pid_file):
                os.kill(int(pid_file.read_text().strip()), 15)


def _alive(pid_file: Path) -> bool:
    try:
        os.kill(int(pid_file.read_text().strip()), 0)
        return True
    except (ValueError, ProcessLookupError, FileNotFoundError):
        return False
