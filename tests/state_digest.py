"""Digests of state spread over ranks, for tests that compare a resumed run with what was saved."""

from __future__ import annotations

import hashlib

import torch.distributed as dist

from sparse_dist.distributed.reshard import assemble


def full_pruning_state(trainer) -> str:
    """SHA-256 of the whole model's pruning statistics and counters: every rank's fragments of each tensor
    assembled whole, so runs on different world sizes compare. All ranks call."""
    state = trainer.pruner.state_dict()
    states = [None] * dist.get_world_size()
    dist.all_gather_object(states, state)
    h = hashlib.sha256()
    for key in sorted(state["tensors"]):
        for i in range(len(state["layout"])):
            pieces = [(s["layout"][i][0], s["tensors"][key][i]) for s in states]
            total = sum(s["layout"][i][1] for s in states)
            h.update(assemble(pieces, 0, total).numpy().tobytes())
    h.update(repr((state["target"], state["updates"])).encode())
    return h.hexdigest()
