"""Pick the pruner for a config and find the model's prunable sites."""

from __future__ import annotations

import logging

import torch

from sparse_dist.config import PruningConfig
from sparse_dist.distributed.comm import Communicator
from sparse_dist.pruning.importance import ImportancePruner
from sparse_dist.pruning.learned import MovementPruner, SMPPruner, SoftMovementPruner
from sparse_dist.pruning.magnitude import MagnitudePruner
from sparse_dist.pruning.pruner import NoPruning, Pruner
from sparse_dist.pruning.sites import find_sites, sites_table

log = logging.getLogger(__name__)

PRUNERS = {"magnitude": MagnitudePruner, "movement": MovementPruner, "smp": SMPPruner,
           "soft_movement": SoftMovementPruner, "platon": ImportancePruner, "pins": ImportancePruner}


def build_pruner(config: PruningConfig, pretrained: torch.nn.Module, total_steps: int, comm: Communicator) -> Pruner:
    """The pruner of ``config.method`` over every prunable matrix of the transformers model ``pretrained``."""
    if config.method == "none":
        return NoPruning(total_steps, comm)
    sites = find_sites(pretrained)
    log.info("pruning %s (%s scope, %.1f%% remaining at the end): prunable matrices\n%s", config.method,
             config.scope, 100 * config.target_remaining, sites_table(sites))
    return PRUNERS[config.method](config, pretrained, sites, total_steps, comm)
