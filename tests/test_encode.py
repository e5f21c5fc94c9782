"""Text-to-text phrasing, tokenization with dynamic padding, tiny models by name."""

import pytest
import torch
from transformers import AutoTokenizer

from sparse_dist.config import ConfigError, EvalConfig
from sparse_dist.data.encode import (
    Collator,
    encode_eval,
    encode_train,
    parse_prediction,
    source_text,
    target_text,
    truncate_longest_first,
)
from sparse_dist.data.load import load_split
from sparse_dist.data.task_data import TaskData
from sparse_dist.evaluation import Evaluator
from sparse_dist.models.tiny import tiny_checkpoint
from sparse_dist.tasks import get_task


def test_t5_phrasing():
    rte, stsb, webnlg = get_task("rte"), get_task("stsb"), get_task("webnlg")
    assert source_text(rte, {"text_a": "A.", "text_b": "B."}) == "rte sentence1: A. sentence2: B."
    assert target_text(rte, 1) == "not_entailment" and target_text(stsb, 3.27) == "3.2"
    assert parse_prediction(rte, " not_entailment ") == 1 and parse_prediction(rte, "maybe") == -1
    assert parse_prediction(stsb, "2.6") == 2.6 and parse_prediction(stsb, "n/a") == 0.0
    assert source_text(webnlg, {"triples": ["Aarhus | leaderName | Jacob_Bundsgaard"]}) == \
        "translate triples to text: Aarhus | leaderName | Jacob Bundsgaard"


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-roberta", "tiny-t5"])
def test_tiny_models_build_by_name_and_reload_identically(name):
    path = tiny_checkpoint(name)
    assert tiny_checkpoint(name) == path  # written once
    tokenizer = AutoTokenizer.from_pretrained(path)
    ids = tokenizer("the movie is great !")["input_ids"]
    assert tokenizer.unk_token_id not in ids


def test_encoder_batches_pad_dynamically_and_keep_idx(data_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint("tiny-bert"))
    raw = load_split(get_task("mrpc"), "validation", str(data_dir), limit=6)
    inputs, gold = encode_eval(get_task("mrpc"), raw, tokenizer, "encoder", max_seq_length=32)
    assert gold == raw["label"]
    batch = Collator(tokenizer, "encoder")([inputs[i] for i in (4, 1)])
    assert batch["idx"].tolist() == [4, 1]
    longest = max(len(inputs[i]["input_ids"]) for i in (4, 1))
    assert batch["input_ids"].shape == (2, longest) <= (2, 32)
    assert int(batch["attention_mask"].sum()) == sum(len(inputs[i]["input_ids"]) for i in (4, 1))


def test_seq2seq_training_examples(data_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint("tiny-t5"))
    raw = load_split(get_task("webnlg"), "train", str(data_dir), limit=3)
    encoded = encode_train(get_task("webnlg"), raw, tokenizer, "seq2seq", 64, 32)
    assert len(encoded) == sum(len(r) for r in raw["references"])  # one example per reference
    batch = Collator(tokenizer, "seq2seq")([encoded[i] for i in range(3)])
    lengths = [len(encoded[i]["labels"]) for i in range(3)]
    assert batch["labels"].shape == (3, max(lengths)) and batch["labels"].dtype == torch.long
    for row, length in enumerate(lengths):  # targets end with </s>; padding is -100, ignored by the loss
        assert batch["labels"][row, length - 1] == tokenizer.eos_token_id
        assert (batch["labels"][row, length:] == -100).all()
    assert "idx" not in batch


def test_targets_are_cut_at_max_target_length_and_inputs_at_max_seq_length(data_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint("tiny-t5"))
    raw = load_split(get_task("webnlg"), "train", str(data_dir), limit=20)
    encoded = encode_train(get_task("webnlg"), raw, tokenizer, "seq2seq", max_seq_length=40, max_target_length=8)
    labels, inputs = encoded["labels"], encoded["input_ids"]
    assert max(len(ids) for ids in labels) == 8 and all(ids[-1] == tokenizer.eos_token_id for ids in labels)
    assert max(len(ids) for ids in inputs) == 40


