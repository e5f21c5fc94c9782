"""Methods that learn a score per weight: movement, soft movement, and SMP (SMP-L and SMP-S).

Every prunable linear layer becomes a :class:`~sparse_dist.pruning.masked_linear.MaskedLinear` with
scores initialised to ``score_init`` and trained by Adam at ``score_lr``.

- movement: weights are trained too; the mask is the top-k of the scores (per matrix by default, as
  Sanh et al.; per type or global as options) at the schedule's remaining fraction, recomputed every
  step. No regulariser: none of the movement references has one.
- smp: every pretrained weight is frozen and the scores train. With a label-word head (GLUE) that
  head is frozen too and only the scores train. A task without label words (token classification,
  extractive QA) has no pretrained head to read, so its new task layer (``classifier``, ``qa_outputs``;
  never pruned) trains with the scores, at ``optimizer.lr`` with its schedule, while the encoder stays
  bit for bit as pretrained: the mask is the only change to the encoder. SMP-L takes the top-k
  per matrix, SMP-S per matrix with budgets from the sigmoid mass of each type (see
  :mod:`~sparse_dist.pruning.scopes`). The regulariser ``lambda_t R(S)`` with
  ``lambda_t = lambda (1 - (1 - t/T)^3)`` pushes the sigmoid mass down.
- soft_movement: no top-k; a weight is kept where sigmoid(S) > tau, tau ramped from 0 to
  ``soft_threshold`` with the schedule, and the regulariser's lambda ramped the same way. As in the
  released code, a matrix in which fewer than ``int(soft_min_remaining x n) + 1`` scores pass keeps
  that many of its highest scores instead (0.5% by default), so no matrix is emptied; those come from the
  exact distributed selection per matrix, and the layers mask with the same rules in their forward pass.

``R(S)`` is the mean over matrices of mean(sigmoid(S)), computed inside each layer's forward pass
(where ZeRO-3 has the full scores) so that it is differentiable. It has no temperature: SMP's released
code divides by ``p`` only in the SMP-S budgets (the paper writes sigmoid(S / p) in the regulariser too,
which would shrink its gradient: 4 times at S = 0 with p = 4).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import deepspeed
import torch

from sparse_dist.distributed.bitmask import PackedMask
from sparse_dist.distributed.fragments import build_fragments
from sparse_dist.distributed.gather import is_partitioned
from sparse_dist.distributed.select import NO_TIES, Threshold
from sparse_dist.pruning.masked_linear import MaskedLinear, _logit, trains_with_scores
from sparse_dist.pruning.pruner import Pruner
from sparse_dist.pruning.scopes import floor_count, sigmoid_mass, smp_budgets, uniform_ks


class LearnedScorePruner(Pruner):
    """Scores learned through masked layers; the mask is the top-k of the scores, recomputed every step.

    What a method adds is said by the class attributes ``regularized`` (the sigmoid-mass regulariser
    ``lambda_t R(S)``) and ``freezes_weights`` (only the scores train), not by its name."""

    mask_updates = "every_step"
    every_step_after_ramp = True

    @property
    def regularizer_on(self) -> bool:
        return self.regularized and self.config.regularizer_lambda > 0

    def prepare(self, trained: torch.nn.Module, task_head: Sequence[str] = ()) -> None:
        self.layers = replace_with_masked(self.pretrained, self.sites, self.config.score_init)
        for layer in self.layers:
            layer.mode = "threshold"
            layer.track_sigmoid_mass = self.regularizer_on
        if self.freezes_weights:  # weights, embeddings, norms and a label-word head stay as pretrained
            head = set(task_head)
            for name, param in trained.named_parameters():
                param.requires_grad = trains_with_scores(name, param) or name in head

    def pruned_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [(f"{site.name}.scores", layer.scores) for site, layer in zip(self.sites, self.layers)]

    def attach(self, engine) -> None:
        self.fragments = build_fragments(engine, self.pruned_parameters())

    def start(self) -> None:
        self._update(0)

    def step(self, step: int) -> None:
        self._update(step)

    def kept_counts(self, values: list[torch.Tensor]) -> list[int]:
        """How many scores each selection group keeps at the current target."""
        return uniform_ks(self.grouping, self.target)

    def _update(self, step: int) -> None:
        self.target = self.schedule.remaining(step)
        values = self._working_scores()
        self.replace_masks(self.select(values, self.kept_counts(values), values[0].dtype))
        self._bind_rules()

    def _working_scores(self) -> list[torch.Tensor]:
        """This rank's fragment of every score tensor, as the forward pass will read it."""
        with torch.no_grad():
            return [f.working().detach() for f in self.fragments]

    def _bind_rules(self) -> None:
        """Give every masked layer its group's selection rule, so that the forward pass masks with exactly the
        masks the pruner holds (and every rank agrees on them)."""
        for i, layer in enumerate(self.layers):
            layer.rule = self.thresholds[self.grouping.group[i]]
            layer.tensor_index = self.grouping.tensor[i]

    def load_state_dict(self, states: list[dict]) -> None:
        super().load_state_dict(states)
        self._bind_rules()  # a resumed run's first forward pass masks as the saved run's next one would

    def regularizer_weight(self, step: int) -> float:
        progress = min(1.0, step / self.schedule.total_steps)
        return self.config.regularizer_lambda * (1 - (1 - progress) ** 3)

    def loss_terms(self, step: int) -> dict[str, torch.Tensor]:
        if not self.regularizer_on:
            return {}
        masses = [layer.sigmoid_mass for layer in self.layers if layer.sigmoid_mass is not None]
        value = torch.stack(masses).mean()
        self.last_regularizer = float(value.detach())
        return {"regularizer": self.regularizer_weight(step) * value}

    def report(self) -> dict[str, float]:
        scalars = super().report()
        if self.regularizer_on and hasattr(self, "last_regularizer"):
            scalars["prune/regularizer"] = self.last_regularizer
        return scalars


