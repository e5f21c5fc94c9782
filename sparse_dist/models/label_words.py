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
Such a run is warned about (:func:`untrained_head_weights`, from what ``from_pretrained`` reports
missing): the label-word logits are then a random projection of the encoder's output, which the mask
alone must both move onto a regression task's score scale and make rank the examples.
``model.calibrate_label_words`` adds two learned scalars, ``logit' = scale x logit + offset``
(:class:`LabelWordCalibration`), trained with the mask scores; only when set to true (null, the
default, is off). This departs from the SMP paper, whose head is entirely frozen. The export folds them
into the LM head (:func:`fold_calibration`). Measured (``benchmarks/smp_regression.py``: MRPC pairs
scored 0/5, SMP-S at 10% remaining) it did not help: dev Pearson 0.29 without, 0.21 with (docs/benchmarks.md),
which is why it is not on by default.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

import deepspeed
import torch
from transformers import PreTrainedTokenizerBase
from transformers.modeling_outputs import SequenceClassifierOutput

if TYPE_CHECKING:  # transformers' modeling_utils costs seconds to import: not for a config check
    from transformers import PreTrainedModel

from sparse_dist.config import ConfigError
from sparse_dist.distributed.gather import is_partitioned, iter_full_parameters
from sparse_dist.models.families import DEFAULT_FAMILY, ModelFamily, get_family
from sparse_dist.pruning.masked_linear import TRAINS_WITH_SCORES
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
                 family: ModelFamily = DEFAULT_FAMILY, calibration_offset: float | None = None):
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
        self.calibration = None
        """:class:`LabelWordCalibration` when ``calibration_offset`` is given (its initial offset), else None."""
        if calibration_offset is not None:
            with deepspeed.zero.Init(config_dict_or_path=_zero3_config()) if partitioned else contextlib.nullcontext():
                self.calibration = LabelWordCalibration(calibration_offset)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs):
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        hidden = self.read_position(self.encoder(**inputs).last_hidden_state, attention_mask)
        logits = self.label_head(self.transform(hidden))
        if self.calibration is not None:
            logits = self.calibration(logits)
        loss = None
        if labels is not None:
            if self.regression:
                loss = torch.nn.functional.mse_loss(logits.squeeze(-1).float(), labels.float())
            else:
                loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


class LabelWordCalibration(torch.nn.Module):
    """``logit' = scale x logit + offset``: two scalars, trained with the mask scores (same optimizer group and
    learning rate, ``pruning.score_lr``), also when SMP freezes everything else.

    Initialised to scale 1 and the given offset: the middle of a regression task's score range (STS-B: 2.5),
    0 otherwise. An untrained head's logit sits near 0 with a spread of about 1 (all-MiniLM-L6-v2 on 256
    MRPC pairs: mean -0.1, standard deviation 0.7), so scale 1 keeps that spread. The offset must start near
    the scores: Adam moves a scalar by at most about one learning rate per step, so SMP's 2e-2, decayed
    linearly over 300 steps, moves it by 3 in the whole run, short of a mean score of 3.6 (MRPC scored 0/5),
    and until it gets there the loss trains the mask to raise every prediction rather than to rank them.
    For classification offset 0 and scale 1 change nothing at the start (an offset common to all classes
    never changes a softmax; the scale acts as a temperature). What it cannot do is find a ranking: while
    the logit does not yet follow the scores the best scale for the loss is near 0, and it goes there (0.22
    after 300 steps in the benchmark), and with it the task's share of the mask's gradient against the
    regulariser (a likely reason it did not help there; not measured apart).
    """

    def __init__(self, offset: float):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1))
        self.offset = torch.nn.Parameter(torch.full((1,), float(offset)))
        for param in (self.scale, self.offset):
            setattr(param, TRAINS_WITH_SCORES, True)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return logits * self.scale.to(logits.dtype) + self.offset.to(logits.dtype)


def _zero3_config():
    from transformers.integrations.deepspeed import deepspeed_config

    return deepspeed_config()


def build_label_word_classifier(mlm: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, task: TaskSpec,
                                calibrate: bool = False) -> LabelWordClassifier:
    if not task.label_words:
        raise ValueError(f"task {task.name} has no label words; SMP's label-word head needs them")
    family = get_family(mlm.config.model_type)
    ids = label_word_ids(tokenizer, task.label_words, family)
    log.info("label-word head: %s -> token ids %s", ", ".join(task.label_words), ids)
    offset = None
    if calibrate:
        offset = sum(task.score_range) / 2 if task.type.regression and task.score_range else 0.0
        log.info("label-word calibration: logit' = scale x logit + offset, trained with the scores, from scale 1, "
                 "offset %g", offset)
    return LabelWordClassifier(mlm, ids, regression=task.type.regression, family=family, calibration_offset=offset)


