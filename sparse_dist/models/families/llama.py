"""Llama-style decoders (Llama, Mistral, Qwen2): blocks ``layers.<i>`` of ``nn.Linear`` matrices.

Sites are the attention projections ``self_attn.<q|k|v|o>_proj`` (types ``attn.q`` ... ``attn.o``) and
the gated feed-forward ``mlp.<gate|up|down>_proj`` (``ffn.gate``, ``ffn.up``, ``ffn.down``); embeddings,
norms and the LM head are not pruned. Positions are rotary: no learned absolute-position limit.
Label words are read at the last non-padding token.
"""

from __future__ import annotations

import re

import torch

from sparse_dist.distributed.gather import full_shape
from sparse_dist.models.families.base import ModelFamily
from sparse_dist.models.families.gpt2 import last_token_hidden
from sparse_dist.pruning.sites import Site

_BLOCK = re.compile(r"(?:^|\.)layers\.(\d+)\.(self_attn\.(?:q|k|v|o)_proj|mlp\.(?:gate|up|down)_proj)$")


class LlamaFamily(ModelFamily):
    name = "llama"
    model_types = ("llama", "mistral", "qwen2")
    kind = "decoder"
    predicts_next_token = True
    dropout_keys = ("attention_dropout",)
    absolute_positions = False

    def site_of(self, name: str, module: torch.nn.Module) -> Site | None:
        match = _BLOCK.search(name) if isinstance(module, torch.nn.Linear) else None
        if match is None:
            return None
        group, matrix = match.group(2).split(".")
        kind = f"{'attn' if group == 'self_attn' else 'ffn'}.{matrix.removesuffix('_proj')}"
        return Site(name, match.group(1), kind, tuple(full_shape(module.weight)))

    def label_word_text(self, tokenizer, word: str) -> str:
        return " " + word

    def label_word_hidden(self, hidden: torch.Tensor, attention_mask) -> torch.Tensor:
        return last_token_hidden(hidden, attention_mask)


FAMILY = LlamaFamily()
