"""The fraction of prunable weights kept at each step (Zhu & Gupta's cubic schedule, or linear).

With T total steps, t_i initial and t_f final warm-up steps and r_f the target remaining fraction:
r(t) = 1 for t <= t_i; r_f + (1 - r_f)(1 - (t - t_i) / (T - t_i - t_f))^3 during the ramp (the linear
variant drops the cube); r(t) = r_f after T - t_f. Masks are updated every ``prune_every_steps``
steps during the ramp (methods that learn scores update every step; PLATON and PINS follow their
importance windows, :mod:`~sparse_dist.pruning.importance`) and, for methods that ask for it, every
step after the ramp.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SparsitySchedule:
    target_remaining: float
    total_steps: int
    initial_warmup_steps: int = 0
    final_warmup_steps: int = 0
    kind: str = "cubic"
    prune_every_steps: int = 1

    @property
    def ramp_end(self) -> int:
        return self.total_steps - self.final_warmup_steps

    def remaining(self, step: int) -> float:
        """Fraction of prunable weights kept after optimizer step ``step`` (step 0: before training)."""
        if step <= self.initial_warmup_steps:
            return 1.0
        if step >= self.ramp_end:
            return self.target_remaining
        progress = (step - self.initial_warmup_steps) / (self.ramp_end - self.initial_warmup_steps)
        shape = (1 - progress) ** 3 if self.kind == "cubic" else 1 - progress
        return self.target_remaining + (1 - self.target_remaining) * shape

    def progress(self, step: int) -> float:
        """How far pruning has gone, 0 (nothing pruned) to 1 (target reached)."""
        if self.target_remaining >= 1.0:
            return 1.0
        return (1.0 - self.remaining(step)) / (1.0 - self.target_remaining)

    def is_update_step(self, step: int, every_step_after_ramp: bool) -> bool:
        """Whether masks are recomputed after optimizer step ``step``."""
        if step <= self.initial_warmup_steps:
            return False
        if step >= self.ramp_end:
            return every_step_after_ramp or step == self.ramp_end
        return (step - self.initial_warmup_steps) % self.prune_every_steps == 0


def kept_count(remaining: float, numel: int) -> int:
    """round(remaining x numel), the exact number of weights a scope keeps."""
    return min(numel, max(0, round(remaining * numel)))
