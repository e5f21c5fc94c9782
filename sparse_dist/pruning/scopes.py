"""Where the top-k is taken, and how many weights each scope keeps.

- ``local``: every matrix is its own selection group and keeps ``round(r * n)`` of its weights.
- ``per_type``: matrices of one type (Q, K, ..., see :mod:`~sparse_dist.pruning.sites`) form a group
  that keeps ``round(r * n_type)``; for SMP it means SMP-S budgets (:func:`smp_budgets`).
- ``global``: one group over all prunable weights.

SMP-S budgets: within each type, matrix ``l`` of ``L`` keeps the fraction
``v_l = r * L * R(S_l) / sum_l' R(S_l')`` (capped at 1) of its weights, ``R(S) = sum sigmoid(S / p)``.
The temperature ``p`` appears here only, not in the regulariser (as in SMP's released code).
``R`` is summed over each rank's fragments in fixed point (2^-24 units, exactly in int64) before the
all-reduce, so the budgets, and therefore the masks, are bitwise the same for any world size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sparse_dist.distributed.comm import Communicator
from sparse_dist.pruning.schedule import kept_count
from sparse_dist.pruning.sites import Site

_FIXED_POINT = float(1 << 24)


@dataclass(frozen=True)
class Grouping:
    """Selection groups of a scope: which group and tensor number each site is, and group sizes."""

    group: list[int]
    """Per site: its selection group."""
    tensor: list[int]
    """Per site: its tensor number within the group (orders elements for tie-breaking)."""
    sizes: list[int]
    """Per group: number of weights."""
    labels: list[str]
    """Per group: a name for logs (the matrix, the type, or "global")."""
    counts: list[int]
    """Per group: number of matrices."""


def build_grouping(sites: Sequence[Site], scope: str) -> Grouping:
    if scope == "global":
        return Grouping([0] * len(sites), list(range(len(sites))), [sum(s.numel for s in sites)], ["global"],
                        [len(sites)])
    if scope == "local":
        return Grouping(list(range(len(sites))), [0] * len(sites), [s.numel for s in sites], [s.name for s in sites],
                        [1] * len(sites))
    if scope != "per_type":
        raise ValueError(f"unknown selection scope {scope!r} (the config resolves 'auto' to the method's scope)")
    kinds = list(dict.fromkeys(s.kind for s in sites))
    group = [kinds.index(s.kind) for s in sites]
    tensor, seen = [], [0] * len(kinds)
    for g in group:
        tensor.append(seen[g])
        seen[g] += 1
    sizes = [sum(s.numel for s, g in zip(sites, group) if g == k) for k in range(len(kinds))]
    return Grouping(group, tensor, sizes, kinds, seen)


def uniform_ks(grouping: Grouping, remaining: float) -> list[int]:
    """Every group keeps round(remaining x its size)."""
    return [kept_count(remaining, n) for n in grouping.sizes]


def floor_count(fraction: float, numel: int) -> int:
    """The fewest weights a soft-movement matrix keeps: int(fraction x n) + 1, as the released code (0 if off)."""
    return 0 if fraction <= 0 else min(numel, int(fraction * numel) + 1)


def sigmoid_mass(fragments_scores: Sequence[torch.Tensor], temperature: float, comm: Communicator) -> list[int]:
    """R(S) = sum sigmoid(S / p) per matrix over all ranks, in fixed point (exact, order-independent)."""
    local = torch.tensor([int(torch.round(torch.sigmoid(s.double() / temperature) * _FIXED_POINT).sum())
                          if s.numel() else 0 for s in fragments_scores], dtype=torch.int64)
    device = getattr(comm, "device", torch.device("cpu"))
    total = local.to(device)
    comm.all_reduce(total)
    return [int(v) for v in total.cpu()]


def smp_budgets(sites: Sequence[Site], mass: Sequence[int], remaining: float) -> list[int]:
    """Weights each matrix keeps under SMP-S: round(min(1, r L R_l / sum R) x n_l), types separately."""
    ks = []
    for site, own in zip(sites, mass):
        same = [(s, m) for s, m in zip(sites, mass) if s.kind == site.kind]
        total = sum(m for _, m in same)
        share = 1.0 / len(same) if total == 0 else own / total
        fraction = min(1.0, remaining * len(same) * share)
        ks.append(kept_count(fraction, site.numel))
    return ks
