"""Which matrices are prunable, and what kind each is.

The linear weight matrices of every transformer block are prunable; embeddings, LayerNorms, the pooler
and every head are not. Each site has a layer and a *type*, used by per-type budgets (SMP-S):

- BERT / RoBERTa: Q, K, V (self-attention), O (attention output), U (intermediate), D (output).
- T5: ``<stack>.<attention>.<q|k|v|o>`` for ``enc.self``, ``dec.self`` and ``dec.cross``, and
  ``<stack>.ffn.<wi|wi_0|wi_1|wo>`` for the feed-forward blocks.

Sites are found by module name, so a model wrapped in another module (SMP's label-word head) keeps
its sites.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from sparse_dist.distributed.gather import full_shape

_ENCODER = re.compile(r"(?:^|\.)encoder\.layer\.(\d+)\.(attention\.self\.(query|key|value)|attention\.output\.dense|"
                      r"intermediate\.dense|output\.dense)$")
_ENCODER_TYPES = {"attention.self.query": "Q", "attention.self.key": "K", "attention.self.value": "V",
                  "attention.output.dense": "O", "intermediate.dense": "U", "output.dense": "D"}
_T5_ATTENTION = re.compile(r"(?:^|\.)(encoder|decoder)\.block\.(\d+)\.layer\.\d+\.(SelfAttention|EncDecAttention)\."
                           r"([qkvo])$")
_T5_FFN = re.compile(r"(?:^|\.)(encoder|decoder)\.block\.(\d+)\.layer\.\d+\.DenseReluDense\.(wi|wi_0|wi_1|wo)$")
_STACKS = {"encoder": "enc", "decoder": "dec"}


@dataclass(frozen=True)
class Site:
    """One prunable weight matrix."""

    name: str
    """Module name of the linear layer (its weight is ``<name>.weight``)."""
    layer: str
    """Transformer block it belongs to, e.g. ``3`` or ``dec.3``."""
    kind: str
    """Matrix type, e.g. ``Q`` or ``dec.cross.k``."""
    shape: tuple[int, int]

    @property
    def numel(self) -> int:
        return self.shape[0] * self.shape[1]


def site_of(name: str, module: torch.nn.Module) -> Site | None:
    """The site a module is, or None if it is not a prunable matrix."""
    if not isinstance(module, torch.nn.Linear):
        return None
    shape = tuple(full_shape(module.weight))
    match = _ENCODER.search(name)
    if match:
        return Site(name, match.group(1), _ENCODER_TYPES[match.group(2)], shape)
    match = _T5_ATTENTION.search(name)
    if match:
        stack, block, attention, matrix = match.groups()
        role = "self" if attention == "SelfAttention" else "cross"
        return Site(name, f"{_STACKS[stack]}.{block}", f"{_STACKS[stack]}.{role}.{matrix}", shape)
    match = _T5_FFN.search(name)
    if match:
        stack, block, matrix = match.groups()
        return Site(name, f"{_STACKS[stack]}.{block}", f"{_STACKS[stack]}.ffn.{matrix}", shape)
    return None


def find_sites(model: torch.nn.Module) -> list[Site]:
    """Every prunable matrix of the model, in module order; an error if there is none."""
    sites = [site for name, module in model.named_modules() if (site := site_of(name, module)) is not None]
    if not sites:
        raise ValueError(f"{type(model).__name__}: no prunable matrices found (supported: BERT, RoBERTa, T5)")
    return sites


def sites_table(sites: list[Site]) -> str:
    """A start-up report: matrices and elements per type, and the total."""
    rows: dict[str, list[int]] = {}
    for site in sites:
        count = rows.setdefault(site.kind, [0, 0])
        count[0] += 1
        count[1] += site.numel
    width = max(5, *(len(k) for k in rows))
    lines = [f"{'type':<{width}}  matrices     elements"]
    for kind, (matrices, elements) in rows.items():
        lines.append(f"{kind:<{width}}  {matrices:>8}  {elements:>11,d}")
    lines.append(f"{'total':<{width}}  {len(sites):>8}  {sum(s.numel for s in sites):>11,d}")
    return "\n".join(lines)
