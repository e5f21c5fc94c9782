"""The model-family interface: what one architecture family (BERT-like encoders, T5, ...) declares.

A family is one module of this package that defines a module-level ``FAMILY``; it is looked up by the
transformers ``model_type`` of a checkpoint (:func:`sparse_dist.models.families.get_family`). It owns:

- :attr:`ModelFamily.kind`, the interface the task types serve it through: ``encoder`` (a head on the
  encoder's output), ``seq2seq`` (text in, text out) or ``decoder`` (a causal LM: prompt, then target);
- its prunable sites and their matrix types (:meth:`ModelFamily.site_of`);
- SMP's label-word head: where the masked-LM head is, which position it is read at, and where a learned
  label-word calibration folds into it; where the LM head is (to tell whether a checkpoint carries it);
- what the checks before start need: whether inputs are bounded by absolute positions, its dropout keys.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from sparse_dist.pruning.sites import Site


class ModelFamily:
    name = "family"
    model_types: tuple[str, ...] = ()
    """The transformers ``model_type`` values of the family's checkpoints."""
    kind = "encoder"
    """The interface task types serve: ``encoder``, ``seq2seq`` or ``decoder`` (see :mod:`sparse_dist.tasks.base`)."""
    dropout_keys: tuple[str, ...] = ()
    """Names of the dropout probabilities in the family's transformers config (``model.dropout``)."""
    absolute_positions = True
    """Whether inputs longer than the tokenizer's ``model_max_length`` fail (learned absolute positions)."""
    predicts_next_token = False
    """Whether the logits at position t predict token t + 1 (a causal LM reading prompt and target as one
    sequence): per-token distillation then pairs them with the label at t + 1."""
    label_words = False
    """Whether ``model.head: label_words`` reads the family's masked-LM head (SMP); else the family reads
    every task through its own LM head or a classifier."""

    def site_of(self, name: str, module: torch.nn.Module) -> Site | None:
        """The site a module is (its layer and matrix type), or None if it is not a prunable matrix."""
        return None

    # --- SMP's label-word head (families with ``label_words``) ----------------------------------------

    def label_word_text(self, tokenizer: PreTrainedTokenizerBase, word: str) -> str:
        """How a label word is spelled where it is read (after the text, so after a space for byte-level BPE)."""
        return word

    def masked_lm_head(self, mlm: PreTrainedModel) -> tuple[torch.nn.Module, torch.nn.Linear, torch.nn.Parameter]:
        """The masked-LM head's transform (hidden -> hidden), its decoder and the decoder's bias."""
        raise NotImplementedError(f"{self.name} has no masked-LM head to read label words from")

    def label_word_hidden(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """The hidden state the label words are read at, ``(B, H)`` from ``(B, L, H)``."""
        raise NotImplementedError(f"{self.name} has no label-word read position")

    def label_word_logit_scales(self, mlm: PreTrainedModel
                                ) -> tuple[torch.nn.Parameter, torch.nn.Parameter, torch.nn.Parameter]:
        """Three parameters of the masked-LM head that, multiplied by ``s``, multiply every logit by ``s``: the
        last LayerNorm's weight and bias and the decoder's bias (the decoder's weight is tied to the word
        embeddings). The label-word calibration is folded into them (:func:`~sparse_dist.models.label_words.
        fold_calibration`)."""
        raise NotImplementedError(f"{self.name} has no masked-LM head to fold a label-word calibration into")

    # --- the LM head, for every family ----------------------------------------------------------------

    def lm_head_name(self, lm: PreTrainedModel) -> str | None:
        """The name of the top-level module of ``lm`` that holds its LM head (``cls`` for BERT, ``lm_head`` for
        RoBERTa and T5); ``""`` if the model is its own head, None if it has none. The default finds the child
        holding the output embeddings, which serves any transformers LM."""
        output = lm.get_output_embeddings()
        if output is None:
            return None
        return next((name for name, child in lm.named_children() if any(m is output for m in child.modules())), "")
