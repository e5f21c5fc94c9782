"""BERT-like encoders (BERT, RoBERTa; MiniLM is a BERT): blocks of Q, K, V, O, U, D matrices.

Sites are the six linear layers of every ``encoder.layer.<i>`` block: Q, K, V (self-attention), O
(attention output), U (intermediate) and D (output); embeddings, the pooler and heads are not pruned.
SMP reads the masked-LM head at the first token (``[CLS]`` / ``<s>``); RoBERTa's head has no transform
module of its own (dense, GELU, LayerNorm sit on ``lm_head``), and its byte-level BPE spells a word that
follows text with a leading space. This family also serves any model type no other family claims, as an
encoder with a sequence-classification head (dense fine-tuning; pruning needs BERT-like module names).
"""

from __future__ import annotations

import re

import torch

from sparse_dist.distributed.gather import full_shape
from sparse_dist.models.families.base import ModelFamily
from sparse_dist.pruning.sites import Site

_ENCODER = re.compile(r"(?:^|\.)encoder\.layer\.(\d+)\.(attention\.self\.(query|key|value)|attention\.output\.dense|"
                      r"intermediate\.dense|output\.dense)$")
_ENCODER_TYPES = {"attention.self.query": "Q", "attention.self.key": "K", "attention.self.value": "V",
                  "attention.output.dense": "O", "intermediate.dense": "U", "output.dense": "D"}


class BertFamily(ModelFamily):
    name = "bert"
    model_types = ("bert", "roberta")
    kind = "encoder"
    dropout_keys = ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout")
    label_words = True

    def site_of(self, name: str, module: torch.nn.Module) -> Site | None:
        if not isinstance(module, torch.nn.Linear):
            return None
        match = _ENCODER.search(name)
        if match:
            return Site(name, match.group(1), _ENCODER_TYPES[match.group(2)], tuple(full_shape(module.weight)))
        return None

    def label_word_text(self, tokenizer, word: str) -> str:
        # Byte-level BPE (RoBERTa) spells a word after a space differently; the label word follows [CLS] text.
        return " " + word if type(tokenizer).__name__.startswith(("Roberta", "GPT2")) else word

    def masked_lm_head(self, mlm):
        head = _predictions(mlm)
        transform = head.transform if hasattr(head, "transform") else _RobertaTransform(head)
        return transform, head.decoder, head.bias

    def label_word_logit_scales(self, mlm):
        head = _predictions(mlm)
        norm = head.transform.LayerNorm if hasattr(head, "transform") else head.layer_norm
        return norm.weight, norm.bias, head.bias

    def label_word_hidden(self, hidden: torch.Tensor, attention_mask) -> torch.Tensor:
        return hidden[:, 0]


def _predictions(mlm: torch.nn.Module) -> torch.nn.Module:
    """The masked-LM head: BERT's ``cls.predictions`` (transform, decoder, bias), RoBERTa's ``lm_head``."""
    return mlm.cls.predictions if hasattr(mlm, "cls") else mlm.lm_head


class _RobertaTransform(torch.nn.Module):
    """RoBERTa's LM head transform (dense, GELU, LayerNorm), as a module of its own."""

    def __init__(self, lm_head: torch.nn.Module):
        super().__init__()
        self.dense = lm_head.dense
        self.layer_norm = lm_head.layer_norm

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.layer_norm(torch.nn.functional.gelu(self.dense(hidden)))


FAMILY = BertFamily()
