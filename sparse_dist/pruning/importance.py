"""PLATON and PINS: importance scores accumulated on each rank's fragments, and global top-k on them.

Per optimizer step ``t`` and weight, an instantaneous importance ``I_t`` is computed from this rank's
fragment of the weight and of the gradient the optimizer is using (averaged over ranks and clipped),
read inside the optimizer step (:class:`~sparse_dist.distributed.step_tap.OptimizerStepTap`), where
that gradient exists, without gathering anything:

- PLATON: ``I_t = |W * g|`` with the weights after the step (post-step tap);
- PINS: ``s = -W * g + eta * g^2`` with the weights before the step and ``eta`` the current learning
  rate (pre-step tap); ``I_t = |s|`` by default (the released code), or ``s`` with ``signed_importance``.

Then, as in PLATON's released code, with ``dT`` = ``window_steps``: ``I_t`` is averaged over a window;
at a step ``t`` with ``t % dT == 0`` the window average first updates ``Ibar <- b1 Ibar + (1 - b1) I_win``
and ``U <- b2 U + (1 - b2) |I_win - Ibar|`` (with the updated ``Ibar``), and a new window starts with
``I_t``. The score is ``Ibar * U`` (``Ibar`` alone when ``b2`` is 0 or 1). All three statistics are
fp32 tensors of the fragment's size: sharded exactly like the optimizer state.

Masks are the global top-k of the scores (the exact distributed selection); the pruned weights are
zeroed in place after the optimizer step. As in the reference code, a mask is chosen only from
statistics that an EMA update has filled: never before the first window end (step ``dT``; before it
every score is 0 and a top-k would keep weights by element index), during the ramp only at window ends
(every ``prune_every_steps``, a multiple of ``dT`` counted from step 0, the reference's
``step % dT == 0``), and after the ramp again whenever the EMA or the target changes; at the other steps
after the ramp the current masks are applied again (the reference re-selects from the same scores, which
gives the same masks). Between two ramp updates pruned weights may grow back, as in the reference code.
``include_biases`` adds the biases of the pruned layers to the selection.
"""

from __future__ import annotations

import torch

from sparse_dist.distributed.fragments import Fragment, build_fragments
from sparse_dist.distributed.masking import apply_masks
from sparse_dist.distributed.step_tap import OptimizerStepTap
from sparse_dist.pruning.pruner import Pruner
from sparse_dist.pruning.scopes import Grouping, uniform_ks
from sparse_dist.pruning.sites import Site


class ImportanceState:
    """Window average, EMA and uncertainty of one fragment's importance."""

    def __init__(self, numel: int, device: torch.device):
        self.window = torch.zeros(numel, dtype=torch.float32, device=device)
        self.average = torch.zeros(numel, dtype=torch.float32, device=device)
        self.uncertainty = torch.zeros(numel, dtype=torch.float32, device=device)

    def observe(self, importance: torch.Tensor, step: int, window_steps: int, beta1: float, beta2: float) -> None:
        """Fold in step ``step``'s importance (PLATON's update_ipt_with_local_window)."""
        local = step % window_steps
        if local == 0:
            self.average.lerp_(self.window, 1 - beta1)  # b1 Ibar + (1 - b1) I_win, one pass
            if 0 < beta2 < 1:  # |I_win - Ibar| in the window's own storage: the window restarts just below
                self.uncertainty.lerp_(self.window.sub_(self.average).abs_(), 1 - beta2)
            self.window.copy_(importance)
        else:  # (I_win * local + I_t) / (local + 1), in place
            torch.add(importance, self.window, alpha=local, out=self.window).div_(local + 1)

    def score(self, beta2: float) -> torch.Tensor:
        return self.average * self.uncertainty if 0 < beta2 < 1 else self.average.clone()

    def tensors(self) -> dict[str, torch.Tensor]:
        """The statistics by name (:attr:`ImportancePruner.statistics`)."""
        return {"window": self.window, "average": self.average, "uncertainty": self.uncertainty}


def pins_importance(weight_before: torch.Tensor, grad: torch.Tensor, lr: float, signed: bool) -> torch.Tensor:
    """s = -W g + eta g^2 = -g (W - eta g): the first-order loss change of keeping a weight after an SGD step
    (PINS; docs: METHODS.md, "PINS"); ``|s|`` unless ``signed``. ``weight_before`` and ``grad`` are one
    fragment's fp32 master and gradient (same shape); ``lr`` the group's learning rate at this step. Three
    passes into one new tensor of the fragment's shape."""
    s = torch.add(weight_before, grad, alpha=-lr).mul_(grad)  # g (W - eta g) = -s
    return s.neg_() if signed else s.abs_()


