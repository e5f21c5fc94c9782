"""Resumable checkpoints that a crash during a save cannot damage.

A checkpoint is a directory ``<run_dir>/checkpoints/step00000120`` holding the DeepSpeed engine state
(module, optimizer, scheduler; each rank writes its own ZeRO shards) and one ``trainer_rank<R>.pt``
per rank with everything else (step, RNG states, the rank's shard of the pruning state). When every
file is written, each file's size and SHA-256 go into ``manifest.json``; only then is the ``latest``
marker replaced (write to a temporary file, ``os.replace``). A save interrupted at any point leaves
``latest`` naming the previous complete checkpoint. On load the manifest is checked; a checkpoint
that fails the check is reported with its path and the one before it is used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from sparse_dist.distributed.env import DistEnv

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LATEST = "latest"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete or corrupt."""


def _tag(step: int) -> str:
    return f"step{step:08d}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


class Checkpointer:
    """Saves and finds checkpoints under ``directory``. :meth:`save` and :meth:`load` are collective."""

    def __init__(self, directory: Path, keep_last: int, env: DistEnv, signature: dict[str, Any]):
        self.directory = Path(directory)
        self.keep_last = keep_last
        self.env = env
        self.signature = signature
        """What a checkpoint must match to be resumed by this run (model, task, ZeRO stage, ...)."""

    # --- saving -----------------------------------------------------------------------------------

    def save(self, engine, step: int, trainer_state: dict[str, Any]) -> Path:
        """Write a checkpoint for ``step``; ``trainer_state`` is this rank's own state. All ranks call."""
        tag = _tag(step)
        path = self.directory / tag
        exists = [(path / MANIFEST).is_file()]
        dist.broadcast_object_list(exists, src=0)
        if exists[0]:  # this step is already saved (a resumed run that had finished); never rewrite it
            return path
        if self.env.is_main:
            shutil.rmtree(path, ignore_errors=True)  # a leftover of an interrupted save of this step
            path.mkdir(parents=True)
        dist.barrier()
        engine.save_checkpoint(str(self.directory), tag=tag, save_latest=False)
        own = path / f"trainer_rank{self.env.rank}.pt"
        torch.save(trainer_state, own.with_suffix(".tmp"))
        os.replace(own.with_suffix(".tmp"), own)
        dist.barrier()
        self._write_manifest(path, step)
        if self.env.is_main:
            _write_atomic(self.directory / LATEST, tag)
            self._prune_old()
        dist.barrier()
        log.info("saved checkpoint %s", path)
        return path

    def _write_manifest(self, path: Path, step: int) -> None:
        # Hashing is split over the ranks (file i on rank i mod world) so large checkpoints verify fast.
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.name != MANIFEST)
        mine = {str(p.relative_to(path)): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
                for i, p in enumerate(files) if i % self.env.world_size == self.env.rank}
        parts: list[dict] = [None] * self.env.world_size  # type: ignore[list-item]
        dist.all_gather_object(parts, mine)
        if self.env.is_main:
            entries = {name: meta for part in parts for name, meta in part.items()}
            manifest = {"step": step, "world_size": self.env.world_size, "signature": self.signature,
                        "files": entries}
            _write_atomic(path / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))

    def _prune_old(self) -> None:
        complete = self.complete_checkpoints()
        for old in complete[:-self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        # Directories without a manifest are interrupted saves; anything older than the newest
        # complete checkpoint can go.
        if complete:
            for stale in self.directory.glob("step*"):
                if stale.is_dir() and not (stale / MANIFEST).exists() and stale.name < complete[-1].name:
                    shutil.rmtree(stale, ignore_errors=True)

    # --- finding and loading ----------------------------------------------------------------------

    def complete_checkpoints(self) -> list[Path]:
        """Checkpoint directories that have a manifest, oldest first."""
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.glob("step*") if (p / MANIFEST).is_file())

    def verify(self, path: Path, share: tuple[int, int] = (0, 1)) -> dict[str, Any]:
        """The manifest of ``path`` after checking files' sizes and hashes; raises CheckpointError.

        ``share=(k, n)`` checks only files k, k+n, k+2n, ... (in name order), to split the work over ranks.
        """
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise CheckpointError(f"{path}: unreadable manifest ({error})") from None
        for i, (name, meta) in enumerate(sorted(manifest["files"].items())):
            if i % share[1] != share[0]:
                continue
            file = path / name
            if not file.is_file():
                raise CheckpointError(f"{file}: missing")
            if file.stat().st_size != meta["bytes"]:
                raise CheckpointError(f"{file}: {file.stat().st_size} bytes, expected {meta['bytes']} (truncated?)")
            if _sha256(file) != meta["sha256"]:
                raise CheckpointError(f"{file}: content does not match its checksum (corrupt)")
        return manifest

    def _verify_collectively(self, path: Path) -> tuple[str | None, dict[str, Any] | None]:
        """(first problem found by any rank, manifest); every rank checks its share of the files."""
        problem, manifest = None, None
        try:
            manifest = self.verify(path, share=(self.env.rank, self.env.world_size))
        except CheckpointError as error:
            problem = str(error)
        problems: list[str | None] = [None] * self.env.world_size
        dist.all_gather_object(problems, problem)
        problem = next((p for p in problems if p is not None), None)
        return problem, manifest

    def candidates(self) -> list[Path]:
        """Checkpoints to try, newest first: the one ``latest`` names, then older complete ones."""
        complete = self.complete_checkpoints()
        marker = self.directory / LATEST
        if marker.is_file():
            named = self.directory / marker.read_text().strip()
            complete = [p for p in complete if p.name <= named.name]
        return list(reversed(complete))

    def load_latest(self, engine, zero_stage: int) -> tuple[int, list[dict[str, Any]]] | None:
        """Restore the newest good checkpoint into ``engine``; return (step, trainer states).

        The states are ``[this rank's own]`` when the world size is unchanged, else every rank's that
        wrote the checkpoint (for resharding the pruning state). Returns None when there is no
        checkpoint. A checkpoint that fails verification is reported with its path and skipped for the
        previous one. All ranks call; they agree on the choice.
        """
        for path in self.candidates():
            problem, manifest = self._verify_collectively(path)
            if problem is not None:
                log.warning("checkpoint %s is not usable: %s; trying the previous one", path, problem)
                continue
            if manifest.get("signature") != self.signature:
                raise CheckpointError(
                    f"{path} belongs to a different run ({manifest.get('signature')}), not {self.signature}; "
                    "use a new job.run_dir, or checkpoint.resume=false to start over")
            written_by = manifest["world_size"]
            if written_by != self.env.world_size and zero_stage > 0:
                raise CheckpointError(
                    f"{path} was written by {written_by} ranks under ZeRO-{zero_stage} and this job has "
                    f"{self.env.world_size}: DeepSpeed's ZeRO-{zero_stage} optimizer state is partitioned over the "
                    f"ranks that wrote it and cannot be loaded by another number of ranks. Resume with "
                    f"{written_by} ranks (sparse_dist reshards its own pruning and teacher state), or start over "
                    "with checkpoint.resume=false")
            load_path, _ = engine.load_checkpoint(str(self.directory), tag=path.name, load_optimizer_states=True,
                                                  load_lr_scheduler_states=True)
            if load_path is None:
                raise CheckpointError(f"{path}: DeepSpeed could not load the engine state")
            ranks = [self.env.rank] if written_by == self.env.world_size else range(written_by)
            states = [torch.load(path / f"trainer_rank{r}.pt", map_location="cpu", weights_only=False) for r in ranks]
            if written_by != self.env.world_size:
                log.warning("%s was written by %d ranks, this job has %d: pruning and teacher state resharded",
                            path, written_by, self.env.world_size)
            log.info("resumed from %s (step %d)", path, manifest["step"])
            return manifest["step"], states
        return None


def rng_state() -> dict[str, Any]:
    """Every random-number generator state a training step reads."""
    import random

    import numpy as np

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import random

    import numpy as np

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