class MovementPruner(LearnedScorePruner):
    """movement (Sanh et al. 2020): weights and scores train, top-k of the scores, no regulariser."""

    scopes = ("local", "per_type", "global")
    default_scope = "local"  # per matrix, as Sanh et al.


class SMPPruner(LearnedScorePruner):
    """SMP: only the scores train; SMP-L takes the top-k per matrix, SMP-S per matrix with per-type budgets."""

    scopes = ("local", "per_type")  # SMP-L and SMP-S
    default_scope = None
    regularized = True
    freezes_weights = True

    def selection_scope(self) -> str:
        # SMP-S selects within each matrix; its per-type coupling is the budget, not the selection group.
        return "local"

    def kept_counts(self, values: list[torch.Tensor]) -> list[int]:
        if self.config.scope == "per_type":
            return smp_budgets(self.sites, sigmoid_mass(values, self.config.temperature, self.comm), self.target)
        return super().kept_counts(values)


class SoftMovementPruner(LearnedScorePruner):
    """soft movement: keep where sigmoid(S) > tau, and in every matrix at least its highest scores."""

    regularized = True

    def selection_scope(self) -> str:
        return "local"  # no top-k over all; the floor is per matrix

    def _update(self, step: int) -> None:
        self.target = self.schedule.remaining(step)
        cut = _logit(self.config.soft_threshold * self.schedule.progress(step))  # sigmoid(S) > tau <=> S > cut
        values = self._working_scores()
        passing = torch.tensor([int((v > cut).sum()) for v in values], dtype=torch.int64)
        total = passing.to(getattr(self.comm, "device", torch.device("cpu")))
        self.comm.all_reduce(total)
        passing = [int(c) for c in total.cpu()]
        floors = [floor_count(self.config.soft_min_remaining, site.numel) for site in self.sites]
        if any(c < f for c, f in zip(passing, floors)):
            # Some matrix would keep fewer than its floor: it keeps its highest scores, from the exact selection
            # (a matrix above its floor keeps its top `passing`, which are exactly the scores above the cut).
            ks = [max(c, f) for c, f in zip(passing, floors)]
            self.replace_masks(self.select(values, ks, values[0].dtype))
        else:
            self.thresholds = [Threshold(c, site.numel, cut, NO_TIES, 0) for c, site in zip(passing, self.sites)]
            self.replace_masks([PackedMask.pack(v > cut) for v in values])
        self._bind_rules()

    def regularizer_weight(self, step: int) -> float:
        return self.config.regularizer_lambda * self.schedule.progress(step)


def replace_with_masked(model: torch.nn.Module, sites, score_init: float) -> list[MaskedLinear]:
    """Swap every site's linear layer for a MaskedLinear that keeps its weight and bias parameters.

    Under ZeRO-3 the new score parameters are created inside ``deepspeed.zero.Init``, so they are
    partitioned like the weights they belong to. Must run before the DeepSpeed engine is built.
    """
    from transformers.integrations.deepspeed import deepspeed_config

    layers = []
    for site in sites:
        parent_name, _, child = site.name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        linear = getattr(parent, child)
        partitioned = is_partitioned(linear.weight)
        with deepspeed.zero.Init(config_dict_or_path=deepspeed_config()) if partitioned else contextlib.nullcontext():
            layer = MaskedLinear(linear, score_init)
        setattr(parent, child, layer)
        layers.append(layer)
    return layers
