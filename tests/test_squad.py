"""SQuAD v1.1: the real files, rejected records, windows over the context, answers from window logits, EM/F1."""

import importlib
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from sparse_dist.data.extractive_qa import (
    encode_qa_eval,
    encode_qa_eval_batch,
    encode_qa_train,
    encode_qa_train_batch,
    postprocess_qa_predictions,
)
from sparse_dist.data.load import DataError
from sparse_dist.data.squad import (
    SQUAD_FILES,
    compute_squad_metrics,
    compute_token_f1,
    normalize_answer,
    read_squad,
)
from sparse_dist.models.build import OFFLINE_MIRRORS


@pytest.fixture(scope="module")
def tokenizer():
    package, folder = OFFLINE_MIRRORS["sentence-transformers/all-MiniLM-L6-v2"]
    path = Path(importlib.import_module(package).__file__).parent / folder
    return AutoTokenizer.from_pretrained(str(path))


@pytest.fixture(scope="module")
def train_head(data_dir):
    return read_squad(data_dir / "squad" / SQUAD_FILES["train"], limit=300)


def squad_file(tmp_path, qas, context="The cat sat on the mat.") -> Path:
    path = tmp_path / "dev.json"
    path.write_text(json.dumps({"version": "1.1", "data": [
        {"title": "Cats", "paragraphs": [{"context": context, "qas": qas}]}]}), encoding="utf-8")
    return path


# --- reading -------------------------------------------------------------------------------------------------


def test_real_files_have_the_published_question_counts(data_dir):
    dev = read_squad(data_dir / "squad" / SQUAD_FILES["validation"])
    train = read_squad(data_dir / "squad" / SQUAD_FILES["train"])
    assert (len(dev), len(train)) == (10570, 12723)
    assert dev.column_names == ["id", "title", "context", "question", "answers"]
    first = dev[0]
    assert first["id"] == "56be4db0acb8001400a502ec" and first["title"] == "Super_Bowl_50"
    assert first["question"] == "Which NFL team represented the AFC at Super Bowl 50?"
    assert first["answers"] == {"text": ["Denver Broncos"] * 3, "answer_start": [177] * 3}
    assert max(len(a["text"]) for a in dev["answers"]) == 6 and {len(a["text"]) for a in train["answers"]} == {1}


def test_limit_keeps_the_first_questions(data_dir, train_head):
    assert len(train_head) == 300
    assert train_head["id"][:5] == read_squad(data_dir / "squad" / SQUAD_FILES["train"], limit=5)["id"]


def test_an_answer_not_at_its_answer_start_names_the_file_and_question(tmp_path):
    path = squad_file(tmp_path, [
        {"id": "q1", "question": "Who sat?", "answers": [{"text": "The cat", "answer_start": 0}]},
        {"id": "q2", "question": "On what?", "answers": [{"text": "the mat", "answer_start": 0},
                                                         {"text": "mat", "answer_start": 18}]}])
    with pytest.raises(DataError) as error:
        read_squad(path)
    message = str(error.value)
    assert "\n" not in message
    assert message == (f"{path}: question q2: answer 0 'the mat' is not at answer_start 0 of its context "
                       f"(found 'The cat')")


def test_malformed_records_are_named(tmp_path):
    with pytest.raises(DataError, match=r"dev\.json: question q1: no 'answers' field"):
        read_squad(squad_file(tmp_path, [{"id": "q1", "question": "Who sat?"}]))
    with pytest.raises(DataError, match=r"dev\.json: question q1: the id is used twice"):
        read_squad(squad_file(tmp_path, [{"id": "q1", "question": "Who?", "answers": [{"text": "cat",
                                                                                        "answer_start": 4}]}] * 2))
    with pytest.raises(DataError, match=r"dev\.json: question q1: answer 0 'cat' is not at answer_start 99"):
        read_squad(squad_file(tmp_path, [{"id": "q1", "question": "Who?", "answers": [{"text": "cat",
                                                                                        "answer_start": 99}]}]))
    (tmp_path / "broken.json").write_text("{", encoding="utf-8")
    with pytest.raises(DataError, match=r"broken\.json: not a SQuAD JSON file"):
        read_squad(tmp_path / "broken.json")


# --- windows -------------------------------------------------------------------------------------------------


