"""Which matrices are prunable, and what kind each is.

The linear weight matrices of every transformer block are prunable; embeddings, LayerNorms, the pooler
and every head are not. Each site has a layer and a *type*, used by per-type budgets (SMP-S). Which
modules are sites, and their types, is the model family's to say
(:meth:`sparse_dist.models.families.base.ModelFamily.site_of`): BERT / RoBERTa have Q, K, V, O, U, D;
T5 has ``<stack>.<attention>.<q|k|v|o>`` and ``<stack>.ffn.<wi|wi_0|wi_1|wo>``; GPT-2 and Llama have
``attn.<qkv|q|k|v|o>`` and ``ffn.<up|gate|down>`` (GPT-2's ``Conv1D`` sites keep their stored ``[in, out]`` shape).

Sites are found by module name, so a model wrapped in another module (SMP's label-word head) keeps
its sites.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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


def site_of(name: str, module: torch.nn.Module, family=None) -> Site | None:
    """The site a module is, or None if it is not a prunable matrix; without ``family``, any family's."""
    from sparse_dist.models.families import families

    for candidate in [family] if family is not None else families():
        site = candidate.site_of(name, module)
        if site is not None:
            return site
    return None


def find_sites(model: torch.nn.Module) -> list[Site]:
    """Every prunable matrix of the model, in module order (as its family names them); an error if there is
    none. A module without a transformers config (a test model) is matched against every family."""
    from sparse_dist.models.families import family_of

    family = family_of(model)
    sites = [site for name, module in model.named_modules() if (site := site_of(name, module, family)) is not None]
    if not sites:
        raise ValueError(f"{type(model).__name__}: no prunable matrices found "
                         "(supported: BERT, RoBERTa, T5, GPT-2, Llama)")
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
