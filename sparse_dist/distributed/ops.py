"""The C++ ops a run compiles on first use, and the lock file that a build killed halfway leaves behind.

On CPU two ops are built by torch's JIT extensions under ``$TORCH_EXTENSIONS_DIR`` (by default
``~/.cache/torch_extensions/<python>_<device>/<op>/``): DeepSpeed's ``deepspeed_shm_comm``
(shared-memory collectives between the ranks of one node), which every rank loads when DeepSpeed's
communication backend starts although ZeRO training never calls it, and this package's
``sparse_dist_band_pass`` (the distributed selection). Each load holds ``<op>/lock`` while ninja runs:
a moment when the op is built, minutes when it is not (2.5 min for ``deepspeed_shm_comm`` on a loaded
2-core machine). A rank killed meanwhile (its node failed) leaves the lock, and torch waits for it to
disappear, silently and forever, in every later launch. Hence:

- :func:`build_ops` (``python -m sparse_dist.distributed.ops``, part of ``make setup``) builds both
  before any launch, so that launches find them built.
- :func:`use_venv_ninja`: torch runs the first ``ninja`` on PATH. The venv's (pip's ninja 1.13) and the
  system's (Debian's 1.11) hash commands differently in ``.ninja_log``, so each rebuilds everything the
  other built: a job script (the venv first on PATH) and a plain ``.venv/bin/python`` took turns
  rebuilding. Every process of this package uses the ninja beside its Python when there is one.
- :func:`stale_build_locks` finds a lock that no process holds; ``launch/train.py`` (``--check``, and
  every rank before it joins) stops with one line naming it.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

OPS = ("deepspeed_shm_comm", "sparse_dist_band_pass")
"""The JIT-built ops a CPU run loads (see the module docstring)."""

SHARED_FS_STALE_AFTER_S = 900.0
"""On a network file system the holder may be another machine, which cannot be seen from here: such a lock
counts as stale only once it is older than any build (a build here takes minutes)."""

_NETWORK_FS = {"nfs", "nfs4", "lustre", "gpfs", "cifs", "smb3", "beegfs", "ceph", "fuse.glusterfs", "glusterfs",
               "fuse.sshfs", "9p", "afs"}
_MIN_AGE_S = 5.0  # torch closes the lock's descriptor just before it removes the file


def use_venv_ninja() -> None:
    """Put the directory of this Python (a venv's ``bin``) first on PATH if it holds a ``ninja``, so that every
    build of an op here uses the same ninja (see the module docstring). Idempotent; no process group."""
    bin_dir = os.path.dirname(sys.executable)
    if not os.access(os.path.join(bin_dir, "ninja"), os.X_OK):
        return
    path = os.environ.get("PATH", "").split(os.pathsep)
    if path[0] != bin_dir:
        os.environ["PATH"] = os.pathsep.join([bin_dir, *[p for p in path if p != bin_dir]])


def extensions_dir() -> Path:
    """Where torch builds JIT extensions for this Python and device, as ``torch.utils.cpp_extension`` does."""
    import torch
    from torch.utils.cpp_extension import get_default_build_root

    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return Path(os.environ["TORCH_EXTENSIONS_DIR"])
    if torch.version.hip is not None:
        device = f"rocm{torch.version.hip.replace('.', '')}"
    elif torch.version.cuda is not None:
        device = f"cu{torch.version.cuda.replace('.', '')}"
    else:
        device = "cpu"
    return Path(get_default_build_root()) / f"py{sys.version_info.major}{sys.version_info.minor}_{device}"


def _holders(path: Path) -> list[int]:
    """Processes on this machine (those this user may inspect) that have ``path`` open."""
    target = str(path.resolve())
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) == target for fd in (proc / "fd").iterdir()):
                found.append(int(proc.name))
        except OSError:  # gone, or not ours to read
            continue
    return found


def _file_system(path: Path) -> str:
    """The type of the file system ``path`` is on (longest mount point that contains it)."""
    best, kind = "", ""
    target = str(path.resolve())
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return ""
    for line in mounts:
        fields = line.split()
        if len(fields) >= 3:
            point = fields[1].replace("\\040", " ")
            if (target == point or target.startswith(point.rstrip("/") + "/")) and len(point) > len(best):
                best, kind = point, fields[2]
    return kind


def stale_build_locks(root: Path | None = None, now: float | None = None) -> list[str]:
    """One line per lock of an op in ``root`` (default :func:`extensions_dir`) that its builder left behind: held
    by no process on this machine and, on a network file system, older than ``SHARED_FS_STALE_AFTER_S``.
    Any process may call it; no process group."""
    root = extensions_dir() if root is None else root
    now = time.time() if now is None else now
    found = []
    for op in OPS:
        lock = root / op / "lock"
        try:
            age_s = now - lock.stat().st_mtime
        except FileNotFoundError:
            continue
        if age_s < _MIN_AGE_S or _holders(lock):
            continue
        shared = _file_system(lock) in _NETWORK_FS
        if shared and age_s < SHARED_FS_STALE_AFTER_S:
            continue  # perhaps another machine is building it now
        found.append(f"{lock} was left by a process killed while building the op {op} ({age_s / 60:.0f} min "
                     f"old, held by no process{' on this machine' if shared else ''}): every launch would wait "
                     f"for it forever. Remove it (rm {lock}) and start again")
    return found


def build_ops() -> list[str]:
    """Build (or find built) every op of :data:`OPS` this machine can build; the names of those built. Run
    once per machine and environment before launching (``make setup``), never while a run starts. The two
    compile at once (56 s one after the other on 2 cores, 47 s together, measured)."""
    from concurrent.futures import ThreadPoolExecutor

    use_venv_ninja()
    from deepspeed.accelerator import get_accelerator

    from sparse_dist.distributed.band_pass import _load_kernel

    def shm_comm() -> bool:
        builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
        if builder is None or not builder.is_compatible():
            return False
        builder.load()
        return True

    builds = {"deepspeed_shm_comm": shm_comm, "sparse_dist_band_pass": lambda: _load_kernel() is not None}
    assert builds.keys() == set(OPS), "every op of OPS has its build here"
    with ThreadPoolExecutor(max_workers=2) as pool:  # the compilers run as subprocesses, outside the GIL
        built = {name: pool.submit(build) for name, build in builds.items()}
        return [name for name, future in built.items() if future.result()]


if __name__ == "__main__":
    names = build_ops()
    print(f"ops built in {extensions_dir()}: {', '.join(names) or 'none'}")
