"""SMP's classifier: the pretrained masked-LM head, read at the first token, restricted to label words.

For a task whose classes are spoken by label words (SST-2: terrible / great, RTE: Yes / No, ...), the
class logits are the masked-LM logits of those words at the first token: encoder, then the LM head's
transform (dense, activation, LayerNorm), then the rows of the (tied) decoder for the label words and
their biases. Nothing here is trained in SMP. A regression task (STS-B) reads the logit of its one word.

The words of each task are :attr:`TaskSpec.label_words`, in the task's label-id order (the hub's), with
their natural meaning: MNLI entailment -> Yes, neutral -> Maybe, contradiction -> No. The released SMP
code differs on MNLI only, and by accident of order: it renumbers MNLI's labels to its DynaBERT teacher's
order (contradiction 0, entailment 1, neutral 2) and then applies a word map written for the hub's ids
({0: Yes, 1: Maybe, 2: No}), so there contradiction is spoken by "Yes", entailment by "Maybe" and neutral
by "No". sparse_dist keeps the natural mapping (the frozen head has no reason to prefer the other), so
SMP numbers on MNLI come from the same words bound to other classes. Class order never depends on a
checkpoint here: a fine-tuned classifier or teacher whose ``id2label`` lists the classes in another order
has its rows remapped by label name (:mod:`sparse_dist.models.label_order`).

Where the masked-LM head sits and which position it is read at is the model family's to say
(:class:`~sparse_dist.models.families.base.ModelFamily`): BERT and RoBERTa read the first token.

Where a checkpoint has no pretrained MLM transform (sentence-transformers models such as
all-MiniLM-L6-v2 ship the encoder only), transformers initialises one; it is kept frozen like the rest,
from the run's seed, and the export writes it out, so an exported model scores exactly as in training.
"""

from __future__ import annotations

import contextlib
import logging

import deepspeed
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.modeling_outputs import SequenceClassifierOutput

from sparse_dist.distributed.gather import is_partitioned
from sparse_dist.models.families import DEFAULT_FAMILY, ModelFamily, get_family
from sparse_dist.tasks import TaskSpec

log = logging.getLogger(__name__)


def label_word_ids(tokenizer: PreTrainedTokenizerBase, words: tuple[str, ...], family: ModelFamily = DEFAULT_FAMILY
                   ) -> list[int]:
    """The vocabulary id of each label word as ``family`` spells it; an error if a word is not a single token."""
    ids = []
    for word in words:
        pieces = tokenizer(family.label_word_text(tokenizer, word), add_special_tokens=False)["input_ids"]
        if len(pieces) != 1:
            tokens = tokenizer.convert_ids_to_tokens(pieces)
            raise ValueError(f"label word {word!r} is {len(pieces)} tokens {tokens} in this vocabulary; "
                             "SMP's head needs single-token label words")
        ids.append(pieces[0])
    return ids


class LabelWordClassifier(torch.nn.Module):
    """Encoder + masked-LM transform + the label words' decoder rows, as a sequence classifier."""

    def __init__(self, mlm: PreTrainedModel, word_ids: list[int], regression: bool,
                 family: ModelFamily = DEFAULT_FAMILY):
        super().__init__()
        self.config = mlm.config
        self.base_model_prefix = mlm.base_model_prefix
        self.encoder = getattr(mlm, mlm.base_model_prefix)
        self.transform, decoder, bias = family.masked_lm_head(mlm)
        self.read_position = family.label_word_hidden
        with deepspeed.zero.GatheredParameters([decoder.weight, bias], enabled=is_partitioned(decoder.weight)):
            rows = decoder.weight.detach()[word_ids].clone()
            row_bias = bias.detach()[word_ids].clone()
        # Under ZeRO-3 the new head must be partitioned like every other parameter: build it inside
        # zero.Init with the model's own ZeRO-3 config (remote_device follows the parameter offload).
        partitioned = is_partitioned(decoder.weight)
        with deepspeed.zero.Init(config_dict_or_path=_zero3_config()) if partitioned else contextlib.nullcontext():
            self.label_head = torch.nn.Linear(rows.shape[1], rows.shape[0])
        with deepspeed.zero.GatheredParameters(list(self.label_head.parameters()), modifier_rank=0,
                                               enabled=is_partitioned(decoder.weight)):
            with torch.no_grad():
                self.label_head.weight.copy_(rows)
                self.label_head.bias.copy_(row_bias)
        self.word_ids = list(word_ids)
        self.regression = regression

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs):
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        hidden = self.read_position(self.encoder(**inputs).last_hidden_state, attention_mask)
        logits = self.label_head(self.transform(hidden))
        loss = None
        if labels is not None:
            if self.regression:
                loss = torch.nn.functional.mse_loss(logits.squeeze(-1).float(), labels.float())
            else:
                loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


def _zero3_config():
    from transformers.integrations.deepspeed import deepspeed_config

    return deepspeed_config()


def build_label_word_classifier(mlm: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                                task: TaskSpec) -> LabelWordClassifier:
    if not task.label_words:
        raise ValueError(f"task {task.name} has no label words; SMP's label-word head needs them")
    family = get_family(mlm.config.model_type)
    ids = label_word_ids(tokenizer, task.label_words, family)
    log.info("label-word head: %s -> token ids %s", ", ".join(task.label_words), ids)
    return LabelWordClassifier(mlm, ids, regression=task.type.regression, family=family)
