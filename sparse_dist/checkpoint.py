"""Resumable checkpoints that a crash during a save cannot damage.

A checkpoint is a directory ``<run_dir>/checkpoints/step00000120`` holding the DeepSpeed engine state
(module, optimizer, scheduler; each rank writes its own ZeRO shards) and one ``trainer_rank<R>.pt``
per rank with everything else (step, RNG states, the rank's shard of the pruning state). When every
file is written, each file's size and SHA-256 go into ``manifest.json``; only then is the ``latest``
marker replaced (write to a temporary file, ``os.replace``). A save interrupted at any point leaves
``latest`` naming the previous complete checkpoint. On load the manifest is checked; a checkpoint
that fails the check is reported with its path and the one before it is used.

Under ZeRO 1-3 each rank also writes ``optimizer_fragments_rank<R>.pt``, its fragments of the fp32
master weights and Adam moments (:mod:`sparse_dist.distributed.optimizer_state`). The same number of
ranks resumes from DeepSpeed's own files; another number assembles its partitions from these
fragments, as the pruning and teacher state is (elastic resume).

Every manifest carries the run's signature (:func:`run_signature`): everything that decides what a
checkpoint holds. :func:`check_run_dir` refuses, before anything in the run directory is touched, to
start a run beside checkpoints of another run (another method, model, task, ZeRO stage, ...; another
world size under ZeRO 1-3 for a checkpoint written without optimizer fragments), to resume past
``training.max_steps``, or to start over beside old checkpoints (``checkpoint.resume=false``).
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

from sparse_dist.config import ConfigError, RunConfig
from sparse_dist.distributed.env import DistEnv
from sparse_dist.distributed.optimizer_state import load_optimizer_fragments, optimizer_fragments

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LATEST = "latest"


def fragments_file(rank: int) -> str:
    """Name of rank ``rank``'s optimizer fragments in a checkpoint directory (ZeRO 1-3)."""
    return f"optimizer_fragments_rank{rank}.pt"


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


