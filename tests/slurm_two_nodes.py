"""A two-node SLURM cluster on this machine, for the multi-node tests of the job scripts in ``slurm/``.

Each node is a network namespace of its own (``ip netns``), joined to the other by a veth pair with
addresses from 10.250.0.0/24 that exist only inside the two namespaces: the host's interfaces, routes,
firewall and files are not touched, and nothing of the cluster is reachable from outside. Node 0 runs
``slurmctld`` and a ``slurmd``, node 1 a ``slurmd``; clients (``sbatch``, ``scontrol``) run in node 0's
namespace. The ports are the standard ones, inside the namespaces, so a cluster on the host (the one-node
cluster of ``slurm_cluster.py``) is unaffected. Munge is a private ``munged`` on a socket of its own
(``AuthInfo=socket=...``): the cluster does not depend on, nor stop, a munged that other tests share.

How the pieces that a second node needs were solved:

- Per-node files: Debian's slurm 22.05 substitutes ``%n`` (the node name) in ``SlurmdSpoolDir``,
  ``SlurmdPidFile`` and ``SlurmdLogFile``, and ``slurmd -N <name>`` picks the node, so one slurm.conf
  serves both daemons.
- Names: each daemon starts in a private mount and UTS namespace (``unshare``) in which the node's
  hostname is its NodeName and a hosts file of the cluster (``sdnode0``, ``sdnode1`` and their
  addresses) is bind-mounted over ``/etc/hosts``; jobs inherit both. So ``scontrol show hostnames``
  gives a name (MASTER_ADDR in ``slurm/common.sh``) that resolves to node 0's namespace address on both
  nodes, exactly as on a real cluster, and the job scripts run unchanged. ``NodeAddr`` tells slurmctld
  the same addresses without any name lookup.
- Gloo: it binds to the address its hostname resolves to, which in each namespace is that node's veth
  address, so no GLOO_SOCKET_IFNAME is needed (a real cluster whose hostnames resolve to the wrong
  interface would need it).

Needs root, ``ip`` (iproute2), ``unshare`` and ``apt-get install slurm-wlm munge``. :meth:`stop` kills
every process left in the namespaces, deletes them and stops munged, even after a failed start.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from slurm_cluster import SlurmClient, which
from slurm_cluster import missing_requirements as missing_slurm

NODES = ("sdnode0", "sdnode1")
ADDRESSES = ("10.250.0.1", "10.250.0.2")
NODE_CPUS = 2
NODE_MEMORY_MIB = 4096

# In the node's fresh mount and UTS namespaces: its hosts file and hostname, then the daemon.
_AS_NODE = 'mount --bind "$1" /etc/hosts && hostname "$2" && shift 2 && exec "$@"'


def missing_requirements() -> str | None:
    """Why a two-node cluster cannot start here, or None."""
    problem = missing_slurm()
    if problem:
        return problem
    absent = [name for name in ("ip", "nsenter", "unshare", "munged") if not which(name)]
    if absent:
        return f"not installed: {', '.join(absent)}"
    probe = f"sdprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


class TwoNodeCluster(SlurmClient):
    """Start with :meth:`start`, submit with :meth:`sbatch`, stop with :meth:`stop` (always)."""

    def __init__(self, root: Path):
        self.root = root
        self.conf = root / "slurm.conf"
        tag = os.getpid()
        self.namespaces = tuple(f"sd{tag}n{i}" for i in range(len(NODES)))
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.daemons: list[subprocess.Popen] = []
        self.munge_dir: Path | None = None

    # --- start -----------------------------------------------------------------------------------------
    def start(self, timeout_s: float = 60) -> None:
        try:
            self._start(timeout_s)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout_s: float) -> None:
        for sub in ("state", "log", *(f"spool/{node}" for node in NODES)):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._start_munge()
        self._make_network()
        hosts = self.root / "hosts"
        hosts.write_text("127.0.0.1 localhost\n" + "".join(f"{a} {n}\n" for a, n in zip(ADDRESSES, NODES)))
        self.conf.write_text(self._config())
        self._daemon(0, "slurmctld", [which("slurmctld"), "-D", "-f", str(self.conf)])
        for index, node in enumerate(NODES):
            self._daemon(index, f"slurmd-{node}", [which("slurmd"), "-D", "-N", node, "-f", str(self.conf)])
        deadline = time.monotonic() + timeout_s
        states = ""
        while time.monotonic() < deadline:
            states = self.run("sinfo", "-h", "-N", "-o", "%N %T", check=False).stdout.strip()
            if sorted(states.splitlines()) == [f"{node} idle" for node in NODES]:
                return
            if any(daemon.poll() is not None for daemon in self.daemons):
                break
            time.sleep(1)
        raise RuntimeError(f"the two SLURM nodes did not become idle in {timeout_s:.0f} s ({states!r}); "
                           f"see {self.root / 'log'}")

    def _start_munge(self) -> None:
        # munged checks that every directory above its socket is searchable by all: not under pytest's 0700
        # temporary directories, so a directory of its own in /tmp.
        self.munge_dir = Path(tempfile.mkdtemp(prefix="sparse-dist-munge-"))
        self.munge_dir.chmod(0o711)
        shutil.chown(self.munge_dir, "munge", "munge")
        d = self.munge_dir
        subprocess.run(["runuser", "-u", "munge", "--", which("munged"), f"--socket={d / 'munge.socket'}",
                        f"--pid-file={d / 'munged.pid'}", f"--log-file={d / 'munged.log'}",
                        f"--seed-file={d / 'munged.seed'}"], check=True)

    def _make_network(self) -> None:
        ns0, ns1 = self.namespaces
        for ns in self.namespaces:
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        # Created inside node 0's namespace with its peer inside node 1's: never an interface of the host.
        _ip("-n", ns0, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1", "netns", ns1)
        for index, ns in enumerate(self.namespaces):
            _ip("-n", ns, "addr", "add", f"{ADDRESSES[index]}/24", "dev", f"veth{index}")
            _ip("-n", ns, "link", "set", f"veth{index}", "up")

    def _daemon(self, node: int, name: str, command: list[str]) -> None:
        log = (self.root / "log" / f"{name}.out").open("w")
        self.daemons.append(subprocess.Popen(
            [*self._enter(node), "unshare", "--mount", "--uts", "--propagation", "private",
             "sh", "-c", _AS_NODE, "node", str(self.root / "hosts"), NODES[node], *command],
            stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True))
        log.close()

    def _enter(self, node: int) -> list[str]:
        # nsenter, not `ip netns exec`: that one mounts a fresh /sys for the namespace, without the cgroup
        # file systems slurmd insists on finding.
        return ["nsenter", f"--net=/run/netns/{self.namespaces[node]}"]

    def _config(self) -> str:
        root = self.root
        return "\n".join([
            "ClusterName=sparse-dist-two-nodes",
            f"SlurmctldHost={NODES[0]}({ADDRESSES[0]})",
            "SlurmctldPort=6817",
            "SlurmdPort=6818",
            "SlurmUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_dir / 'munge.socket'}",
            f"StateSaveLocation={root / 'state'}",
            f"SlurmdSpoolDir={root / 'spool' / '%n'}",
            f"SlurmctldPidFile={root / 'slurmctld.pid'}",
            f"SlurmdPidFile={root / 'slurmd-%n.pid'}",
            f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={root / 'log' / 'slurmd-%n.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "ReturnToService=2",
            "JobRequeue=1",
            "KillWait=10",
            "MpiDefault=none",
            "SchedulerType=sched/backfill",
            *(f"NodeName={node} NodeAddr={address} CPUs={NODE_CPUS} RealMemory={NODE_MEMORY_MIB} State=UNKNOWN"
              for node, address in zip(NODES, ADDRESSES)),
            f"PartitionName=debug Nodes={','.join(NODES)} Default=YES MaxTime=INFINITE State=UP",
            "",
        ])

    # --- use -------------------------------------------------------------------------------------------
    def run(self, *command: str, check: bool = True, cwd: Path | None = None,
            env: dict | None = None) -> subprocess.CompletedProcess:
        """A SLURM client command, run in node 0's namespace (where slurmctld listens)."""
        return subprocess.run([*self._enter(0), *command], capture_output=True,
                              text=True, env={**self.env, **(env or {})}, cwd=cwd, check=check)

    def in_node(self, node: int) -> list[str]:
        """The command prefix that runs a command in the node's network namespace (not its UTS and mount
        namespaces: the hostname and hosts file stay the host's)."""
        return self._enter(node)

    def node_processes(self, node: int) -> dict[int, str]:
        """Every process in the node's namespace but its SLURM daemons (slurmd, slurmstepd, slurmctld and its
        slurmscriptd): pid -> command."""
        found = {}
        for pid in self._namespace_pids(node):
            try:
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            except OSError:
                continue
            if comm not in {"slurmd", "slurmstepd", "slurmctld", "slurmscriptd"}:
                found[pid] = cmdline
        return found

    def kill_node_processes(self, node: int) -> dict[int, str]:
        """SIGKILL every process of the node's job steps (its daemons live on); return what was killed."""
        victims = self.node_processes(node)
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return victims

    def _namespace_pids(self, node: int) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", self.namespaces[node]], capture_output=True, text=True)
        return [int(pid) for pid in out.stdout.split()]

    # --- stop ------------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop the daemons, kill whatever still runs in the namespaces, delete them, stop munged."""
        existing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        ours = [ns for ns in self.namespaces if ns in existing.split()]
        if ours and self.daemons:
            self.run("scontrol", "shutdown", check=False)
        for daemon in self.daemons:
            try:
                daemon.wait(timeout=20)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        for index, ns in enumerate(self.namespaces):
            if ns not in ours:
                continue
            for _ in range(20):  # job steps and their processes outlive slurmd; this is all ours
                pids = self._namespace_pids(index)
                if not pids:
                    break
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                time.sleep(0.5)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        if self.munge_dir is not None:
            pid_file = self.munge_dir / "munged.pid"
            if pid_file.exists():
                try:
                    os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
                except (ValueError, ProcessLookupError):
                    pass
                for _ in range(20):
                    if not pid_file.exists():
                        break
                    time.sleep(0.25)
            shutil.rmtree(self.munge_dir, ignore_errors=True)
            self.munge_dir = None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)