def platon_importance(weight_after: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``|W g|`` with the weights after the step (PLATON, Zhang et al. 2022; METHODS.md); one new tensor."""
    return torch.mul(weight_after, grad).abs_()


class ImportancePruner(Pruner):
    """PLATON and PINS: accumulated importance, global top-k, in-place zeroing after the step. A method
    says which weights its importance reads (:attr:`reads_weights_before_step`) and how it is computed
    (:meth:`instantaneous_importance`)."""

    mask_updates = "window_ends"
    statistics = ("window", "average", "uncertainty")
    reads_weights_before_step = False
    """Whether the importance reads the weights before the optimizer step (PINS) or after it (PLATON)."""

    def __init__(self, config, pretrained, sites: list[Site], total_steps, comm):
        super().__init__(config, pretrained, sites, total_steps, comm)
        if config.include_biases:  # biases of the pruned layers join the selection as extra tensors
            self.bias_names = [s.name for s in sites if pretrained.get_submodule(s.name).bias is not None]
            extra = len(self.bias_names)
            sizes = [self.grouping.sizes[0] + sum(_bias_numel(pretrained, n) for n in self.bias_names)]
            self.grouping = Grouping([0] * (len(sites) + extra), list(range(len(sites) + extra)), sizes,
                                     ["global"], [len(sites) + extra])
        else:
            self.bias_names = []
        self.pending_step = 1

    def pruned_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        return super().pruned_parameters() + [(f"{n}.bias", self.pretrained.get_submodule(n).bias)
                                              for n in self.bias_names]

    def attach(self, engine) -> None:
        named = self.pruned_parameters()
        frozen = [name for name, param in named if not param.requires_grad]
        if frozen:
            raise ValueError(f"{self.config.method} prunes weights it trains; {frozen[0]} is frozen")
        self.fragments = build_fragments(engine, named)
        self.states = [ImportanceState(f.numel, f.param.device) for f in self.fragments]
        self._index = {id(f): i for i, f in enumerate(self.fragments)}
        self.tap = OptimizerStepTap(engine, self.fragments)
        (self.tap.before if self.reads_weights_before_step else self.tap.after).append(self._observe)

    def _observe(self, active: list[Fragment]) -> None:
        """Inside the optimizer step: fold this step's importance into each active fragment's state."""
        c = self.config
        with torch.no_grad():
            for fragment in active:
                if fragment.numel == 0:
                    continue
                grad, weight = fragment.grad(), fragment.master()
                if grad is None:
                    continue
                importance = self.instantaneous_importance(weight, grad, fragment)
                self.states[self._index[id(fragment)]].observe(importance, self.pending_step, c.window_steps,
                                                               c.beta1, c.beta2)

    def instantaneous_importance(self, weight: torch.Tensor, grad: torch.Tensor, fragment: Fragment) -> torch.Tensor:
        """``I_t`` of one fragment from its master weights and the gradient the optimizer is using."""
        raise NotImplementedError

    def is_update_step(self, step: int) -> bool:
        """Whether masks are applied after optimizer step ``step`` (see the module docstring)."""
        c = self.config
        if step < c.window_steps or step <= c.initial_warmup_steps:  # no EMA update yet, or still warming up
            return False
        if step >= self.schedule.ramp_end:
            return True
        return step % c.window_steps == 0 and step % c.prune_every_steps == 0

    def step(self, step: int) -> None:
        self.pending_step = step + 1
        if not self.is_update_step(step):
            return
        target = self.schedule.remaining(step)
        if step % self.config.window_steps == 0 or target != self.target:  # the scores or the count changed
            self.target = target
            scores = [state.score(self.config.beta2) for state in self.states]
            self.replace_masks(self.select(scores, uniform_ks(self.grouping, self.target), torch.float32))
        apply_masks(self.fragments, self.masks, self.comm, zero_optimizer_state=False)

    def report(self) -> dict[str, float]:
        scalars = super().report()
        local = torch.tensor([sum(float(s.average.sum()) for s in self.states),
                              sum(float(s.uncertainty.sum()) for s in self.states),
                              float(sum(f.numel for f in self.fragments))], dtype=torch.float64)
        device = getattr(self.comm, "device", torch.device("cpu"))
        total = local.to(device)
        self.comm.all_reduce(total)
        scalars["importance/mean"] = float(total[0] / total[2])
        scalars["importance/uncertainty_mean"] = float(total[1] / total[2])
        return scalars

    def fragment_tensors(self) -> dict[str, list[torch.Tensor]]:
        return {key: [s.tensors()[key] for s in self.states] for key in self.statistics}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "pending_step": self.pending_step}

    def load_state_dict(self, states: list[dict]) -> None:
        super().load_state_dict(states)
        self.pending_step = states[0]["pending_step"]


class PlatonPruner(ImportancePruner):
    """PLATON: ``I_t = |W g|`` with the weights after the step."""

    def instantaneous_importance(self, weight, grad, fragment):
        return platon_importance(weight, grad)


class PinsPruner(ImportancePruner):
    """PINS: ``s = -W g + eta g^2`` with the weights before the step and the current learning rate."""

    reads_weights_before_step = True

    def instantaneous_importance(self, weight, grad, fragment):
        return pins_importance(weight, grad, _group_lr(fragment), self.config.signed_importance)


def _group_lr(fragment: Fragment) -> float:
    """The learning rate of the optimizer group that steps this fragment's master, at this step."""
    for group in fragment.optimizer.param_groups:
        if any(p is fragment.master_flat for p in group["params"]):
            return float(group["lr"])
    raise LookupError(f"{fragment.name}: not in any optimizer group")


def _bias_numel(model: torch.nn.Module, name: str) -> int:
    bias = model.get_submodule(name).bias
    return int(getattr(bias, "ds_numel", bias.numel()))
