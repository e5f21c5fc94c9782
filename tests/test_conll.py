"""CoNLL-2003: the real files, rejected lines, IOB1 input, sub-word alignment both ways, entity-level scores."""

import logging
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from sparse_dist.data.conll import CONLL2003_FILES, CONLL2003_LABELS, compute_ner_metrics, read_conll2003
from sparse_dist.data.load import DataError
from sparse_dist.data.token_classification import (
    IGNORE_INDEX,
    NO_WORD,
    compute_word_predictions,
    encode_token_classification,
    encode_token_labels,
)
from sparse_dist.models.build import OFFLINE_MIRRORS

TAG = {name: i for i, name in enumerate(CONLL2003_LABELS)}


@pytest.fixture(scope="module")
def tokenizer():
    import importlib

    package, folder = OFFLINE_MIRRORS["sentence-transformers/all-MiniLM-L6-v2"]
    path = Path(importlib.import_module(package).__file__).parent / folder
    return AutoTokenizer.from_pretrained(str(path))


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "train.txt"
    path.write_text(text, encoding="utf-8")
    return path


def test_real_files_have_the_published_sentence_counts(data_dir, caplog):
    with caplog.at_level(logging.WARNING):
        splits = {split: read_conll2003(data_dir / "conll2003" / name) for split, name in CONLL2003_FILES.items()}
    assert {split: len(rows) for split, rows in splits.items()} == {"train": 14041, "validation": 3250, "test": 3453}
    assert "IOB1" not in caplog.text  # the files are IOB2 already: the reader changed no tag
    train = splits["train"]
    assert train.column_names == ["tokens", "ner_tags"]
    assert train.features["ner_tags"].feature.names == list(CONLL2003_LABELS)
    assert train[0]["tokens"] == ["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."]
    assert [CONLL2003_LABELS[t] for t in train[0]["ner_tags"]] == ["B-ORG", "O", "B-MISC", "O", "O", "O", "B-MISC",
                                                                    "O", "O"]
    assert splits["test"][0]["tokens"][:3] == ["SOCCER", "-", "JAPAN"]


def test_limit_stops_after_that_many_sentences(data_dir):
    first = read_conll2003(data_dir / "conll2003" / "valid.txt", limit=3)
    full = read_conll2003(data_dir / "conll2003" / "valid.txt")
    assert len(first) == 3 and first["tokens"] == full["tokens"][:3]


def test_docstart_and_blank_lines_separate_sentences(tmp_path):
    path = write(tmp_path, "-DOCSTART- -X- -X- O\n\nPeter NNP B-NP B-PER\nBlackburn NNP I-NP I-PER\n\n\n"
                           "-DOCSTART- -X- -X- O\nBRUSSELS NNP B-NP B-LOC\n")  # no blank line at the end
    rows = read_conll2003(path)
    assert rows["tokens"] == [["Peter", "Blackburn"], ["BRUSSELS"]]
    assert rows["ner_tags"] == [[TAG["B-PER"], TAG["I-PER"]], [TAG["B-LOC"]]]


def test_a_line_with_the_wrong_number_of_columns_is_named(tmp_path):
    path = write(tmp_path, "EU NNP B-NP B-ORG\nrejects VBZ O\n")
    with pytest.raises(DataError) as error:
        read_conll2003(path)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: line 2: expected 4 columns") and "'rejects VBZ O'" in message


def test_a_tag_outside_the_label_set_is_named(tmp_path):
    path = write(tmp_path, "EU NNP B-NP B-ORG\n\nPeter NNP B-NP B-PERSON\n")
    with pytest.raises(DataError, match=r"train\.txt: line 3: NER tag 'B-PERSON' is not one of O, B-PER.*"
                                        r"'Peter NNP B-NP B-PERSON'"):
        read_conll2003(path)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_conll2003(tmp_path / "absent.txt")
    with pytest.raises(DataError, match="no sentences"):
        read_conll2003(write(tmp_path, "-DOCSTART- -X- -X- O\n\n"))


def test_iob1_input_is_read_as_iob2(tmp_path, caplog):
    # Original CoNLL-2003 (IOB1): entities start with I-; B- only between two adjacent entities of one type.
    path = write(tmp_path, "Peter NNP B-NP I-PER\nBlackburn NNP I-NP I-PER\nin IN B-PP O\nLeeds NNP B-NP I-LOC\n"
                           "Bradford NNP I-NP B-LOC\nand CC O O\nUN NNP B-NP I-ORG\n")
    with caplog.at_level(logging.WARNING):
        rows = read_conll2003(path)
    assert [CONLL2003_LABELS[t] for t in rows[0]["ner_tags"]] == ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "O",
                                                                  "B-ORG"]
    assert "3 NER tags were IOB1" in caplog.text