# --- an untrained head: finding it, and what to do about it --------------------------------------------------


def untrained_head_weights(lm: PreTrainedModel, missing_keys, family: ModelFamily) -> tuple[str, ...]:
    """The weights of ``lm``'s language-model head (an encoder's masked-LM head, T5's LM head) among the
    ``missing_keys`` that ``from_pretrained(..., output_loading_info=True)`` reports: initialised here, not
    pretrained. Where the head is, is the family's to say (:meth:`ModelFamily.lm_head_name`)."""
    head = family.lm_head_name(lm)
    if head is None:
        return ()
    if head == "":  # the model is its own head
        return tuple(sorted(missing_keys))
    return tuple(sorted(key for key in missing_keys if key.startswith(f"{head}.")))


def untrained_head_warning(name: str, untrained: tuple[str, ...], task: TaskSpec, calibrated: bool) -> str:
    """The warning for a label-word head that the checkpoint ``name`` does not carry (one line)."""
    shown = ", ".join(untrained[:3]) + (f" and {len(untrained) - 3} more" if len(untrained) > 3 else "")
    what = (f"model.head=label_words: {name} has no pretrained LM head ({shown} newly initialised from job.seed), "
            "so the label-word logits are a random projection")
    if not task.type.regression:
        return f"{what}; with the head frozen (SMP) only the mask can make the right word win"
    if calibrated:
        return (f"{what}; model.calibrate_label_words learns a scale and offset onto the {task.name} scores "
                "(not in the SMP paper; it did not help in the one measurement, see docs/benchmarks.md)")
    return (f"{what}; with the head frozen (SMP) the mask alone must put it on the {task.name} score scale. "
            "model.calibrate_label_words=true would learn a scale and offset (encoders' label-word head only), but "
            "departs from the SMP paper and did not help in the one measurement (dev Pearson 0.21 with, 0.29 "
            "without; docs/benchmarks.md)")


def check_calibration(family: ModelFamily, setting: bool | None, name: str) -> None:
    """Refuse ``model.calibrate_label_words=true`` for a model whose family has no masked-LM label-word head
    (:attr:`ModelFamily.label_words`; T5 reads label words as generated text through its own LM head)."""
    if setting and not family.label_words:
        raise ConfigError(f"model.calibrate_label_words: {name} is a {family.name} ({family.kind}) model, which has "
                          "no masked-LM label-word head to calibrate; the calibration is for families that read "
                          "label words from one (model.head=label_words on an encoder)")


def calibration_values(model: torch.nn.Module) -> dict[str, float] | None:
    """The learned ``scale`` and ``offset`` of a label-word model's calibration (None without one). All ranks
    call (the scalars are gathered under ZeRO-3)."""
    calibration = getattr(model, "calibration", None)
    if calibration is None:
        return None
    return {name: float(value) for name, value in iter_full_parameters(calibration)}


def fold_calibration(lm: PreTrainedModel, tensors: dict[str, torch.Tensor], word_ids: list[int], scale: float,
                     offset: float) -> None:
    """Fold ``logit' = scale x logit + offset`` into the masked-LM head of ``lm``, in ``tensors`` (a state dict of
    ``lm``, or its parameters; changed in place), so that the plain model's logits at ``word_ids`` are the
    calibrated ones. The head is ``logit = w . (gamma n + beta) + b`` (n the normalised transform output,
    w the tied word embeddings, so left alone): scaling the final LayerNorm's gamma and beta and the decoder
    bias by ``scale`` scales every logit, and ``offset`` goes onto the label words' biases. The family finds
    the three (:meth:`ModelFamily.label_word_logit_scales`)."""
    gamma, beta, bias = get_family(lm.config.model_type).label_word_logit_scales(lm)
    names = {}
    for name, param in lm.named_parameters(remove_duplicate=False):
        for role, target in (("gamma", gamma), ("beta", beta), ("bias", bias)):
            if param is target and name in tensors and role not in names:
                names[role] = name
    if sorted(names) != ["beta", "bias", "gamma"]:
        raise ValueError(f"cannot fold the label-word calibration: the head's parameters are not all in the state "
                         f"({sorted(names)})")
    with torch.no_grad():
        for role in ("gamma", "beta", "bias"):
            tensors[names[role]].mul_(scale)
        tensors[names["bias"]][word_ids] += offset
