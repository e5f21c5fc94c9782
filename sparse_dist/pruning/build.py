"""The registry of pruning methods, and the pruner for a config over the model's prunable sites.

A method is a :class:`~sparse_dist.pruning.pruner.Pruner` subclass registered here under its
``pruning.method`` name; what it supports and needs (scopes, when masks change, a regulariser, frozen
weights) are its class attributes, which the config validates against.
"""

from __future__ import annotations

import logging

import torch

from sparse_dist.config import PruningConfig
from sparse_dist.distributed.comm import Communicator
from sparse_dist.pruning.importance import PinsPruner, PlatonPruner
from sparse_dist.pruning.learned import MovementPruner, SMPPruner, SoftMovementPruner
from sparse_dist.pruning.magnitude import MagnitudePruner
from sparse_dist.pruning.pruner import NoPruning, Pruner
from sparse_dist.pruning.sites import find_sites, sites_table

log = logging.getLogger(__name__)

PRUNERS: dict[str, type[Pruner]] = {
    "magnitude": MagnitudePruner, "movement": MovementPruner, "soft_movement": SoftMovementPruner, "smp": SMPPruner,
    "platon": PlatonPruner, "pins": PinsPruner}
"""Every method but ``none`` (dense fine-tuning, :class:`NoPruning`), by ``pruning.method`` name."""


def build_pruner(config: PruningConfig, pretrained: torch.nn.Module, total_steps: int, comm: Communicator) -> Pruner:
    """The pruner of ``config.method`` over every prunable matrix of the transformers model ``pretrained``."""
    if config.method == "none":
        return NoPruning(total_steps, comm)
    sites = find_sites(pretrained)
    log.info("pruning %s (%s scope, %.1f%% remaining at the end): prunable matrices\n%s", config.method,
             config.scope, 100 * config.target_remaining, sites_table(sites))
    return PRUNERS[config.method](config, pretrained, sites, total_steps, comm)
