"""Tiny random-initialised models, buildable by name, for tests and CPU smoke runs.

``tiny-bert``, ``tiny-roberta``, ``tiny-t5``, ``tiny-gpt2`` and ``tiny-llama`` are written once as ordinary
checkpoint directories (config, safetensors weights, tokenizer) under the cache directory, so every code
path, ZeRO-3's partitioned construction included, loads them through ``from_pretrained`` exactly like a
real model.
Weights come from a fixed seed and tokenizers from a fixed vocabulary, so the directory is the same
on every rank and every machine. Each checkpoint carries its pretraining head (MLM head for the
encoders, LM head for T5 and the decoders), as a real one would.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_model

TINY_SEED = 1234
_HIDDEN, _LAYERS, _HEADS, _FFN, _POSITIONS = 32, 2, 2, 64, 256

# Every label word of every task, and enough common words that real sentences tokenize into
# something other than characters. Characters are always in the vocabulary, so nothing is unknown.
_WORDS = """
Yes No Maybe
the a an and or of to in on at for with by from is are was were be been it its this that these those
he she they we you i his her their our not no yes true false good bad great terrible positive negative
acceptable unacceptable equivalent not_equivalent duplicate not_duplicate entailment not_entailment
neutral contradiction correct incorrect sentence sentence1 sentence2 question question1 question2
premise hypothesis translate triples text to movie film story one two three city airport country
""".split()
_LABEL_WORDS = ["terrible", "great", "Yes", "No", "Maybe", "correct", "incorrect"]
_PUNCTUATION = list(".,;:!?'\"()-_/&|%$#@*+=<>[]{}")
_CHARS = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)] + _PUNCTUATION


def tiny_model_names() -> tuple[str, ...]:
    return tuple(_BUILDERS)


def cache_root() -> Path:
    """Where tiny checkpoints are written: $SPARSE_DIST_CACHE or ~/.cache/sparse_dist."""
    return Path(os.environ.get("SPARSE_DIST_CACHE", Path.home() / ".cache" / "sparse_dist"))


def tiny_checkpoint(name: str) -> Path:
    """The directory of tiny model ``name``, written on first use (atomically, so ranks may race)."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown tiny model {name!r}; known: {', '.join(_BUILDERS)}")
    target = cache_root() / "tiny" / name
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        model, tokenizer = _BUILDERS[name]()
        # Not model.save_pretrained: under a process group it writes on global rank 0 only, and every
        # process here must be able to write a complete copy (node-local caches on a cluster).
        model.config.save_pretrained(staging)
        if model.can_generate():
            model.generation_config.save_pretrained(staging)
        save_model(model, str(staging / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(staging)
        try:
            staging.rename(target)
        except OSError:  # another rank finished first; its copy is identical
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _seeded(build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        return build()


def _bert():
    from transformers import BertConfig, BertForMaskedLM, BertTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *_CHARS, *(f"##{c}" for c in _CHARS), *_WORDS]
    tokenizer = BertTokenizer(vocab={token: i for i, token in enumerate(dict.fromkeys(vocab))})
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=_HIDDEN, num_hidden_layers=_LAYERS,
                        num_attention_heads=_HEADS, intermediate_size=_FFN, max_position_embeddings=_POSITIONS)
    return _seeded(lambda: BertForMaskedLM(config)), tokenizer


def _byte_level_bpe(specials: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-level BPE vocabulary: every byte is a token, so any text encodes; merges build the label
    words (with and without a leading space) into single tokens, as a real vocabulary has them."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    tokens = [*specials, *bytes_to_unicode().values()]
    merges = []
    # Space-prefixed words first: earlier merges take priority, and " Yes" must not become "Ġ" + "Yes".
    for word in ["\u0120" + w for w in _LABEL_WORDS] + _LABEL_WORDS:
        for end in range(2, len(word) + 1):
            merge = (word[:end - 1], word[end - 1])
            if merge not in merges:
                merges.append(merge)
                tokens.append(word[:end])
    return {token: i for i, token in enumerate(dict.fromkeys(tokens))}, merges


def _roberta():
    from transformers import RobertaConfig, RobertaForMaskedLM, RobertaTokenizer

    vocab, merges = _byte_level_bpe(["<s>", "<pad>", "</s>", "<unk>"])
    vocab["<mask>"] = len(vocab)
    tokenizer = RobertaTokenizer(vocab=vocab, merges=merges)
    config = RobertaConfig(vocab_size=len(vocab), hidden_size=_HIDDEN, num_hidden_layers=_LAYERS,
                           num_attention_heads=_HEADS, intermediate_size=_FFN,
                           max_position_embeddings=_POSITIONS + 2, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    return _seeded(lambda: RobertaForMaskedLM(config)), tokenizer


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Tokenizer

    # GPT-2's own layout: one special token for end of text, also used as padding (a real checkpoint has
    # no pad token; sparse_dist pads with it and masks it out).
    vocab, merges = _byte_level_bpe(["<|endoftext|>"])
    tokenizer = GPT2Tokenizer(vocab=vocab, merges=merges, pad_token="<|endoftext|>")
    config = GPT2Config(vocab_size=len(vocab), n_embd=_HIDDEN, n_layer=_LAYERS, n_head=_HEADS, n_inner=_FFN,
                        n_positions=_POSITIONS, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return _seeded(lambda: GPT2LMHeadModel(config)), tokenizer


def _llama():
    from transformers import GPT2Tokenizer, LlamaConfig, LlamaForCausalLM

    # Byte-level BPE with Llama's special tokens, as Llama 3 checkpoints have (a GPT-2 style tokenizer).
    vocab, merges = _byte_level_bpe(["<unk>", "<s>", "</s>"])
    tokenizer = GPT2Tokenizer(vocab=vocab, merges=merges, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                              pad_token="</s>")
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=_HIDDEN, num_hidden_layers=_LAYERS,
                         num_attention_heads=_HEADS, num_key_value_heads=1, intermediate_size=_FFN,
                         max_position_embeddings=_POSITIONS, bos_token_id=1, eos_token_id=2, pad_token_id=2,
                         tie_word_embeddings=False)
    return _seeded(lambda: LlamaForCausalLM(config)), tokenizer


def _t5():
    from transformers import T5Config, T5ForConditionalGeneration, T5Tokenizer

    # Unigram vocabulary in T5's layout: <pad>=0, </s>=1, <unk>=2, pieces; whole words score higher
    # than characters so that the label words stay single pieces.
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(f"▁{w}", -3.0) for w in _WORDS] + [(w, -4.0) for w in _WORDS]
    pieces += [(f"▁{c}", -8.0) for c in _CHARS] + [(c, -9.0) for c in _CHARS]
    tokenizer = T5Tokenizer(vocab=list(dict(pieces).items()), extra_ids=0)
    config = T5Config(vocab_size=len(tokenizer), d_model=_HIDDEN, d_kv=_HIDDEN // _HEADS, d_ff=_FFN,
                      num_layers=_LAYERS, num_decoder_layers=_LAYERS, num_heads=_HEADS, pad_token_id=0,
                      eos_token_id=1, decoder_start_token_id=0, relative_attention_num_buckets=8)
    return _seeded(lambda: T5ForConditionalGeneration(config)), tokenizer


_BUILDERS: dict[str, Callable] = {"tiny-bert": _bert, "tiny-roberta": _roberta, "tiny-t5": _t5, "tiny-gpt2": _gpt2,
                                   "tiny-llama": _llama}
