"""SQuAD v1.1 extractive question answering: the official JSON files and the official metric.

:func:`read_squad` turns a SQuAD JSON file (``data[].paragraphs[].{context, qas[]}``) into one row per question
with the columns of the hub dataset ``rajpurkar/squad``: ``id``, ``title``, ``context``, ``question`` and
``answers`` (``{"text": [...], "answer_start": [...]}``, character offsets into ``context``), texts unchanged
(the hub's builder does not strip them either). :func:`compute_squad_metrics` is the official
``evaluate-v1.1.py``: exact match and token F1 after its normalisation, maximised over the reference answers.
Windows over long contexts and the answer spans are in :mod:`sparse_dist.data.extractive_qa`.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets

from sparse_dist.data.load import DataError

# Split name (as on the hub) -> file name in the local directory. The local train file holds the first 50 of
# the 442 training articles (12,723 questions); the hub's train split has all 87,599.
SQUAD_FILES: dict[str, str] = {"train": "train-v1.1-first50articles.json", "validation": "dev-v1.1.json"}

SQUAD_FEATURES = datasets.Features({
    "id": datasets.Value("string"),
    "title": datasets.Value("string"),
    "context": datasets.Value("string"),
    "question": datasets.Value("string"),
    "answers": {"text": datasets.List(datasets.Value("string")),
                "answer_start": datasets.List(datasets.Value("int32"))},
})


def read_squad(path: str | Path, limit: int | None = None) -> datasets.Dataset:
    """One SQuAD v1.1 JSON file as a Dataset, one row per question, in file order (see the module docstring).

    With ``limit``, reading stops after the first ``limit`` questions. Real sizes: dev-v1.1.json 10,570
    questions (up to 6 reference answers each), train-v1.1-first50articles.json 12,723 (one answer each).

    Every answer is checked: ``context[answer_start : answer_start + len(text)] == text``. Raises
    :class:`DataError`, one line naming the file (and the question id where there is one): the file is missing
    or not JSON, an article, paragraph or question lacks a field, a question has no answer, an answer's text is
    not at its ``answer_start``, or two questions share an id. ValueError if ``limit`` < 1.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of questions, got {limit}")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found (SQuAD)")
    try:
        with path.open(encoding="utf-8") as handle:
            document = json.load(handle)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{path}: not a SQuAD JSON file ({error})") from None
    rows: dict[str, list] = {name: [] for name in SQUAD_FEATURES}
    seen: set[str] = set()
    for a, article in enumerate(_field(document, "data", path, "the top level")):
        title = _field(article, "title", path, f"article {a}")
        for p, paragraph in enumerate(_field(article, "paragraphs", path, f"article {a}")):
            context = _field(paragraph, "context", path, f"article {a} paragraph {p}")
            for q, qa in enumerate(_field(paragraph, "qas", path, f"article {a} paragraph {p}")):
                where = f"article {a} paragraph {p} question {q}"
                qid = str(_field(qa, "id", path, where))
                where = f"question {qid}"
                if qid in seen:
                    raise DataError(f"{path}: question {qid}: the id is used twice")
                seen.add(qid)
                answers = _field(qa, "answers", path, where)
                if not answers:
                    raise DataError(f"{path}: question {qid}: no answer (SQuAD v1.1 answers every question)")
                texts, starts = [], []
                for k, answer in enumerate(answers):
                    text = _field(answer, "text", path, f"{where} answer {k}")
                    start = _field(answer, "answer_start", path, f"{where} answer {k}")
                    found = context[start:start + len(text)] if isinstance(start, int) and start >= 0 else None
                    if found != text:
                        raise DataError(f"{path}: question {qid}: answer {k} {text!r} is not at answer_start "
                                        f"{start!r} of its context (found {found!r})")
                    texts.append(text)
                    starts.append(start)
                for name, value in (("id", qid), ("title", title), ("context", context),
                                    ("question", _field(qa, "question", path, where)),
                                    ("answers", {"text": texts, "answer_start": starts})):
                    rows[name].append(value)
                if limit is not None and len(seen) >= limit:
                    return datasets.Dataset.from_dict(rows, features=SQUAD_FEATURES)
    if not seen:
        raise DataError(f"{path}: no questions")
    return datasets.Dataset.from_dict(rows, features=SQUAD_FEATURES)


def _field(record: Any, key: str, path: Path, where: str) -> Any:
    if not isinstance(record, dict) or key not in record:
        raise DataError(f"{path}: {where}: no {key!r} field")
    return record[key]


# --- the official metric (evaluate-v1.1.py) ------------------------------------------------------------------


def normalize_answer(text: str) -> str:
    """The official v1.1 normalisation: lower case, drop ASCII punctuation, drop the words a/an/the, collapse
    whitespace into single spaces (in that order; ``normalize_answer`` of evaluate-v1.1.py)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


_PUNCTUATION = frozenset(string.punctuation)


def compute_exact_match(prediction: str, reference: str) -> float:
    """1.0 if the normalised texts are equal, else 0.0 (``exact_match_score`` of evaluate-v1.1.py)."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def compute_token_f1(prediction: str, reference: str) -> float:
    """F1 of the bags of normalised words, in [0, 1] (``f1_score`` of evaluate-v1.1.py).

    precision = shared / len(prediction words), recall = shared / len(reference words), where shared counts
    common words with multiplicity; 0 when nothing is shared (so also when either side normalises to nothing).
    """
    predicted = normalize_answer(prediction).split()
    gold = normalize_answer(reference).split()
    shared = sum((Counter(predicted) & Counter(gold)).values())
    if shared == 0:
        return 0.0
    precision = shared / len(predicted)
    recall = shared / len(gold)
    return 2 * precision * recall / (precision + recall)


def compute_squad_metrics(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """SQuAD v1.1's ``exact_match`` and ``f1``, in percent (0-100), as the official evaluate-v1.1.py computes them.

    ``predictions[i]`` is the answer text for question i, ``references[i]`` its reference answer texts (the
    ``answers["text"]`` column). Each question scores the maximum over its references; the scores are averaged
    over the questions and multiplied by 100. Source: the official script ``evaluate-v1.1.py`` of SQuAD v1.1
    (Rajpurkar et al., 2016; https://rajpurkar.github.io/SQuAD-explorer/), functions ``normalize_answer``,
    ``f1_score``, ``exact_match_score``, ``metric_max_over_ground_truths`` and ``evaluate``.

    Raises ValueError if the lists differ in length, are empty, or a question has no reference.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} questions")
    if not predictions:
        raise ValueError("no questions to score")
    exact = f1 = 0.0
    for i, (prediction, gold) in enumerate(zip(predictions, references)):
        if not gold:
            raise ValueError(f"question {i} has no reference answer")
        exact += max(compute_exact_match(prediction, answer) for answer in gold)
        f1 += max(compute_token_f1(prediction, answer) for answer in gold)
    return {"exact_match": 100.0 * exact / len(predictions), "f1": 100.0 * f1 / len(predictions)}