def test_a_class_word_must_fit_max_target_length_and_max_new_tokens(data_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint("tiny-t5"))
    rte, stsb = get_task("rte"), get_task("stsb")
    raw = load_split(rte, "train", str(data_dir), limit=4)
    assert encode_train(rte, raw, tokenizer, "seq2seq", 48, max_target_length=2)["labels"][0][-1] == 1
    with pytest.raises(ConfigError, match=r"data.max_target_length: the rte target 'entailment' is 2 tokens"):
        encode_train(rte, raw, tokenizer, "seq2seq", 48, max_target_length=1)  # "entailment" would become "</s>"
    task_data = TaskData(task=stsb, kind="seq2seq", train=None, dev=[], collator=None)
    with pytest.raises(ConfigError, match=r"eval.max_new_tokens: the stsb target '0.0' is 3 tokens"):
        Evaluator(task_data, EvalConfig(max_new_tokens=2), None, tokenizer, zero_stage=0)


def test_longest_first_truncation():
    assert truncate_longest_first([10, 3], 8) == [5, 3]
    assert truncate_longest_first([6, 6], 7) == [4, 3]  # a tie shortens the later text
    assert truncate_longest_first([2, 3], 9) == [2, 3] and truncate_longest_first([4, 5], -1) == [0, 0]


def contains(sequence: list[int], part: list[int]) -> bool:
    return any(sequence[i:i + len(part)] == part for i in range(len(sequence) - len(part) + 1))


def test_text_to_text_pairs_keep_both_sentences_like_the_encoder_path(data_dir):
    # Real RTE at 128 tokens: the tiny vocabulary spells most words in characters, so 2,099 of the 2,490
    # training inputs are too long (real T5: 264 lost all of sentence2 when the joined string was cut).
    rte, tokenizer = get_task("rte"), AutoTokenizer.from_pretrained(tiny_checkpoint("tiny-t5"))
    raw = load_split(rte, "train", str(data_dir))
    encoded = encode_train(rte, raw, tokenizer, "seq2seq", max_seq_length=128, max_target_length=8)
    whole = tokenizer([source_text(rte, example) for example in raw])["input_ids"]
    text_a = tokenizer(list(raw["text_a"]), add_special_tokens=False)["input_ids"]
    text_b = tokenizer(list(raw["text_b"]), add_special_tokens=False)["input_ids"]
    # What the encoder path keeps of each text: the tokenizer's own pair truncation, to what is left of 128
    # tokens after the field names and </s> (a pair "a </s> b </s>" has 2 special tokens).
    first, second = tokenizer(["rte sentence1:", "sentence2:"], add_special_tokens=False)["input_ids"]
    pairs = tokenizer(list(raw["text_a"]), list(raw["text_b"]), truncation="longest_first",
                      max_length=128 - len(first) - len(second) - 1 + 2)["input_ids"]
    truncated, lost, unlike_encoder = 0, [], 0
    for ids, full, a, b, pair in zip(encoded["input_ids"], whole, text_a, text_b, pairs):
        if len(full) <= 128:
            assert ids == full  # what fits is encoded exactly as the joined string
            continue
        truncated += 1
        assert len(ids) == 128
        if not (contains(ids, first + a[:1]) and contains(ids, second + b[:1])):
            lost.append(tokenizer.decode(ids))
        kept_a = pair.index(tokenizer.eos_token_id)
        kept_b = len(pair) - kept_a - 2
        unlike_encoder += ids != first + a[:kept_a] + second + b[:kept_b] + [tokenizer.eos_token_id]
    assert truncated == 2099
    assert not lost, f"{len(lost)} inputs lost a sentence, e.g. {lost[0]!r}"
    assert unlike_encoder == 0
    dev_inputs, _ = encode_eval(rte, raw.select(range(300)), tokenizer, "seq2seq", max_seq_length=128)
    assert dev_inputs["input_ids"] == encoded["input_ids"][:300]  # evaluation encodes inputs the same way