def test_training_windows_map_back_to_exactly_the_answer(tokenizer, train_head):
    # Exact for these 300; an answer that ends inside a word ('Tibet' of 'Tibetan') maps back to whole tokens.
    train = encode_qa_train(train_head, tokenizer)
    evaluation = encode_qa_eval(train_head, tokenizer)
    assert len(train) == len(evaluation) > len(train_head)  # some contexts need several windows: same windows
    contexts = dict(zip(train_head["id"], train_head["context"]))
    answers = dict(zip(train_head["id"], (a["text"][0] for a in train_head["answers"])))
    answered, outside = set(), 0
    for window, offsets, qid, input_ids in zip(train, evaluation["offset_mapping"], evaluation["example_id"],
                                               evaluation["input_ids"]):
        assert len(window["input_ids"]) == len(offsets) == 384 and window["input_ids"] == input_ids
        start, end = window["start_positions"], window["end_positions"]
        if start == end == 0:  # [CLS]: this window does not hold the whole answer
            outside += 1
            continue
        assert offsets[start] is not None and offsets[end] is not None and start <= end
        assert contexts[qid][offsets[start][0]:offsets[end][1]] == answers[qid]
        answered.add(qid)
    assert answered == set(train_head["id"])  # every answer lies whole in some window
    assert outside > 0


def test_evaluation_windows_overlap_by_doc_stride_and_mark_non_context_tokens(tokenizer, train_head):
    evaluation = encode_qa_eval(train_head, tokenizer, max_length=128, doc_stride=32)
    windows = defaultdict(list)
    for qid, offsets, mask in zip(evaluation["example_id"], evaluation["offset_mapping"],
                                  evaluation["attention_mask"]):
        assert len(offsets) == 128
        assert offsets[0] is None  # [CLS]
        assert all(span is None for span, m in zip(offsets, mask) if m == 0)  # padding
        windows[qid].append([span for span in offsets if span is not None])
    several = [spans for spans in windows.values() if len(spans) > 1]
    assert several
    for spans in several:
        for previous, following in zip(spans, spans[1:]):
            assert previous[-32:] == following[:32]


def test_a_question_that_leaves_no_room_for_context_is_named(tokenizer):
    long_question = " ".join(["why"] * 40)
    batch = {"id": ["q-long"], "question": [long_question], "context": ["The cat sat on the mat."],
             "answers": [{"text": ["cat"], "answer_start": [4]}]}
    for encode in (encode_qa_train_batch, encode_qa_eval_batch):
        with pytest.raises(DataError, match=r"^question q-long: its 40 tokens leave no room for the context in "
                                            r"windows of max_length=32 tokens$"):
            encode(tokenizer, batch, max_length=32, doc_stride=8)
    # 20 question tokens + 3 special leave 9 context tokens per window: a short context fits in one window; a
    # long one needs windows that advance by 9 - doc_stride tokens, so doc_stride 10 is refused.
    batch["question"] = [" ".join(["why"] * 20)]
    assert len(encode_qa_eval_batch(tokenizer, batch, max_length=32, doc_stride=8)["input_ids"]) == 1
    batch["context"] = [" ".join(["mat"] * 30)]
    with pytest.raises(DataError, match=r"^question q-long: its 20 tokens leave 9 context tokens per window, not "
                                        r"more than doc_stride=10"):
        encode_qa_eval_batch(tokenizer, batch, max_length=32, doc_stride=10)


# --- answers from logits -------------------------------------------------------------------------------------

CONTEXT = "alpha beta gamma delta epsilon zeta"
WORDS = {"alpha": [0, 5], "beta": [6, 10], "gamma": [11, 16], "delta": [17, 22], "epsilon": [23, 30],
         "zeta": [31, 35]}


def window(words):
    """[CLS] question [SEP] w w w w [SEP]: 8 tokens, context tokens at 3..6."""
    return [None, None, None, *(WORDS[w] for w in words), None]


def logits(**at):
    row = np.full(8, -10.0, dtype=np.float32)
    for position, value in at.items():
        row[int(position[1:])] = value
    return row


def two_windows():
    examples = {"id": ["q"], "context": [CONTEXT]}
    features = {"example_id": ["q", "q"],
                "offset_mapping": [window(["alpha", "beta", "gamma", "delta"]),
                                   window(["gamma", "delta", "epsilon", "zeta"])]}
    # Window 0: gamma..delta scores 3 + 3 = 6, alpha..delta 1 + 3 = 4; [CLS] (100) is not context.
    # Window 1: gamma..zeta scores 5 + 5 = 10 (4 tokens), epsilon..zeta 4 + 5 = 9, gamma..gamma 5 - 1 = 4.
    start = np.stack([logits(p0=100, p3=1, p5=3), logits(p3=5, p5=4)])
    end = np.stack([logits(p0=100, p4=0.5, p6=3), logits(p3=-1, p6=5)])
    return examples, features, start, end


def test_the_best_span_over_both_windows_wins():
    examples, features, start, end = two_windows()
    assert postprocess_qa_predictions(examples, features, start, end) == {"q": "gamma delta epsilon zeta"}


