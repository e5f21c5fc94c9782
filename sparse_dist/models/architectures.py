"""Published model architectures by name, for building them with random weights (``model.init: random``).

Each entry is the shape-deciding part of the checkpoint's published ``config.json`` on the Hugging Face hub,
written here as transformers config values so that it builds offline: sizes, vocabulary, positions,
activation, norms and special token ids, as published. No weights are involved: a model built from one of
these has the checkpoint's architecture and parameter count and nothing of its training. That is what
benchmarks and memory measurements at real sizes need, and never a stand-in for the checkpoint itself, so
it is only built when ``model.init: random`` asks for it (:func:`sparse_dist.models.build.build_model`).

``parameters`` is the checkpoint's published parameter count as transformers builds it for the config
(``tests/test_architectures.py`` checks every one on the meta device): the bare encoder with its pooler
for BERT and RoBERTa (``AutoModel``, the figure usually quoted), the whole LM for T5 (embedding and LM head
tied: counted once), GPT-2 (tied) and Llama-style decoders (untied LM head, counted).

A random model has no tokenizer of its own; ``tokenizer`` names the tiny tokenizer of the same family
(:mod:`sparse_dist.models.tiny`) it reads text with unless ``model.tokenizer`` names another
(docs/architectures.md). ``max_length`` is the published tokenizer's ``model_max_length``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformers import AutoConfig, PretrainedConfig


@dataclass(frozen=True)
class Architecture:
    """One published architecture: its config values and what the build and the checks need besides."""

    name: str
    """The hub name of the published checkpoint (``model.name_or_path``)."""
    model_type: str
    """transformers ``model_type``; picks the config class and the model family."""
    values: dict[str, Any] = field(repr=False)
    """Config values from the published config.json (everything that decides a shape, and special ids)."""
    parameters: int
    """Parameter count of the published checkpoint as transformers builds it (see the module docstring)."""
    tokenizer: str
    """The tiny tokenizer (:mod:`sparse_dist.models.tiny`) a random model reads text with by default."""
    max_length: int
    """The published tokenizer's ``model_max_length`` in tokens."""

    def config(self, **overrides: Any) -> PretrainedConfig:
        """A fresh transformers config of this architecture; ``overrides`` replace published values (e.g.
        ``num_hidden_layers=2`` for a cheap test of the same width). Unknown override keys raise ValueError."""
        default = AutoConfig.for_model(self.model_type)  # a config keeps any keyword; only its own keys count
        unknown = sorted(key for key in overrides if not hasattr(default, key))
        if unknown:
            raise ValueError(f"{self.name}: {', '.join(unknown)} is not a {self.model_type} config key")
        config = AutoConfig.for_model(self.model_type, **{**self.values, **overrides})
        config.name_or_path = self.name
        return config


_BERT = dict(hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, initializer_range=0.02,
             layer_norm_eps=1e-12, max_position_embeddings=512, type_vocab_size=2, vocab_size=30522, pad_token_id=0)
_ROBERTA = dict(hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
                initializer_range=0.02, layer_norm_eps=1e-5, max_position_embeddings=514, type_vocab_size=1,
                vocab_size=50265, bos_token_id=0, pad_token_id=1, eos_token_id=2)
_T5 = dict(d_kv=64, dropout_rate=0.1, feed_forward_proj="relu", initializer_factor=1.0, layer_norm_epsilon=1e-6,
           relative_attention_num_buckets=32, vocab_size=32128, pad_token_id=0, eos_token_id=1,
           decoder_start_token_id=0, n_positions=512, is_encoder_decoder=True, tie_word_embeddings=True)
_GPT2 = dict(activation_function="gelu_new", attn_pdrop=0.1, embd_pdrop=0.1, resid_pdrop=0.1,
             initializer_range=0.02, layer_norm_epsilon=1e-5, n_ctx=1024, n_positions=1024, vocab_size=50257,
             bos_token_id=50256, eos_token_id=50256)
