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
from torch.autograd.function import once_differentiable

from sparse_dist.distributed.select import ScoreShard, Threshold


class _MaskedLinearFunction(torch.autograd.Function):
    """``y = x @ (W * M)^T + b`` with a bool mask ``M`` made from the scores ``S``, straight through to ``S``.

    Shapes: ``x`` ``[..., in]``, ``W`` and ``S`` the stored weight's shape (``[out, in]``, or ``[in, out]``
    when ``transposed``), ``y`` ``[..., out]``. Backward, from ``dL/dy``: ``dL/dW' = dL/dy^T x`` (in the stored
    shape), ``dL/dS = dL/dW' * W`` (the mask is transparent: Sanh et al. 2020; METHODS.md, "movement"),
    ``dL/dW = dL/dW' * M`` only when ``W`` trains, ``dL/dx = dL/dy (W * M)``.

    What the backward keeps is ``x`` (as ``F.linear`` would) and references to ``W`` and ``S``: no masked
    copy of the weight and no mask. Under ZeRO-3 those are whole gathered tensors, so keeping ``W * M`` for
    every layer until its backward (what ``F.linear`` on a masked weight does) would hold a whole copy of
    every prunable weight on every rank; the backward rebuilds ``M`` from ``S`` (gathered again there) and
    ``W * M`` with one comparison and one ``where`` each. Not for ``torch.autocast`` (the runs train in the
    parameters' own dtype) nor for double backward.
    """

    @staticmethod
    def forward(ctx, inputs, weight, bias, scores, mask_of, transposed):
        masked = _apply_mask(weight, mask_of(scores))
        ctx.save_for_backward(inputs, weight, scores)
        ctx.mask_of, ctx.transposed, ctx.has_bias = mask_of, transposed, bias is not None
        return F.linear(inputs, masked.t() if transposed else masked, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        inputs, weight, scores = ctx.saved_tensors
        mask = ctx.mask_of(scores)
        grad_inputs = grad_weight = grad_bias = grad_scores = None
        flat_grad = grad_out.reshape(-1, grad_out.shape[-1])  # [tokens, out]
        if ctx.needs_input_grad[0]:
            masked = _apply_mask(weight, mask)
            grad_inputs = grad_out.matmul(masked.t() if ctx.transposed else masked)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[3]:
            grad_masked = flat_grad.t().mm(inputs.reshape(-1, inputs.shape[-1]))  # [out, in]
            if ctx.transposed:
                grad_masked = grad_masked.t()
            if ctx.needs_input_grad[3]:
                grad_scores = torch.mul(grad_masked, weight).to(scores.dtype)
            if ctx.needs_input_grad[1]:
                grad_weight = _apply_mask(grad_masked, mask)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = flat_grad.sum(0)
        return grad_inputs, grad_weight, grad_bias, grad_scores, None, None


class _SigmoidMean(torch.autograd.Function):
    """``mean(sigmoid(S))``, a scalar, for the sigmoid-mass regulariser; ``S`` of any shape.

    Backward: ``dL/dS = dL/dR * sigmoid(S) (1 - sigmoid(S)) / numel(S)``, with ``sigmoid(S)`` computed again
    from ``S``. ``torch.sigmoid(S).mean()`` would keep ``sigmoid(S)``, a tensor of the whole score's size, for
    every layer until its backward: under ZeRO-3, all of the model's scores whole on every rank."""

    @staticmethod
    def forward(ctx, scores):
        ctx.save_for_backward(scores)
        return torch.sigmoid(scores).mean()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (scores,) = ctx.saved_tensors
        sigmoid = torch.sigmoid(scores)
        return sigmoid.mul_(1 - sigmoid).mul_(grad / scores.numel())


def _apply_mask(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``values`` where ``mask``, else +0.0: one pass."""
    return torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device))


def threshold_mask(scores: torch.Tensor, rule: Threshold, tensor: int) -> torch.Tensor:
    """The bool mask a selection rule gives the whole score tensor number ``tensor`` of its group."""
    return rule.mask(ScoreShard(scores.reshape(-1), 0, tensor, 0)).view_as(scores)


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
        return self._mask_function()(self.scores if scores is None else scores)

    def mask_of_range(self, scores: torch.Tensor, start: int) -> torch.Tensor:
        """The current mask of the flat elements ``[start, start + len(scores))``, from those scores."""
        if self.mode == "threshold":
            return self.rule.mask(ScoreShard(scores.reshape(-1), 0, self.tensor_index, start))
        return torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.track_sigmoid_mass and torch.is_grad_enabled():  # only the pass the regulariser differentiates
            self.sigmoid_mass = _SigmoidMean.apply(self.scores)
        return _MaskedLinearFunction.apply(inputs, self.weight, self.bias, self.scores, self._mask_function(),
                                           self.transposed)

    def _mask_function(self):
        """``scores -> bool mask`` with the rule, mode and fixed mask as they are now: the forward pass and its
        backward (which rebuilds the mask) use the same one."""
        fixed, mode, rule, tensor = self.fixed_mask, self.mode, self.rule, self.tensor_index
        if fixed is not None:
            return lambda scores: fixed
        if mode == "threshold":
            return lambda scores: threshold_mask(scores.detach(), rule, tensor)
        return lambda scores: torch.ones(scores.shape, dtype=torch.bool, device=scores.device)

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
