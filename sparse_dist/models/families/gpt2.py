"""GPT-2 (decoder-only): blocks ``h.<i>`` of ``Conv1D`` matrices, whose weights are stored ``[in, out]``.

Sites are ``attn.c_attn`` (Q, K and V fused in one matrix: type ``attn.qkv``), ``attn.c_proj``
(``attn.o``), ``mlp.c_fc`` (``ffn.up``) and ``mlp.c_proj`` (``ffn.down``); embeddings and the tied LM
head are not pruned. A site's shape is the stored one, ``(in, out)``: masks, scores, ZeRO fragments and
the export all index the stored weight, and :class:`~sparse_dist.pruning.masked_linear.MaskedLinear`
computes ``x @ (W * M) + b`` for it. Label words are read at the last non-padding token.
"""

from __future__ import annotations

import re

import torch

from sparse_dist.distributed.gather import full_shape
from sparse_dist.models.families.base import ModelFamily
from sparse_dist.pruning.masked_linear import is_transposed_linear
from sparse_dist.pruning.sites import Site

_BLOCK = re.compile(r"(?:^|\.)h\.(\d+)\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)$")
_TYPES = {"attn.c_attn": "attn.qkv", "attn.c_proj": "attn.o", "mlp.c_fc": "ffn.up", "mlp.c_proj": "ffn.down"}


def last_token_hidden(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """``(B, H)``: each row's hidden state at its last non-padding token (either padding side)."""
    if attention_mask is None:
        return hidden[:, -1]
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    last = (positions * attention_mask.to(positions.dtype)).argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


class GPT2Family(ModelFamily):
    name = "gpt2"
    model_types = ("gpt2",)
    kind = "decoder"
    predicts_next_token = True
    dropout_keys = ("resid_pdrop", "embd_pdrop", "attn_pdrop", "summary_first_dropout")

    def site_of(self, name: str, module: torch.nn.Module) -> Site | None:
        match = _BLOCK.search(name) if is_transposed_linear(module) else None
        return Site(name, match.group(1), _TYPES[match.group(2)], tuple(full_shape(module.weight))) if match else None

    def label_word_text(self, tokenizer, word: str) -> str:
        return " " + word  # byte-level BPE: the word follows the text after a space

    def label_word_hidden(self, hidden: torch.Tensor, attention_mask) -> torch.Tensor:
        return last_token_hidden(hidden, attention_mask)


FAMILY = GPT2Family()