def test_alignment_labels_the_first_subword_only(tokenizer):
    tokens = [["Peter", "Blackburn", "rejects", "1996-08-22"]]
    tags = [[TAG["B-PER"], TAG["I-PER"], TAG["O"], TAG["B-MISC"]]]
    encoded = encode_token_labels(tokenizer, tokens, tags, max_length=16)
    pieces = tokenizer.convert_ids_to_tokens(encoded["input_ids"][0])
    assert pieces == ["[CLS]", "peter", "blackburn", "rejects", "1996", "-", "08", "-", "22", "[SEP]"]
    assert encoded["labels"][0] == [IGNORE_INDEX, 1, 2, 0, 7, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX,
                                    IGNORE_INDEX]
    assert encoded["word_ids"][0] == [NO_WORD, 0, 1, 2, 3, 3, 3, 3, 3, NO_WORD]

    # Back to words: each word takes its first sub-word's prediction; later sub-words and specials are ignored.
    token_predictions = [8, 3, 4, 0, 5, 1, 1, 1, 1, 8, 6, 6]  # two padding positions at the end
    assert compute_word_predictions(token_predictions, encoded["word_ids"][0], num_words=4) == [3, 4, 0, 5]


def test_truncated_words_are_predicted_as_fill(tokenizer):
    tokens = [["Peter", "Blackburn", "rejects", "1996-08-22"]]
    tags = [[TAG["B-PER"], TAG["I-PER"], TAG["O"], TAG["B-MISC"]]]
    encoded = encode_token_labels(tokenizer, tokens, tags, max_length=4)  # [CLS] peter blackburn [SEP]
    assert encoded["labels"][0] == [IGNORE_INDEX, 1, 2, IGNORE_INDEX]
    words = compute_word_predictions([0, 1, 2, 0], encoded["word_ids"][0], num_words=4)
    assert words == [1, 2, 0, 0]  # 'rejects' and the date were cut: O, and the MISC entity counts as missed
    scores = compute_ner_metrics([[CONLL2003_LABELS[t] for t in words]], [[CONLL2003_LABELS[t] for t in tags[0]]])
    assert scores["precision"] == 1.0 and scores["recall"] == 0.5


def test_alignment_on_real_sentences_keeps_every_word(tokenizer, data_dir):
    rows = read_conll2003(data_dir / "conll2003" / "valid.txt", limit=200)
    encoded = encode_token_classification(rows, tokenizer, max_length=256)
    for row in encoded:
        labelled = [label for label in row["labels"] if label != IGNORE_INDEX]
        assert labelled == row["ner_tags"]  # one label per word, in order: nothing cut at 256
        gold_as_tokens = [label if label != IGNORE_INDEX else 0 for label in row["labels"]]
        assert compute_word_predictions(gold_as_tokens, row["word_ids"], len(row["tokens"])) == row["ner_tags"]


def test_ner_scores_on_a_hand_computed_example():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "I-ORG", "I-ORG", "O", "B-MISC"]]
    predicted = [["B-PER", "I-PER", "B-LOC", "B-ORG"], ["B-ORG", "I-ORG", "O", "O", "I-MISC"]]
    # Gold entities: PER[0:2], LOC[3], ORG[0:3], MISC[4] (4). Predicted: PER[0:2] right, LOC[2] wrong, ORG[3]
    # wrong type, ORG[0:2] wrong end, MISC[4] right: I-MISC after O starts an entity, as in conlleval (5).
    # precision 2/5, recall 2/4, F1 = 2 * 0.4 * 0.5 / 0.9 = 4/9; tokens right: 2 of 4 and 3 of 5 = 5/9.
    scores = compute_ner_metrics(predicted, gold)
    assert scores == pytest.approx({"precision": 0.4, "recall": 0.5, "f1": 4 / 9, "accuracy": 5 / 9})


def test_ner_scores_edge_cases():
    assert compute_ner_metrics([["O", "O"]], [["O", "O"]]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0,
                                                              "accuracy": 1.0}
    # IOB1-style prediction of an IOB2 gold entity is the same entity for conlleval.
    assert compute_ner_metrics([["I-PER", "I-PER"]], [["B-PER", "I-PER"]])["f1"] == 1.0
    with pytest.raises(ValueError, match="sentence 0: 1 predicted tags for 2 words"):
        compute_ner_metrics([["O"]], [["O", "O"]])
    with pytest.raises(ValueError, match="1 predicted sentences for 2 gold"):
        compute_ner_metrics([["O"]], [["O"], ["O"]])