_LLAMA = dict(hidden_act="silu", initializer_range=0.02, rms_norm_eps=1e-5, rope_theta=10000.0, vocab_size=32000,
              bos_token_id=1, eos_token_id=2, tie_word_embeddings=False, attention_bias=False)


def _bert(name, hidden, layers, heads, ffn, parameters):
    return Architecture(name, "bert", dict(_BERT, hidden_size=hidden, num_hidden_layers=layers,
                                           num_attention_heads=heads, intermediate_size=ffn),
                        parameters, "tiny-bert", 512)


def _roberta(name, hidden, layers, heads, ffn, parameters):
    return Architecture(name, "roberta", dict(_ROBERTA, hidden_size=hidden, num_hidden_layers=layers,
                                              num_attention_heads=heads, intermediate_size=ffn),
                        parameters, "tiny-roberta", 512)


def _t5(name, d_model, layers, heads, d_ff, parameters, d_kv=64):
    return Architecture(name, "t5", dict(_T5, d_model=d_model, num_layers=layers, num_decoder_layers=layers,
                                         num_heads=heads, d_ff=d_ff, d_kv=d_kv),
                        parameters, "tiny-t5", 512)


def _gpt2(name, hidden, layers, heads, parameters):
    return Architecture(name, "gpt2", dict(_GPT2, n_embd=hidden, n_layer=layers, n_head=heads),
                        parameters, "tiny-gpt2", 1024)


def _llama(name, hidden, layers, heads, kv_heads, ffn, positions, parameters):
    return Architecture(name, "llama", dict(_LLAMA, hidden_size=hidden, num_hidden_layers=layers,
                                            num_attention_heads=heads, num_key_value_heads=kv_heads,
                                            intermediate_size=ffn, max_position_embeddings=positions),
                        parameters, "tiny-llama", positions)


ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in [
    _bert("bert-base-uncased", 768, 12, 12, 3072, 109_482_240),
    _bert("bert-large-uncased", 1024, 24, 16, 4096, 335_141_888),
    _roberta("roberta-base", 768, 12, 12, 3072, 124_645_632),
    _roberta("roberta-large", 1024, 24, 16, 4096, 355_359_744),
    _t5("t5-small", 512, 6, 8, 2048, 60_506_624),
    _t5("t5-base", 768, 12, 12, 3072, 222_903_552),
    _t5("t5-large", 1024, 24, 16, 4096, 737_668_096),
    _t5("t5-3b", 1024, 24, 32, 16384, 2_851_598_336, d_kv=128),
    _t5("t5-11b", 1024, 24, 128, 65536, 11_307_321_344, d_kv=128),
    _gpt2("gpt2", 768, 12, 12, 124_439_808),
    _gpt2("gpt2-medium", 1024, 24, 16, 354_823_168),
    _llama("TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T", 2048, 22, 32, 4, 5632, 2048, 1_100_048_384),
    _llama("meta-llama/Llama-2-7b-hf", 4096, 32, 32, 32, 11008, 4096, 6_738_415_616),
]}
"""Every published architecture by its hub name."""

# The hub also serves the oldest checkpoints under an organisation's name (google-t5/t5-base,
# google-bert/bert-base-uncased, openai-community/gpt2, FacebookAI/roberta-large): the same architectures.
_ORGANISATIONS = {"google-t5", "google-bert", "openai-community", "FacebookAI"}


def architecture_names() -> tuple[str, ...]:
    """The names :func:`get_architecture` knows, in registry order."""
    return tuple(ARCHITECTURES)


def get_architecture(name: str) -> Architecture:
    """The published architecture of hub name ``name`` (also under its organisation: ``google-t5/t5-base``).
    Raises ValueError with a one-line message that lists the known names."""
    organisation, _, bare = name.rpartition("/")
    architecture = ARCHITECTURES.get(name) or (ARCHITECTURES.get(bare) if organisation in _ORGANISATIONS else None)
    if architecture is None:
        raise ValueError(f"no published architecture {name!r} is known; known: {', '.join(ARCHITECTURES)}")
    return architecture
