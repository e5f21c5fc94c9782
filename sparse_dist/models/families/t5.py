"""T5 (and mT5, UmT5): encoder-decoder, every task read as text to text through its LM head.

Sites are the attention matrices of every block, ``<stack>.<attention>.<q|k|v|o>`` for ``enc.self``,
``dec.self`` and ``dec.cross``, and the feed-forward matrices ``<stack>.ffn.<wi|wi_0|wi_1|wo>``; the
shared embedding and the LM head are not pruned. Positions are relative: no input length limit.
"""

from __future__ import annotations

import re

import torch

from sparse_dist.distributed.gather import full_shape
from sparse_dist.models.families.base import ModelFamily
from sparse_dist.pruning.sites import Site

_T5_ATTENTION = re.compile(r"(?:^|\.)(encoder|decoder)\.block\.(\d+)\.layer\.\d+\.(SelfAttention|EncDecAttention)\."
                           r"([qkvo])$")
_T5_FFN = re.compile(r"(?:^|\.)(encoder|decoder)\.block\.(\d+)\.layer\.\d+\.DenseReluDense\.(wi|wi_0|wi_1|wo)$")
_STACKS = {"encoder": "enc", "decoder": "dec"}


class T5Family(ModelFamily):
    name = "t5"
    model_types = ("t5", "mt5", "umt5")
    kind = "seq2seq"
    dropout_keys = ("dropout_rate", "classifier_dropout")
    absolute_positions = False

    def site_of(self, name: str, module: torch.nn.Module) -> Site | None:
        if not isinstance(module, torch.nn.Linear):
            return None
        match = _T5_ATTENTION.search(name)
        if match:
            stack, block, attention, matrix = match.groups()
            role = "self" if attention == "SelfAttention" else "cross"
            return Site(name, f"{_STACKS[stack]}.{block}", f"{_STACKS[stack]}.{role}.{matrix}",
                        tuple(full_shape(module.weight)))
        match = _T5_FFN.search(name)
        if match:
            stack, block, matrix = match.groups()
            return Site(name, f"{_STACKS[stack]}.{block}", f"{_STACKS[stack]}.ffn.{matrix}",
                        tuple(full_shape(module.weight)))
        return None


FAMILY = T5Family()
