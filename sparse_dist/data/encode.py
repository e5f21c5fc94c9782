"""Turn canonical examples into model inputs, for encoders (BERT, RoBERTa) and text-to-text models (T5).

The building blocks that every task type uses (pair and text-to-text tokenization, truncation, the
collator), and the entry points, which ask the task's type (:mod:`sparse_dist.tasks.base`) what to do.
Encoders read ``text_a`` (and ``text_b``) and predict a label id or a score. Text-to-text models read
"<prefix> <field>: <text> ..." and produce the label word, the score as text, or the WebNLG sentence.
Inputs longer than ``data.max_seq_length`` lose tokens from the end of their longest text first, so a
pair keeps some of both texts (and, for T5, every field name); targets are cut at
``data.max_target_length``, which must hold every class word whole. Padding is left to the collator
(dynamic, per batch); ``idx`` rides along so that predictions can be matched with their gold answers
after a distributed evaluation.
"""

from __future__ import annotations

from typing import Any, Literal

import datasets
import torch
from transformers import DataCollatorForSeq2Seq, DataCollatorWithPadding, PreTrainedTokenizerBase

from sparse_dist.config import ConfigError
from sparse_dist.tasks import TaskSpec

ModelKind = Literal["encoder", "seq2seq", "decoder"]
"""A model family's interface (:attr:`sparse_dist.models.families.base.ModelFamily.kind`)."""


def source_segments(task: TaskSpec, example: dict[str, Any]) -> list[tuple[str, bool]]:
    """The T5 input of one example as pieces joined by spaces: (text, whether truncation may shorten it)."""
    return task.type.source_segments(task, example)


def source_text(task: TaskSpec, example: dict[str, Any]) -> str:
    """The T5 input string of one example."""
    return " ".join(text for text, _ in source_segments(task, example))


def target_text(task: TaskSpec, label: float | int) -> str:
    """The T5 target string for a label: the class word, or the score rounded to 0.2 (as in T5)."""
    return task.type.target_text(task, label)


def parse_prediction(task: TaskSpec, text: str) -> float | int:
    """Map generated text back to a label: the class id (-1 if no class word), or the score (0.0 if none)."""
    return task.type.parse_prediction(task, text)


def encode_train(task: TaskSpec, raw: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, kind: ModelKind,
                 max_seq_length: int, max_target_length: int) -> datasets.Dataset:
    """Tokenized training examples; WebNLG entries become one example per reference sentence."""
    return task.type.encode_train(task, raw, tokenizer, kind, max_seq_length, max_target_length)


def encode_eval(task: TaskSpec, raw: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, kind: ModelKind,
                max_seq_length: int) -> tuple[datasets.Dataset, list]:
    """Tokenized dev inputs (with ``idx``) and the gold answers in ``idx`` order.

    Gold answers are label ids or scores, or for WebNLG the list of reference sentences.
    """
    return task.type.encode_eval(task, raw, tokenizer, kind, max_seq_length)


def encode_pair_inputs(tokenizer: PreTrainedTokenizerBase, batch: dict[str, list], max_seq_length: int):
    """Encoder input ids of ``text_a`` (and ``text_b``), the tokenizer's own pair truncation."""
    pair = (batch["text_a"], batch["text_b"]) if "text_b" in batch else (batch["text_a"],)
    return dict(tokenizer(*pair, truncation=True, max_length=max_seq_length))  # longest_first for pairs


def encode_text_to_text_inputs(task: TaskSpec, tokenizer: PreTrainedTokenizerBase, examples: list[dict[str, Any]],
                                max_seq_length: int) -> dict[str, list]:
    """Input ids of :func:`source_text`, at most ``max_seq_length`` tokens, truncated longest text first.

    Truncating the joined string would cut its end: the whole second sentence of a long pair. Each piece
    is tokenized on its own instead (the same ids as the joined string: T5's tokenizer splits at spaces),
    and the texts are shortened the way the encoder path shortens a pair.
    """
    prefix, suffix = _special_tokens_around(tokenizer)
    budget = max_seq_length - len(prefix) - len(suffix)
    segment_lists = [source_segments(task, example) for example in examples]
    flat = tokenizer([text for segments in segment_lists for text, _ in segments],
                     add_special_tokens=False)["input_ids"]
    input_ids, position = [], 0
    for segments in segment_lists:
        pieces = flat[position:position + len(segments)]
        position += len(segments)
        fixed = sum(len(ids) for ids, (_, truncatable) in zip(pieces, segments) if not truncatable)
        texts = [i for i, (_, truncatable) in enumerate(segments) if truncatable]
        kept = truncate_longest_first([len(pieces[i]) for i in texts], budget - fixed)
        for i, length in zip(texts, kept):
            pieces[i] = pieces[i][:length]
        ids = [token for ids in pieces for token in ids][:max(budget, 0)]  # field names alone may not fit
        input_ids.append(prefix + ids + suffix)
    return {"input_ids": input_ids, "attention_mask": [[1] * len(ids) for ids in input_ids]}