def test_max_answer_length_excludes_longer_spans():
    examples, features, start, end = two_windows()
    assert postprocess_qa_predictions(examples, features, start, end, max_answer_length=3) == {"q": "epsilon zeta"}
    assert postprocess_qa_predictions(examples, features, start, end, max_answer_length=1) == {"q": "gamma"}


def test_the_answer_does_not_depend_on_the_order_of_the_windows():
    examples, features, start, end = two_windows()
    swapped = {key: values[::-1] for key, values in features.items()}
    padded = {key: values + values[:1] for key, values in features.items()}  # window 0 twice, as a sampler pads
    for length in (30, 3, 1):
        expected = postprocess_qa_predictions(examples, features, start, end, max_answer_length=length)
        assert postprocess_qa_predictions(examples, swapped, start[::-1], end[::-1],
                                          max_answer_length=length) == expected
        assert postprocess_qa_predictions(examples, padded, np.concatenate([start, start[:1]]),
                                          np.concatenate([end, end[:1]]), max_answer_length=length) == expected


def test_ties_go_to_the_earlier_span_and_no_valid_span_gives_empty():
    examples = {"id": ["tie", "none"], "context": [CONTEXT, CONTEXT]}
    features = {"example_id": ["tie", "none"], "offset_mapping": [window(["alpha", "beta", "gamma", "delta"])] * 2}
    # alpha..alpha, alpha..beta and beta..beta all score 2: the earliest start, then the earliest end, wins.
    start = np.stack([logits(p3=1, p4=1), logits(p0=9, p4=-1)])
    end = np.stack([logits(p3=1, p4=1), logits(p0=9, p4=-1)])
    assert postprocess_qa_predictions(examples, features, start, end) == {"tie": "alpha", "none": "beta"}
    # With one candidate start per window, the second question's best start is [CLS]: no valid span.
    assert postprocess_qa_predictions(examples, features, start, end, n_best_size=1) == {"tie": "alpha", "none": ""}


def test_shapes_are_checked():
    examples, features, start, end = two_windows()
    with pytest.raises(ValueError, match="num_features=2"):
        postprocess_qa_predictions(examples, features, start[:1], end[:1])
    with pytest.raises(ValueError, match="8 offsets for 7 logits"):
        postprocess_qa_predictions(examples, features, start[:, :7], end[:, :7])


def test_gold_logits_give_the_gold_answers_on_real_questions(tokenizer, train_head):
    train = encode_qa_train(train_head, tokenizer)
    evaluation = encode_qa_eval(train_head, tokenizer)
    start = np.zeros((len(train), 384), dtype=np.float32)
    end = np.zeros((len(train), 384), dtype=np.float32)
    rows = np.arange(len(train))
    start[rows, train["start_positions"]] = 10.0
    end[rows, train["end_positions"]] = 10.0
    predictions = postprocess_qa_predictions(train_head, evaluation, start, end)
    assert list(predictions) == train_head["id"]
    gold = [answers["text"] for answers in train_head["answers"]]
    assert [predictions[qid] for qid in train_head["id"]] == [texts[0] for texts in gold]
    assert compute_squad_metrics(list(predictions.values()), gold) == {"exact_match": 100.0, "f1": 100.0}


# --- metric --------------------------------------------------------------------------------------------------


def test_normalisation_of_the_official_script():
    assert normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert normalize_answer("an apple, a pear and THE plum") == "apple pear and plum"
    assert normalize_answer("the theater") == "theater"  # whole words only
    assert normalize_answer("U.S.") == "us"
    assert normalize_answer("24–10") == "24–10"  # the en dash is not ASCII punctuation


def test_exact_match_and_f1_on_hand_computed_questions():
    predictions = ["Denver Broncos team", "the Carolina Panthers.", ""]
    references = [["Denver Broncos", "Broncos"], ["Carolina Panthers"], ["a"]]
    # q1: EM 0; F1 max(2 shared: P 2/3, R 1 -> 0.8; 1 shared: P 1/3, R 1 -> 0.5) = 0.8.
    # q2: EM 1, F1 1 after normalisation. q3: both sides normalise to "": EM 1, F1 0 (nothing shared).
    scores = compute_squad_metrics(predictions, references)
    assert scores == pytest.approx({"exact_match": 200 / 3, "f1": 60.0})
    assert compute_token_f1("the cat cat", "a cat") == pytest.approx(2 / 3)  # P 1/2, R 1: counts multiplicity
    with pytest.raises(ValueError, match="2 predictions for 1 questions"):
        compute_squad_metrics(["a", "b"], [["a"]])
