"""The pruner: what every method shares, and how the trainer drives it.

Sites are named relative to the transformers model (``pretrained``), which is what an export writes;
the trained module may wrap it (SMP's label-word head). The trainer calls, in this order:
:meth:`Pruner.prepare` before the DeepSpeed engine is built (methods with learned scores swap in masked
layers and freeze what they do not train), :meth:`Pruner.attach` with the engine,
:meth:`Pruner.start` before the first step of a fresh run, then after every optimizer step the one
explicit :meth:`Pruner.step`, and after every forward pass :meth:`Pruner.loss_terms` (regularisers).
:meth:`Pruner.report` is collective and returns the scalars for TensorBoard.

Every rank keeps the masks of its own fragments only (packed bits), so the pruning state per rank
shrinks with the world size; masks come from the exact distributed selection.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence

import torch

from sparse_dist.config import PruningConfig
from sparse_dist.distributed.bitmask import PackedMask
from sparse_dist.distributed.comm import Communicator
from sparse_dist.distributed.fragments import Fragment
from sparse_dist.distributed.select import GroupLayout, ScoreShard, Threshold, select_topk
from sparse_dist.pruning.schedule import SparsitySchedule
from sparse_dist.pruning.scopes import Grouping, build_grouping
from sparse_dist.pruning.sites import Site

log = logging.getLogger(__name__)


class Pruner:
    """Sites, schedule, per-fragment masks, selection and reporting, shared by the methods."""

    # What a method is, declared here rather than in checks of its name: the config validates
    # ``pruning.*`` against these (:func:`sparse_dist.config.validate`), the trainer and the distiller ask them.
    scopes: tuple[str, ...] = ("global",)
    """The values of ``pruning.scope`` the method supports."""
    default_scope: str | None = "global"
    """What ``pruning.scope: auto`` resolves to; None if the method has no default (SMP: SMP-L or SMP-S)."""
    mask_updates: str = "interval"
    """When masks change: ``interval`` (every ``pruning.prune_every_steps``, 1 by default), ``every_step``
    (they follow learned scores; the interval does not apply) or ``window_ends`` (importance windows)."""
    every_step_after_ramp = False
    """Whether masks are recomputed at every step once the target is reached."""
    regularized = False
    """Whether the method adds a regulariser to the loss (:meth:`loss_terms`): soft movement and SMP."""
    freezes_weights = False
    """Whether every pretrained weight stays as it is and only mask scores train (SMP). With a label-word head
    (GLUE) that head is pretrained and frozen too, and the mask alone, with the base model, is the pruned
    model; a task without label words (NER, QA) trains its new task head with the scores (:meth:`prepare`)."""
    statistics = ()
    """Names of the fp32 tensors the method keeps per element of each fragment besides its mask (PLATON and
    PINS: their importance statistics); the memory planner (:mod:`sparse_dist.plan`) counts them."""

    def __init__(self, config: PruningConfig, pretrained: torch.nn.Module, sites: Sequence[Site], total_steps: int,
                 comm: Communicator):
        self.config = config
        self.pretrained = pretrained
        """The transformers model the site names refer to."""
        self.sites = list(sites)
        self.comm = comm
        self.schedule = SparsitySchedule(config.target_remaining, total_steps, config.initial_warmup_steps,
                                         config.final_warmup_steps, config.schedule, config.prune_every_steps)
        self.grouping: Grouping = build_grouping(self.sites, self.selection_scope())
        self.fragments: list[Fragment] = []
        self.masks: list[PackedMask] = []
        """This rank's mask of each site (its fragment), 1 = kept."""
        self.thresholds: list[Threshold] = []
        self.target = 1.0
        self.updates = 0
        self._flips = 0

    # --- the interface the trainer uses -------------------------------------------------------------

    def selection_scope(self) -> str:
        return self.config.scope

    def prepare(self, trained: torch.nn.Module, task_head: Sequence[str] = ()) -> None:
        """Change the model before the engine is built (nothing, unless the method learns scores).

        ``trained`` is the whole module that will be trained (``pretrained`` or a module around it);
        ``task_head`` names its newly initialised task layer (:attr:`~sparse_dist.models.build.BuiltModel.task_head`),
        which a method that freezes weights still trains."""

    def attach(self, engine) -> None:
        """Find this rank's fragments once the engine (and its optimizer) exists."""
        raise NotImplementedError

    def pruned_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        """The named parameters whose fragments carry the pruning state (masks, statistics), in selection order:
        the sites' weights, unless the method says otherwise. Valid after :meth:`prepare`."""
        return [(f"{site.name}.weight", self.pretrained.get_submodule(site.name).weight) for site in self.sites]

    def start(self) -> None:
        """Masks for the first forward pass of a fresh run."""
        self.masks = [PackedMask.full(f.numel, True, device=f.param.device) for f in self.fragments]

    def step(self, step: int) -> None:
        """The one call per optimizer step: update masks if the schedule says so. All ranks call."""
        raise NotImplementedError

    def loss_terms(self, step: int) -> dict[str, torch.Tensor]:
        """Terms to add to the loss after a forward pass (empty unless the method regularises)."""
        return {}

    def report(self) -> dict[str, float]:
        """Remaining fraction (target and actual, overall and per layer), mask flips. All ranks call."""
        local = torch.tensor([m.count() for m in self.masks] + [self._flips], dtype=torch.int64)
        device = getattr(self.comm, "device", torch.device("cpu"))
        total = local.to(device)
        self.comm.all_reduce(total)
        kept = total[:-1].cpu().tolist()  # sites first; PLATON/PINS may add biases after them
        flips = int(total[-1])
        numel = sum(self.grouping.sizes) if self.selection_scope() != "local" else sum(s.numel for s in self.sites)
        scalars = {"prune/remaining": sum(kept) / numel, "prune/remaining_target": self.target,
                   "prune/mask_flips": flips / numel}
        per_layer: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for site, count in zip(self.sites, kept):
            per_layer[site.layer][0] += count
            per_layer[site.layer][1] += site.numel
        for layer, (count, size) in per_layer.items():
            scalars[f"prune/remaining/{layer}"] = count / size
        finite = [t.value for t in self.thresholds if abs(t.value) != float("inf")]
        if finite:
            scalars["prune/threshold"] = finite[0] if len(self.thresholds) == 1 else sum(finite) / len(finite)
        self._flips = 0
        return scalars

    def kept_per_site(self) -> list[int]:
        """Kept weights of each site over all ranks, in site order (cheap: one small all-reduce of the
        packed masks' counts). All ranks call."""
        if not self.sites:
            return []
        kept = torch.tensor([m.count() for m in self.masks[:len(self.sites)]], dtype=torch.int64)
        total = kept.to(getattr(self.comm, "device", torch.device("cpu")))
        self.comm.all_reduce(total)
        return total.cpu().tolist()

    def achieved(self) -> dict[str, float]:
        """Kept and total prunable weights over all ranks (for the run summary). All ranks call."""
        scalars = self.report()
        return {"remaining": scalars["prune/remaining"], "sparsity": 1 - scalars["prune/remaining"]}

    def fragment_tensors(self) -> dict[str, list[torch.Tensor]]:
        """Per-fragment state besides the masks (flat tensors in fragment order), e.g. importance."""
        return {}

    def state_dict(self) -> dict:
        """This rank's pruning state: its fragments (ranges, masks, statistics) and the shared counters."""
        return {"layout": [(f.start, f.numel) for f in self.fragments],
                "masks": [m.to("cpu") for m in self.masks],
                "tensors": {k: [t.detach().cpu().clone() for t in v] for k, v in self.fragment_tensors().items()},
                "thresholds": self.thresholds, "target": self.target, "updates": self.updates}

    def load_state_dict(self, states: list[dict]) -> None:
        """Restore from the states every rank saved: this rank's own if the layout is unchanged, else this
        rank's new fragments assembled from the old ones (a different world size)."""
        own = next((s for s in states if s["layout"] == [(f.start, f.numel) for f in self.fragments]), None)
        if own is not None:
            masks = own["masks"]
            tensors = own["tensors"]
        else:
            from sparse_dist.distributed.reshard import assemble

            masks, tensors = [], {key: [] for key in states[0]["tensors"]}
            for i, fragment in enumerate(self.fragments):
                pieces = [(s["layout"][i][0], s["masks"][i].unpack()) for s in states]
                masks.append(PackedMask.pack(assemble(pieces, fragment.start, fragment.numel)))
                for key in tensors:
                    pieces = [(s["layout"][i][0], s["tensors"][key][i]) for s in states]
                    tensors[key].append(assemble(pieces, fragment.start, fragment.numel))
        self.masks = [m.to(f.param.device) for m, f in zip(masks, self.fragments)]
        for key, values in self.fragment_tensors().items():
            for mine, saved in zip(values, tensors[key]):
                mine.copy_(saved)
        shared = states[0]
        self.thresholds, self.target, self.updates = shared["thresholds"], shared["target"], shared["updates"]

    # --- helpers for the methods --------------------------------------------------------------------

    def select(self, values: Sequence[torch.Tensor], ks: list[int], dtype: torch.dtype) -> list[PackedMask]:
        """Exact top-k per selection group over this rank's fragment values; returns the new masks."""
        shards = [ScoreShard(v, self.grouping.group[i], self.grouping.tensor[i], self.fragments[i].start)
                  for i, v in enumerate(values)]
        layout = GroupLayout(sizes=self.grouping.sizes, tensors=self.grouping.counts,
                             dtypes=[dtype] * len(self.grouping.sizes))
        self.thresholds = select_topk(shards, ks, self.comm, layout=layout)
        return [PackedMask.pack(self.thresholds[s.group].mask(s)) for s in shards]

    def replace_masks(self, masks: list[PackedMask]) -> None:
        """Adopt new masks, counting how many bits flipped."""
        if self.masks:
            self._flips += sum(old.flips(new) for old, new in zip(self.masks, masks))
        self.masks = masks
        self.updates += 1


class NoPruning(Pruner):
    """Dense fine-tuning: nothing is pruned."""

    def __init__(self, total_steps: int, comm: Communicator):
        self.comm = comm
        self.pretrained = None
        self.sites, self.fragments, self.masks, self.thresholds = [], [], [], []
        self.target, self.updates, self._flips = 1.0, 0, 0

    def attach(self, engine) -> None:
        pass

    def start(self) -> None:
        pass

    def step(self, step: int) -> None:
        pass

    def report(self) -> dict[str, float]:
        return {}

    def kept_per_site(self) -> list[int]:
        return []

    def achieved(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, states: list[dict]) -> None:
        pass
