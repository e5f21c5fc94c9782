"""Linear layers whose weights are masked by learned scores (movement, soft movement, SMP).

``MaskedLinear`` computes ``x @ (W * M(S))^T + b`` with a learned score ``S`` per weight; around GPT-2's
``Conv1D``, whose weight is stored transposed (``[in, out]``), it computes ``x @ (W * M(S)) + b``. Scores
and masks always have the stored weight's shape, so every flat index means the same weight in the
parameter, its ZeRO fragments, its mask and the exported checkpoint, whatever the orientation. The mask is
binary in the forward pass and transparent in the backward pass (straight-through): the gradient that
reaches ``S`` is the gradient with respect to the mask, ``dL/dM = dL/dW' * W`` (Sanh et al. 2020).

The scores are a parameter of the layer, so DeepSpeed treats them like the weight they belong to:
ZeRO-3 partitions them (the layer is built inside ``deepspeed.zero.Init`` when the model is) and
ZeRO shards their Adam states. Inside the forward pass ZeRO-3 has gathered the full scores, so the mask
is computed from the full tensor with the group's selection rule (a
:class:`~sparse_dist.distributed.select.Threshold`), which gives the same mask on every rank.

The layer also records ``mean(sigmoid(S))`` for the sigmoid-mass regulariser of soft movement and SMP.
There is no temperature in it: SMP's released code uses ``sigmoid(S)`` in the regulariser and the
temperature ``p`` only in the SMP-S budgets (:mod:`~sparse_dist.pruning.scopes`), although the paper
writes ``sigmoid(S / p)`` for both. It is recorded only by passes that autograd records (training
forwards): a no-grad pass, such as SMP's mask-only teacher running the student's layers, must not
replace the differentiable value the regulariser is about to use. A pass that must leave the layers
exactly as they were takes a :meth:`MaskedLinear.snapshot` before and restores it after.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sparse_dist.distributed.select import NO_TIES, ScoreShard, Threshold


class _MaskedWeight(torch.autograd.Function):
    """``W' = W * M`` for a bool mask ``M`` computed from the scores ``S``, straight through to ``S``.

    Forward: ``where(M, W, 0)``. Backward, from ``dL/dW'``: ``dL/dS = dL/dW' * W`` (the mask is transparent,
    Sanh et al. 2020) and, only when ``W`` trains, ``dL/dW = dL/dW' * M``. One pass and no float copy of the
    mask in the forward; the bool mask (1 B per weight) and ``W`` are what the backward keeps.
    """

    @staticmethod
    def forward(ctx, weight: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(weight, mask)
        ctx.scores_dtype = scores.dtype
        return torch.where(mask, weight, torch.zeros((), dtype=weight.dtype, device=weight.device))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        weight, mask = ctx.saved_tensors
        grad_weight = grad_scores = None
        if ctx.needs_input_grad[0]:
            grad_weight = torch.where(mask, grad, torch.zeros((), dtype=grad.dtype, device=grad.device))
        if ctx.needs_input_grad[1]:
            grad_scores = torch.mul(grad, weight).to(ctx.scores_dtype)
        return grad_weight, grad_scores, None


def threshold_mask(scores: torch.Tensor, rule: Threshold, tensor: int) -> torch.Tensor:
    """The bool mask a selection rule gives the whole score tensor number ``tensor`` of its group."""
    flat = scores.reshape(-1)
    if rule.tie_tensor == NO_TIES or tensor > rule.tie_tensor:
        keep = flat > rule.value
    elif tensor < rule.tie_tensor:
        keep = flat >= rule.value  # every tie kept: one comparison
    else:
        keep = flat > rule.value
        keep |= (flat == rule.value) & (torch.arange(flat.numel(), device=flat.device) <= rule.tie_position)
    return keep.view_as(scores)


class MaskedLinear(torch.nn.Module):
    """A linear layer with a learned score per weight; keeps the original weight and bias parameters.

    Mask modes: ``"threshold"`` (the rule set by the pruner before every forward pass: a top-k, or soft
    movement's threshold with its floor) and ``"none"`` (keeps everything).
    """

    def __init__(self, linear: torch.nn.Module, score_init: float):
        super().__init__()
        self.transposed = is_transposed_linear(linear)
        """Whether the weight is stored ``[in, out]`` (GPT-2's ``Conv1D``) rather than ``[out, in]``."""
        if self.transposed:
            self.in_features, self.out_features = linear.nx, linear.nf
        else:
            self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        shape = tuple(getattr(linear.weight, "ds_shape", linear.weight.shape))
        self.scores = torch.nn.Parameter(torch.full(shape, float(score_init), dtype=torch.float32,
                                                    device=linear.weight.device))
        self.mode = "none"
        self.rule: Threshold | None = None
        """Selection rule of this layer's group ("threshold" mode)."""
        self.tensor_index = 0
        """This layer's tensor number in its selection group."""
        self.fixed_mask: torch.Tensor | None = None
        """A whole mask that overrides the rule (a teacher's older mask), or None."""
        self.track_sigmoid_mass = False
        self.sigmoid_mass: torch.Tensor | None = None
        """mean(sigmoid(S)) from the last forward pass autograd recorded, for the regulariser (no temperature)."""
        self._state_names = tuple(name for name in vars(self) if not name.startswith("_"))
        """Every attribute set above (and the training flag): the layer's state besides its parameters."""

    def snapshot(self) -> dict:
        """The layer's state (rule, fixed mask, mode, sigmoid mass, training flag, ...), not its parameters;
        what a pass that must leave the layer as it found it restores afterwards (:meth:`restore`)."""
        return {name: getattr(self, name) for name in self._state_names}

    def restore(self, snapshot: dict) -> None:
        """Put back the state of :meth:`snapshot`."""
        vars(self).update(snapshot)

    def current_mask(self, scores: torch.Tensor | None = None) -> torch.Tensor:
        """The bool mask of the whole weight for the current rule (``scores`` defaults to the layer's)."""
        if self.fixed_mask is not None:
            return self.fixed_mask
        scores = self.scores if scores is None else scores
        if self.mode == "threshold":
            return threshold_mask(scores, self.rule, self.tensor_index)
        return torch.ones_like(scores, dtype=torch.bool)

    def mask_of_range(self, scores: torch.Tensor, start: int) -> torch.Tensor:
        """The current mask of the flat elements ``[start, start + len(scores))``, from those scores."""
        if self.mode == "threshold":
            return self.rule.mask(ScoreShard(scores.reshape(-1), 0, self.tensor_index, start))
        return torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.track_sigmoid_mass and torch.is_grad_enabled():  # only the pass the regulariser differentiates
            self.sigmoid_mass = torch.sigmoid(self.scores).mean()
        weight = _MaskedWeight.apply(self.weight, self.scores, self.current_mask().detach())
        return F.linear(inputs, weight.t() if self.transposed else weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, mode={self.mode}"


def is_transposed_linear(module: torch.nn.Module) -> bool:
    """Whether a module is a linear layer with its weight stored ``[in, out]`` (GPT-2's ``Conv1D``)."""
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, Conv1D)


TRAINS_WITH_SCORES = "trains_with_scores"
"""Attribute that marks a parameter which is not a mask score but trains like one (SMP's label-word calibration)."""


def trains_with_scores(name: str, param: torch.nn.Parameter) -> bool:
    """Whether a parameter trains as the mask scores do: in their optimizer group (``pruning.score_lr``), and
    still trainable when a method freezes the weights. The layers' ``scores``, and parameters marked with
    :data:`TRAINS_WITH_SCORES`."""
    return name.endswith(".scores") or getattr(param, TRAINS_WITH_SCORES, False)


def _logit(p: float) -> float:
    """sigmoid(s) > p  <=>  s > logit(p); logit(0) = -inf keeps everything."""
    if p <= 0.0:
        return -math.inf
    if p >= 1.0:
        return math.inf
    return math.log(p / (1.0 - p))
