"""Token classification on sub-words: word labels onto sub-word tokens, and sub-word predictions back to words.

A word tokenizer splits one word into several sub-words. Training labels the first sub-word of each word with
the word's tag and every other position (later sub-words, special tokens) with -100, which the cross-entropy
loss ignores. Predictions are read back the same way: a word's prediction is its first sub-word's (as the
BERT paper does for CoNLL-2003 NER, section 5.3).

Truncation. A sentence longer than ``max_length`` sub-words loses its last words. HF's ``run_ner`` example
then scores only the words that survived, gold included, so the entities of the cut words vanish from the
reference and recall is overstated. Here the cut words stay in the gold sequence and are predicted as
``fill`` (the id of ``O``, 0, by default): scoring is against every gold word, as conlleval does on the full
test file, and an entity in a cut tail counts as missed. The same holds for a word the tokenizer maps to no
sub-word at all (a word of characters the tokenizer drops). On CoNLL-2003 with the MiniLM (BERT uncased)
tokenizer the longest sentence is 164 tokens with [CLS] and [SEP]: none is cut at ``max_length`` 256; at 128,
1 train, 3 valid and 1 test sentence are. No CoNLL-2003 word is dropped by that tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence

import datasets
from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100  # the label the loss skips (torch.nn.CrossEntropyLoss's default ignore_index)
NO_WORD = -1  # word_ids entry of a special token or padding


def compute_subword_labels(word_ids: Sequence[int | None], word_labels: Sequence[int]) -> list[int]:
    """Labels per sub-word token: the word's label on its first sub-word, :data:`IGNORE_INDEX` elsewhere.

    ``word_ids`` is the fast tokenizer's ``Encoding.word_ids()`` of one sequence (length seq_len: for each token
    the index of its word, or None for a special token); ``word_labels`` has one label id per word. Returns
    seq_len ints. Raises IndexError if a word index is outside ``word_labels``.
    """
    labels = []
    previous = None
    for word in word_ids:
        labels.append(IGNORE_INDEX if word is None or word == previous else int(word_labels[word]))
        previous = word
    return labels


def encode_token_labels(tokenizer: PreTrainedTokenizerBase, tokens: Sequence[Sequence[str]],
                        tags: Sequence[Sequence[int]], max_length: int) -> dict[str, list[list[int]]]:
    """Tokenize pre-split sentences and align their word tags to sub-words (a batch, for ``Dataset.map``).

    ``tokens``: one list of words per sentence; ``tags``: one label id per word. Each sentence is tokenized with
    ``is_split_into_words=True`` and cut to ``max_length`` tokens (special tokens included); no padding (a
    collator pads; ``DataCollatorForTokenClassification`` pads ``labels`` with -100). Returns the tokenizer's
    columns (``input_ids``, ``attention_mask``, ``token_type_ids`` if it makes them), ``labels`` (seq_len ints,
    see :func:`compute_subword_labels`) and ``word_ids`` (seq_len ints: the word of each token, :data:`NO_WORD`
    for special tokens), which :func:`compute_word_predictions` needs and a collator must not get.

    Raises ValueError if the tokenizer is not a fast one (only fast tokenizers know ``word_ids``) or a sentence
    has another number of tags than words.
    """
    if not tokenizer.is_fast:
        raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer; sub-word alignment needs word_ids()")
    for i, (words, labels) in enumerate(zip(tokens, tags)):
        if len(words) != len(labels):
            raise ValueError(f"sentence {i}: {len(labels)} tags for {len(words)} words")
    encoded = tokenizer(list(map(list, tokens)), is_split_into_words=True, truncation=True, max_length=max_length)
    features = {key: list(values) for key, values in encoded.items()}
    features["labels"] = []
    features["word_ids"] = []
    for i, labels in enumerate(tags):
        word_ids = encoded.word_ids(i)
        features["labels"].append(compute_subword_labels(word_ids, labels))
        features["word_ids"].append([NO_WORD if word is None else word for word in word_ids])
    return features


def encode_token_classification(raw: datasets.Dataset, tokenizer: PreTrainedTokenizerBase,
                                max_length: int) -> datasets.Dataset:
    """:func:`encode_token_labels` over a Dataset with ``tokens`` and ``ner_tags``; other columns are kept.

    One feature per sentence, in order. Returns a new Dataset (in memory).
    """

    def encode(batch: dict[str, list]) -> dict[str, list]:
        return encode_token_labels(tokenizer, batch["tokens"], batch["ner_tags"], max_length)

    return raw.map(encode, batched=True, keep_in_memory=True)


def compute_word_predictions(token_predictions: Sequence[int], word_ids: Sequence[int], num_words: int,
                             fill: int = 0) -> list[int]:
    """Per-word predictions of one sentence from its per-token predictions: each word takes its first sub-word's.

    ``token_predictions``: label ids per token position (e.g. the argmax of the logits), length >= len(word_ids)
    (positions past ``word_ids``, i.e. padding, are ignored); ``word_ids``: the sentence's ``word_ids`` column
    from :func:`encode_token_labels` (:data:`NO_WORD` for special tokens; None is accepted too);
    ``num_words``: the sentence's number of words before tokenization. Returns ``num_words`` ids; words that no
    token belongs to (cut by truncation, or dropped by the tokenizer) get ``fill``, by default 0, the id of
    ``O`` in CoNLL-2003 (see the module docstring).

    Raises ValueError if there are fewer predictions than tokens or a word index is not below ``num_words``.
    """
    if len(token_predictions) < len(word_ids):
        raise ValueError(f"{len(token_predictions)} token predictions for {len(word_ids)} tokens")
    words = [fill] * num_words
    seen = [False] * num_words
    for position, word in enumerate(word_ids):
        if word is None or word == NO_WORD:
            continue
        if not 0 <= word < num_words:
            raise ValueError(f"token {position} belongs to word {word}, but the sentence has {num_words} words")
        if not seen[word]:
            seen[word] = True
            words[word] = int(token_predictions[position])
    return words
