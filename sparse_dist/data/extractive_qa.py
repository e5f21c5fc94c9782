"""Extractive question answering: contexts in overlapping windows, and window logits back to one answer per question.

The approach of HF's ``run_qa`` example (and of the BERT paper's SQuAD setup): each question is paired with its
context and tokenized as ``[CLS] question [SEP] context [SEP]``; a context longer than the window is cut into
several windows (features) of ``max_length`` tokens whose context parts overlap by ``doc_stride`` tokens
(``truncation="only_second"``, ``return_overflowing_tokens``), so every answer lies whole in some window. All
windows are padded to ``max_length``. Training features carry the answer's first and last token
(``start_positions``, ``end_positions``), or the [CLS] position in windows that do not hold the whole answer.
Evaluation features carry ``example_id`` and ``offset_mapping`` (character spans into the context, None for
question, special and padding tokens), from which :func:`postprocess_qa_predictions` picks one answer text per
question out of the start/end logits of all its windows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import datasets
import numpy as np
from transformers import PreTrainedTokenizerBase

from sparse_dist.data.load import DataError


def check_window_arguments(tokenizer: PreTrainedTokenizerBase, max_length: int, doc_stride: int) -> None:
    """Raise ValueError unless the tokenizer is fast and 0 <= doc_stride < max_length (in tokens)."""
    if not tokenizer.is_fast:
        raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer; windows need offset mappings")
    if not 0 <= doc_stride < max_length:
        raise ValueError(f"doc_stride must be in [0, max_length={max_length}), got {doc_stride}")


def _tokenize_windows(tokenizer: PreTrainedTokenizerBase, batch: dict[str, list], max_length: int,
                      doc_stride: int) -> Any:
    # Leading whitespace in a few SQuAD questions only wastes window room (run_qa strips it too).
    questions = [question.lstrip() for question in batch["question"]]
    _check_question_room(tokenizer, batch["id"], questions, batch["context"], max_length, doc_stride)
    return tokenizer(questions, batch["context"], truncation="only_second", max_length=max_length, stride=doc_stride,
                     return_overflowing_tokens=True, return_offsets_mapping=True, padding="max_length")


def _check_question_room(tokenizer: PreTrainedTokenizerBase, ids: Sequence[str], questions: Sequence[str],
                         contexts: Sequence[str], max_length: int, doc_stride: int) -> None:
    """A question must leave room for context in every window; and, when the context needs more than one window,
    more room than ``doc_stride`` (the overlap), or windows cannot advance (the tokenizer refuses both)."""
    special = tokenizer.num_special_tokens_to_add(pair=True)
    question_lengths = [len(ids_) for ids_ in tokenizer(list(questions), add_special_tokens=False)["input_ids"]]
    for qid, question_length, context in zip(ids, question_lengths, contexts):
        room = max_length - special - question_length
        if room <= 0:
            raise DataError(f"question {qid}: its {question_length} tokens leave no room for the context in "
                            f"windows of max_length={max_length} tokens")
        if room <= doc_stride:
            context_length = len(tokenizer(context, add_special_tokens=False)["input_ids"])
            if context_length > room:
                raise DataError(f"question {qid}: its {question_length} tokens leave {room} context tokens per "
                                f"window, not more than doc_stride={doc_stride}, and its context of "
                                f"{context_length} tokens needs several windows (max_length={max_length})")


def _model_inputs(encoded: Any) -> dict[str, list]:
    return {key: encoded[key] for key in encoded.keys() if key not in ("offset_mapping", "overflow_to_sample_mapping")}


def encode_qa_train_batch(tokenizer: PreTrainedTokenizerBase, batch: dict[str, list], max_length: int = 384,
                          doc_stride: int = 128) -> dict[str, list]:
    """Training windows of a batch of SQuAD rows (``id``, ``question``, ``context``, ``answers``), for ``map``.

    Returns one entry per window (a question gives one or more): the tokenizer's columns (``input_ids``,
    ``attention_mask``, ``token_type_ids`` if it makes them; each ``max_length`` long) and ``start_positions``,
    ``end_positions``: token indices of the first answer's first and last token when the window holds the whole
    answer, else the index of [CLS] (0 for BERT and RoBERTa) in both. An answer that starts or ends inside a
    token is widened to whole tokens ('Tibet' in 'Tibetan' becomes 'Tibetan': 90 of the 12,748 answer-holding
    windows of the local train file with the MiniLM tokenizer, so gold spans score 98.98 EM there). Lengths are
    in tokens; ``doc_stride`` is the overlap of consecutive windows' context parts.

    Raises DataError naming the question id if the question leaves no room for its context (see
    :func:`encode_qa_eval_batch`) or the row has no answer; ValueError for the arguments
    (:func:`check_window_arguments`).
    """
    check_window_arguments(tokenizer, max_length, doc_stride)
    encoded = _tokenize_windows(tokenizer, batch, max_length, doc_stride)
    starts, ends = [], []
    for i, offsets in enumerate(encoded["offset_mapping"]):
        row = encoded["overflow_to_sample_mapping"][i]
        answers = batch["answers"][row]
        if not answers["text"]:
            raise DataError(f"question {batch['id'][row]}: no answer to train on")
        start_char = answers["answer_start"][0]
        end_char = start_char + len(answers["text"][0])
        sequence_ids = encoded.sequence_ids(i)
        cls_index = encoded["input_ids"][i].index(tokenizer.cls_token_id) if tokenizer.cls_token_id is not None \
            else 0
        context = [t for t, s in enumerate(sequence_ids) if s == 1]
        first, last = context[0], context[-1]
        if not (offsets[first][0] <= start_char and offsets[last][1] >= end_char):
            starts.append(cls_index)
            ends.append(cls_index)
            continue
        # The last context token starting at or before the answer, and the first ending at or after it.
        start = first
        while start + 1 <= last and offsets[start + 1][0] <= start_char:
            start += 1
        end = last
        while end - 1 >= first and offsets[end - 1][1] >= end_char:
            end -= 1
        starts.append(start)
        ends.append(end)
    features = _model_inputs(encoded)
    features["start_positions"] = starts
    features["end_positions"] = ends
    return features


def encode_qa_eval_batch(tokenizer: PreTrainedTokenizerBase, batch: dict[str, list], max_length: int = 384,
                         doc_stride: int = 128) -> dict[str, list]:
    """Evaluation windows of a batch of SQuAD rows (``id``, ``question``, ``context``), for ``map``.

    Returns one entry per window: the tokenizer's columns (each ``max_length`` long), ``example_id`` (the
    question's ``id``) and ``offset_mapping``: per token, ``[start, end)`` character offsets into the context for
    context tokens and None for every other token (question, special tokens, padding), so that only context
    spans can be answers.

    Raises DataError naming the question id if the question, with the special tokens, leaves no room for context
    in ``max_length`` tokens, or leaves no more than ``doc_stride`` tokens while the context needs several
    windows (the windows could not advance); ValueError for the arguments (:func:`check_window_arguments`).
    """
    check_window_arguments(tokenizer, max_length, doc_stride)
    encoded = _tokenize_windows(tokenizer, batch, max_length, doc_stride)
    example_ids, offset_mapping = [], []
    for i, offsets in enumerate(encoded["offset_mapping"]):
        example_ids.append(batch["id"][encoded["overflow_to_sample_mapping"][i]])
        sequence_ids = encoded.sequence_ids(i)
        offset_mapping.append([list(span) if s == 1 else None for span, s in zip(offsets, sequence_ids)])
    features = _model_inputs(encoded)
    features["example_id"] = example_ids
    features["offset_mapping"] = offset_mapping
    return features


def encode_qa_train(raw: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int = 384,
                    doc_stride: int = 128) -> datasets.Dataset:
    """:func:`encode_qa_train_batch` over a SQuAD Dataset: one row per window, the SQuAD columns dropped."""
    return raw.map(lambda batch: encode_qa_train_batch(tokenizer, batch, max_length, doc_stride), batched=True,
                   remove_columns=raw.column_names, keep_in_memory=True)


def encode_qa_eval(raw: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int = 384,
                   doc_stride: int = 128) -> datasets.Dataset:
    """:func:`encode_qa_eval_batch` over a SQuAD Dataset: one row per window, the SQuAD columns dropped."""
    return raw.map(lambda batch: encode_qa_eval_batch(tokenizer, batch, max_length, doc_stride), batched=True,
                   remove_columns=raw.column_names, keep_in_memory=True)


def postprocess_qa_predictions(examples: datasets.Dataset | dict[str, Sequence],
                               features: datasets.Dataset | dict[str, Sequence], start_logits: np.ndarray,
                               end_logits: np.ndarray, n_best_size: int = 20,
                               max_answer_length: int = 30) -> dict[str, str]:
    """One answer text per question from the start/end logits of all its windows (run_qa's post-processing).

    ``examples``: the questions (columns ``id`` and ``context``); ``features``: their evaluation windows from
    :func:`encode_qa_eval` (``example_id``, ``offset_mapping``), in any order; ``start_logits``,
    ``end_logits``: arrays [num_features, seq_len], row f for ``features[f]``, seq_len = its number of tokens.

    In each window, the ``n_best_size`` highest start logits and ``n_best_size`` highest end logits give the
    candidate spans (start token s, end token e); a span is valid if both tokens are context tokens (offset not
    None), s <= e and e - s + 1 <= ``max_answer_length`` tokens. Its score is start_logit[s] + end_logit[e]
    (summed in float64), its text ``context[offsets[s][0] : offsets[e][1]]``. The answer is the valid span of
    highest score over all windows of the question; a question without any valid span gets "" (as in run_qa).

    Deterministic tie-breaking, independent of the order of the features (so logits gathered from any number of
    ranks give exactly the single-process answers): among the top logits of a window, equal logits are taken in
    token order (a stable sort); among spans of equal score, the one starting at the earlier character of the
    context wins, then the one ending earlier. The same character span from two overlapping windows keeps its
    better score, and a window given twice (a distributed sampler's padding) changes nothing.

    Returns ``{id: answer text}`` in the order of ``examples``. Raises ValueError if the logits' shape does not
    match the features, a window's ``offset_mapping`` is not seq_len long, a feature names an unknown id, or
    ``n_best_size`` or ``max_answer_length`` is below 1.
    """
    if n_best_size < 1 or max_answer_length < 1:
        raise ValueError(f"n_best_size and max_answer_length must be at least 1, got {n_best_size} and "
                         f"{max_answer_length}")
    start_logits = np.asarray(start_logits)
    end_logits = np.asarray(end_logits)
    num_features = len(features) if isinstance(features, datasets.Dataset) else len(features["example_id"])
    if start_logits.ndim != 2 or start_logits.shape != end_logits.shape or len(start_logits) != num_features:
        raise ValueError(f"start/end logits must both be [num_features={num_features}, seq_len], got "
                         f"{start_logits.shape} and {end_logits.shape}")
    contexts = dict(zip(examples["id"], examples["context"]))
    # best[id] = (score, start_char, end_char); compared by (-score, start_char, end_char).
    best: dict[str, tuple[float, int, int]] = {}
    for f, (qid, offsets) in enumerate(_windows(features)):
        if qid not in contexts:
            raise ValueError(f"feature {f} belongs to question {qid!r}, which is not among the examples")
        if len(offsets) != start_logits.shape[1]:
            raise ValueError(f"feature {f}: {len(offsets)} offsets for {start_logits.shape[1]} logits")
        starts = np.argsort(-start_logits[f], kind="stable")[:n_best_size]
        ends = np.argsort(-end_logits[f], kind="stable")[:n_best_size]
        for s in starts.tolist():
            if offsets[s] is None:
                continue
            for e in ends.tolist():
                if offsets[e] is None or e < s or e - s + 1 > max_answer_length:
                    continue
                candidate = (float(start_logits[f, s]) + float(end_logits[f, e]), offsets[s][0], offsets[e][1])
                current = best.get(qid)
                if current is None or _better(candidate, current):
                    best[qid] = candidate
    answers = {}
    for qid, context in contexts.items():
        span = best.get(qid)
        answers[qid] = "" if span is None else context[span[1]:span[2]]
    return answers


def _windows(features: datasets.Dataset | dict[str, Sequence]) -> Iterator[tuple[str, list | None]]:
    """(example_id, offset_mapping) of each feature, one row at a time (a Dataset is not materialised whole)."""
    if isinstance(features, datasets.Dataset):
        for row in features.select_columns(["example_id", "offset_mapping"]).with_format(None):
            yield row["example_id"], row["offset_mapping"]
    else:
        yield from zip(features["example_id"], features["offset_mapping"])


def _better(a: tuple[float, int, int], b: tuple[float, int, int]) -> bool:
    return (-a[0], a[1], a[2]) < (-b[0], b[1], b[2])