def encode_prompt_and_target(tokenizer: PreTrainedTokenizerBase, prompts: list[list[int]], targets: list[str],
                             max_target_length: int) -> dict[str, list]:
    """Causal-LM training examples: prompt ids then target ids (a space before the target, cut at
    ``max_target_length`` with the end-of-text token), labelled -100 on the prompt so that the loss counts
    the target tokens only. The model shifts the labels itself: the logits at position t predict token t + 1.
    """
    target_ids = tokenizer([" " + target for target in targets], add_special_tokens=False)["input_ids"]
    out: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": []}
    for prompt, target in zip(prompts, target_ids):
        target = target[:max(max_target_length - 1, 0)] + [tokenizer.eos_token_id]
        out["input_ids"].append(prompt + target)
        out["attention_mask"].append([1] * (len(prompt) + len(target)))
        out["labels"].append([-100] * len(prompt) + target)
    return out


def truncate_longest_first(lengths: list[int], budget: int) -> list[int]:
    """How many tokens of each text to keep so that they sum to at most ``budget``: one token at a time off
    the longest text (the later one on a tie), as transformers' ``longest_first`` truncates a pair."""
    kept = list(lengths)
    for _ in range(sum(kept) - max(budget, 0)):
        longest = max(range(len(kept)), key=lambda i: (kept[i], i))
        kept[longest] -= 1
    return kept


def _special_tokens_around(tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a single text (T5: none, and </s>)."""
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    start = next(i for i in range(len(full) - len(bare) + 1) if full[i:i + len(bare)] == bare)
    return full[:start], full[start + len(bare):]


def class_targets(task: TaskSpec) -> list[str]:
    """Every target string of a classification or regression task (empty for generation)."""
    return task.type.class_targets(task)


def longest_class_target(task: TaskSpec, tokenizer: PreTrainedTokenizerBase,
                         add_special_tokens: bool = True) -> tuple[str, int]:
    """The class word or score with the most tokens, and how many (with </s>, as a label, by default);
    ("", 0) for generation, whose references may be cut."""
    lengths = {target: len(tokenizer(text_target=target, add_special_tokens=add_special_tokens)["input_ids"])
               for target in class_targets(task)}
    return max(lengths.items(), key=lambda item: item[1], default=("", 0))


def check_class_targets(task: TaskSpec, tokenizer: PreTrainedTokenizerBase, max_target_length: int) -> None:
    """Refuse a ``data.max_target_length`` that would cut a class word or score: the model would learn a
    prefix that cannot be told apart from, or parsed back into, its class."""
    target, length = longest_class_target(task, tokenizer)
    if length > max_target_length:
        raise ConfigError(f"data.max_target_length: the {task.name} target {target!r} is {length} tokens (with "
                          f"</s>) in this vocabulary and must fit whole, got {max_target_length}")


class Collator:
    """Pads a list of encoded examples into a batch; ``idx`` (if present) stays a separate tensor."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, kind: ModelKind):
        self._pad_prompts = None
        if kind == "seq2seq":
            self._pad = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, return_tensors="pt")
        elif kind == "decoder":
            # Training batches (with labels) pad on the right, so positions count from each sequence's
            # start; prompts to continue pad on the left, so that every row's last token is its own.
            self._pad = DataCollatorForSeq2Seq(_padding_on(tokenizer, "right"), label_pad_token_id=-100,
                                               return_tensors="pt")
            self._pad_prompts = DataCollatorWithPadding(_padding_on(tokenizer, "left"), return_tensors="pt")
        else:
            self._pad = DataCollatorWithPadding(tokenizer, return_tensors="pt")

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        idx = [f.pop("idx") for f in features if "idx" in f]
        pad = self._pad_prompts if self._pad_prompts is not None and "labels" not in features[0] else self._pad
        batch = {key: value for key, value in pad(features).items() if value is not None}
        if idx:
            batch["idx"] = torch.tensor(idx, dtype=torch.long)
        return batch


def _padding_on(tokenizer: PreTrainedTokenizerBase, side: str) -> PreTrainedTokenizerBase:
    """A shallow copy of the tokenizer that pads on ``side`` (the shared one is left as it is)."""
    import copy

    padded = copy.copy(tokenizer)
    padded.padding_side = side
    return padded
