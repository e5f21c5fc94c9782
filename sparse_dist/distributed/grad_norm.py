"""The global gradient norm of an optimizer step, the same number under every ZeRO stage.

It is the 2-norm of the gradient the step uses before clipping: accumulated over the micro-batches and
averaged over ranks. DeepSpeed's ZeRO 1-3 optimizers (and its bf16 and fp16 wrappers) compute it inside
their step from the partitions and keep it for ``engine.get_global_grad_norm()``. Under ZeRO-0 in fp32 the
torch optimizer steps the parameters directly and DeepSpeed keeps nothing (it clips with the norm and
drops it), so ``get_global_grad_norm()`` is None. There the averaged gradient is whole in every
parameter's ``.grad`` from the last backward of the step (which all-reduces it) until ``engine.step()``
frees it, and the norm is computed from it then.
"""

from __future__ import annotations

import torch


class GradNormMeter:
    """Reads the global gradient norm of the last optimizer step. Stages 0-3, with or without offload.

    Call :meth:`before_step` after the last ``engine.backward`` of a step and before its
    ``engine.step()``, on every rank (no collective); :meth:`value` after the step.
    """

    def __init__(self, engine):
        self.engine = engine
        # DeepSpeed's optimizer wrappers record the norm in ``_global_grad_norm``; the torch optimizer that
        # DeepSpeed uses as is under ZeRO-0 in fp32 has no such attribute.
        self.from_grads = not hasattr(engine.optimizer, "_global_grad_norm")
        self._norm: float | None = None

    def before_step(self) -> None:
        if not self.from_grads:
            return
        grads = [p.grad for p in self.engine.module.parameters() if p.grad is not None]
        if not grads:
            self._norm = None
            return
        norms = torch.stack([torch.linalg.vector_norm(g.detach(), dtype=torch.float32) for g in grads])
        self._norm = float(torch.linalg.vector_norm(norms))

    def value(self) -> float | None:
        """The norm of the last step's gradient (None before the first step)."""
        if self.from_grads:
            return self._norm
        norm = self.engine.get_global_grad_norm()
        return None if norm is None else float(norm)