def complete_checkpoints(directory: Path) -> list[Path]:
    """Checkpoint directories under ``directory`` that have a manifest, oldest first."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob("step*") if (p / MANIFEST).is_file())


def candidates(directory: Path) -> list[Path]:
    """Checkpoints to try, newest first: the one ``latest`` names, then older complete ones."""
    complete = complete_checkpoints(directory)
    marker = directory / LATEST
    if marker.is_file():
        named = directory / marker.read_text().strip()
        complete = [p for p in complete if p.name <= named.name]
    return list(reversed(complete))


def run_signature(config: RunConfig, precision: str, sites: list[str] | None = None,
                  calibrated: bool | None = None) -> dict[str, Any]:
    """What a checkpoint of this run holds, keyed by the config keys that decide it: the model and its
    head (and ``model.init`` when it is random), the task, the ZeRO stage and precision (the layout of
    DeepSpeed's state), the pruning method and what it prunes (scores, statistics and masks), the
    self-regularization teacher. ``sites``, the names
    and shapes the pruning state is laid out over, and ``calibrated``, whether the label-word head has its
    two calibration scalars, are added once the model is built; before that ``model.calibrate_label_words``
    stands for it. Only a calibrated head is recorded (null and false are both off, and a checkpoint from
    before the option has none), so every uncalibrated run keeps its signature. Not in it: anything a continued
    run may change (steps, learning rates, schedules, evaluation, the world size under ZeRO-0).
    """
    signature: dict[str, Any] = {
        "model.name_or_path": config.model.name_or_path, "model.head": config.model.head,
        "data.task": config.data.task, "zero.stage": config.zero.stage, "training.precision": precision,
        "pruning.method": config.pruning.method, "distill.self_regularization": config.distill.self_regularization}
    if config.pruning.method != "none":
        signature["pruning.scope"] = config.pruning.scope
        signature["pruning.include_biases"] = config.pruning.include_biases
    calibrate = config.model.calibrate_label_words if calibrated is None else calibrated
    if config.model.head == "label_words" and calibrate:
        signature["model.calibrate_label_words"] = True
    if config.model.init != "pretrained":  # recorded only when random, so every earlier run keeps its signature
        signature["model.init"] = config.model.init
    if sites is not None:
        signature["pruning sites"] = hashlib.sha256("\n".join(sites).encode()).hexdigest()[:16]
    return signature


# Signatures written before run_signature named fewer things, by other names.
_OLD_KEYS = {"model": "model.name_or_path", "task": "data.task", "zero_stage": "zero.stage"}


def signature_differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between a checkpoint's signature and this run's, as ``key: A there, B here``. Keys one
    side does not record (older checkpoints; sites before the model is built) are not compared."""
    stored = {_OLD_KEYS.get(key, key): value for key, value in stored.items()}
    return [f"{key} is {stored[key]!r} there, {current[key]!r} here" for key in current
            if key in stored and stored[key] != current[key]]


def _read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads((path / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def check_manifest(path: Path, manifest: dict[str, Any], signature: dict[str, Any], world_size: int) -> None:
    """Refuse to resume checkpoint ``path`` in a run with ``signature`` on ``world_size`` ranks: a
    :class:`ConfigError` that says what differs. Reads nothing but the manifest."""
    differences = signature_differences(manifest.get("signature") or {}, signature)
    if differences:
        raise ConfigError(f"job.run_dir: {path} is a checkpoint of another run: {'; '.join(differences)}. Use a new "
                          f"job.run_dir, or delete {path.parent} to start over in this one")
    written_by, stage = manifest["world_size"], signature["zero.stage"]
    missing = [fragments_file(r) for r in range(written_by) if fragments_file(r) not in manifest.get("files", {})]
    if written_by != world_size and stage > 0 and missing:
        raise ConfigError(
            f"world_size: {path} was written by {written_by} ranks under ZeRO-{stage} and this job has "
            f"{world_size}, but it holds no optimizer fragments ({missing[0]}; checkpoints written before elastic "
            f"resume have none), and DeepSpeed's own ZeRO-{stage} files cannot be loaded by another number of ranks. "
            f"Resume with {written_by} ranks (a checkpoint it saves can then move to any number), or use a new "
            "job.run_dir")


def check_run_dir(directory: Path, signature: dict[str, Any], world_size: int, resume: bool, max_steps: int) -> None:
    """Refuse to start a run with ``signature`` beside the checkpoints in ``directory`` (a run's
    ``checkpoints/``) when they cannot be its own: a :class:`ConfigError` naming the key. Reads manifests
    only, so it runs before any process group and before anything in the run directory is written."""
    for path in candidates(Path(directory)):
        manifest = _read_manifest(path)
        if manifest is None:
            continue  # unreadable: loading skips it for the previous one, and so does this check
        if not resume:
            raise ConfigError(f"checkpoint.resume: false, but {directory} holds checkpoints up to step "
                              f"{manifest['step']}, which a new run would mix with its own. Use a new job.run_dir, "
                              f"or delete {directory} to start over in this one")
        check_manifest(path, manifest, signature, world_size)
        if manifest["step"] > max_steps:
            raise ConfigError(f"training.max_steps: {path} is at step {manifest['step']}, past training.max_steps="
                              f"{max_steps}; a run cannot be shortened after the fact")
        return


COMPLETED = "COMPLETED"
"""The marker ``<run_dir>/COMPLETED``: the run with this signature reached its ``training.max_steps``."""


def completion_mismatch(run_dir: Path, signature: dict[str, Any], max_steps: int) -> str | None:
    """Why ``<run_dir>/COMPLETED`` does not describe the run with ``signature`` and ``max_steps`` (None
    when it does): a marker left by a shorter run, or by another run, does not make this one complete."""
    path = Path(run_dir) / COMPLETED
    if not path.is_file():
        return f"{path} does not exist"
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return f"{path} is unreadable"
    if record.get("steps") != max_steps:
        return f"{path} records {record.get('steps')} steps and training.max_steps is {max_steps}"
    differences = signature_differences(record.get("signature") or {}, signature)
    if differences:
        return f"{path} records another run: {'; '.join(differences)}"
    return None


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
        fragments = optimizer_fragments(engine)
        if fragments is not None:  # ZeRO 1-3: what another world size restores the optimizer from
            own = path / fragments_file(self.env.rank)
            torch.save(fragments, own.with_suffix(".tmp"))
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
        return complete_checkpoints(self.directory)

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
        return candidates(self.directory)

    def load_latest(self, engine) -> tuple[int, list[dict[str, Any]]] | None:
        """Restore the newest good checkpoint into ``engine``; return (step, trainer states).

        On another world size under ZeRO 1-3 the engine's optimizer state is assembled from the saved
        optimizer fragments. The states are ``[this rank's own]`` when the world size is unchanged, else
        every rank's that wrote the checkpoint (for resharding the pruning state). Returns None when there
        is no checkpoint. A checkpoint that fails verification is reported with its path and skipped for the
        previous one; one of another run is refused (:func:`check_manifest`). All ranks call; they agree
        on the choice.
        """
        for path in self.candidates():
            problem, manifest = self._verify_collectively(path)
            if problem is not None:
                log.warning("checkpoint %s is not usable: %s; trying the previous one", path, problem)
                continue
            check_manifest(path, manifest, self.signature, self.env.world_size)
            written_by = manifest["world_size"]
            elastic = written_by != self.env.world_size and self.signature["zero.stage"] > 0
            self._load_engine(engine, path, elastic, written_by)
            ranks = [self.env.rank] if written_by == self.env.world_size else range(written_by)
            # Every old rank's state is opened on another world size; memory-mapped, a rank reads only the
            # parts of the statistics and teacher partitions that overlap its own fragments.
            states = [torch.load(path / f"trainer_rank{r}.pt", map_location="cpu", weights_only=False,
                                 mmap=written_by != self.env.world_size) for r in ranks]
            if written_by != self.env.world_size:
                log.warning("%s was written by %d ranks, this job has %d: %s and teacher state resharded",
                            path, written_by, self.env.world_size,
                            "optimizer, pruning" if elastic else "pruning")
            log.info("resumed from %s (step %d)", path, manifest["step"])
            return manifest["step"], states
        return None

    def _load_engine(self, engine, path: Path, elastic: bool, written_by: int) -> None:
        """DeepSpeed's state from ``path``; ``elastic``: written by another number of ranks under ZeRO 1-3."""
        if not elastic:
            load_path, _ = engine.load_checkpoint(str(self.directory), tag=path.name, load_optimizer_states=True,
                                                  load_lr_scheduler_states=True)
        elif self.signature["zero.stage"] < 3:
            # DeepSpeed's module file of ZeRO 1-2 is whole (any world size reads it): weights, buffers, frozen
            # parameters, scheduler. Without its optimizer state DeepSpeed copies the module into the masters,
            # which the fragments then overwrite with the saved fp32 values.
            load_path, _ = engine.load_checkpoint(str(self.directory), tag=path.name, load_optimizer_states=False,
                                                  load_lr_scheduler_states=True)
        else:
            # DeepSpeed's ZeRO-3 load without its optimizer state would rebuild the whole fp32 model on every
            # rank (zero_to_fp32); the fragments hold all it would restore.
            load_path = str(path)
        if load_path is None:
            raise CheckpointError(f"{path}: DeepSpeed could not load the engine state")
        if elastic:
            load_optimizer_fragments(engine, [path / fragments_file(r) for r in range(written_by)])


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
