"""Stopping cleanly when a cluster asks: SIGTERM (preemption, scancel) and SIGUSR1 (SLURM's warning
before the time limit, ``#SBATCH --signal``).

The handler only raises a flag. It is installed for the whole of ``Trainer.train``, from the resume to
the exported model: at the next step boundary, or once the final evaluation, checkpoint or export under
way is done, all ranks agree (one tiny all-reduce: a rank may see the signal a step earlier than another),
save a checkpoint of the last completed step and stop; nothing after it is lost. A stopped run exits with
:data:`RESUMABLE_EXIT` and writes no completion marker, so a job script knows to requeue it; restarting
the same command continues from the checkpoint.
"""

from __future__ import annotations

import logging
import signal

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
RESUMABLE_EXIT = 75
"""Exit status of a run stopped by a signal after saving (EX_TEMPFAIL: try again)."""


class StopRequest:
    """Flags SIGTERM/SIGUSR1 while installed; :meth:`agreed` tells every rank whether any rank saw one."""

    def __init__(self, device: torch.device):
        self.device = device
        self.signal: int | None = None
        self._previous = {}

    def __enter__(self) -> StopRequest:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        if self.signal is None:
            log.warning("received %s: saving a checkpoint of the last completed step, then stopping",
                        signal.Signals(signum).name)
        self.signal = signum

    def agreed(self) -> bool:
        """True on every rank if any rank has been signalled. All ranks call, once per step."""
        flag = torch.tensor([1 if self.signal is not None else 0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())
