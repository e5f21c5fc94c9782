"""CoNLL-2003 named entity recognition: the local column files, the hub's label ids, the entity-level metric.

The local files (``conll2003/{train,valid,test}.txt`` under ``data.local_dir``) hold one word per line,
``token POS chunk NER`` separated by spaces, a blank line after each sentence and ``-DOCSTART-`` lines
between documents. :func:`read_conll2003` turns one file into the hub's ``tokens`` and ``ner_tags`` columns,
with the label ids of the hub dataset (``eriktks/conll2003``, formerly ``conll2003``; see
:data:`CONLL2003_LABELS`). That hub repository is a loading script, which ``datasets`` 4 and later no longer
run, so the local files are the way in for this project's ``datasets``.

Tagging scheme. The original CoNLL-2003 release tags in IOB1: an entity starts with ``I-``, and ``B-`` is used
only where an entity directly follows another of the same type. The hub's copy is IOB2, every entity starting
with ``B-`` (its dataset card: "the dataset uses IOB2 tagging scheme, whereas the original dataset uses
IOB1"), and so are the local files: in no split does an ``I-X`` tag follow ``O`` or a tag of another type. The
reader returns IOB2 whatever the file uses: an ``I-X`` that does not continue an ``X`` entity becomes ``B-X``,
which leaves IOB2 input unchanged and turns IOB1 input into the same entities in IOB2 (it logs how many tags
it changed). :func:`compute_ner_metrics` scores entities as the ``conlleval`` script does, which reads either
scheme.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import datasets

# datasets and seqeval are imported where they are used: the task registry imports the labels below, and the
# config imports the registry without the heavy libraries.

log = logging.getLogger(__name__)

# Label ids of the hub dataset's ``ner_tags`` ClassLabel, in its order (the dataset card's
# ``{'O': 0, 'B-PER': 1, 'I-PER': 2, 'B-ORG': 3, 'I-ORG': 4, 'B-LOC': 5, 'I-LOC': 6, 'B-MISC': 7, 'I-MISC': 8}``).
CONLL2003_LABELS: tuple[str, ...] = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")

# Split name (as on the hub) -> file name in the local directory.
CONLL2003_FILES: dict[str, str] = {"train": "train.txt", "validation": "valid.txt", "test": "test.txt"}

_LABEL_IDS = {name: i for i, name in enumerate(CONLL2003_LABELS)}
_COLUMNS = 4  # token, POS, chunk, NER


def read_conll2003(path: str | Path, limit: int | None = None) -> datasets.Dataset:
    """One CoNLL-2003 file as a Dataset with columns ``tokens`` (list[str]) and ``ner_tags`` (list[int]).

    ``ner_tags`` are ids into :data:`CONLL2003_LABELS` (a ClassLabel feature carrying those names, as on the
    hub), in IOB2 (IOB1 input is converted, see the module docstring). Sentences are the runs of lines between
    blank lines; ``-DOCSTART-`` lines are skipped and end a sentence, as in the hub's builder. With ``limit``,
    reading stops once ``limit`` sentences are complete.
    Real sizes: train 14,041 sentences, valid 3,250, test 3,453.

    Raises :class:`DataError`, one line naming the file (and line number and the line itself where there is
    one): the file is missing or not UTF-8, a line does not have exactly 4 whitespace-separated columns, an NER
    tag is not in :data:`CONLL2003_LABELS`, or the file holds no sentence. ValueError if ``limit`` < 1.
    """
    import datasets

    from sparse_dist.data.load import DataError

    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of sentences, got {limit}")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found (CoNLL-2003)")
    sentences: list[list[str]] = []
    tags: list[list[int]] = []
    words: list[str] = []
    labels: list[int] = []
    changed = 0
    try:
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if limit is not None and len(sentences) >= limit:
                    break
                text = line.rstrip("\r\n")
                if not text.strip() or text.startswith("-DOCSTART-"):
                    if words:
                        changed += _to_iob2(labels)
                        sentences.append(words)
                        tags.append(labels)
                        words, labels = [], []
                    continue
                columns = text.split()
                if len(columns) != _COLUMNS:
                    raise DataError(f"{path}: line {number}: expected {_COLUMNS} columns (token POS chunk NER), "
                                    f"got {len(columns)}: {text!r}")
                tag = columns[-1]
                if tag not in _LABEL_IDS:
                    raise DataError(f"{path}: line {number}: NER tag {tag!r} is not one of "
                                    f"{', '.join(CONLL2003_LABELS)}: {text!r}")
                words.append(columns[0])
                labels.append(_LABEL_IDS[tag])
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error})") from None
    if words and (limit is None or len(sentences) < limit):
        changed += _to_iob2(labels)
        sentences.append(words)
        tags.append(labels)
    if not sentences:
        raise DataError(f"{path}: no sentences")
    if changed:
        log.warning("%s: %d NER tags were IOB1 (an entity starting with I-); read as IOB2 (B-)", path, changed)
    features = datasets.Features({"tokens": datasets.List(datasets.Value("string")),
                                  "ner_tags": datasets.List(datasets.ClassLabel(names=list(CONLL2003_LABELS)))})
    return datasets.Dataset.from_dict({"tokens": sentences, "ner_tags": tags}, features=features)


def _to_iob2(labels: list[int]) -> int:
    """Rewrite, in place, every I-X that does not continue an X entity as B-X; returns how many changed."""
    changed = 0
    previous = "O"
    for i, label in enumerate(labels):
        name = CONLL2003_LABELS[label]
        if name.startswith("I-") and previous[2:] != name[2:]:
            labels[i] = _LABEL_IDS["B-" + name[2:]]
            changed += 1
        previous = name
    return changed


def compute_ner_metrics(predictions: Sequence[Sequence[str]], gold: Sequence[Sequence[str]]) -> dict[str, float]:
    """Entity-level precision, recall and F1 (micro-averaged over entity types) and token accuracy.

    ``predictions`` and ``gold`` are tag names (``"B-PER"``, ``"O"``...) per word, one sequence per sentence,
    with equal lengths sentence by sentence. Returns ``{"precision", "recall", "f1", "accuracy"}``, fractions in
    [0, 1]; precision (recall) is 0 when nothing is predicted (nothing is gold).

    An entity counts as correct only if its type and both boundaries match. Entities are read with seqeval's
    default mode, a port of the CoNLL shared task's ``conlleval`` script (its ``startOfChunk``/``endOfChunk``):
    an ``I-X`` after ``O`` or after another type starts an entity, so IOB1 and IOB2 are both read as conlleval
    reads them, and an ill-formed predicted sequence is scored as conlleval scores it (seqeval's strict mode
    would drop such entities instead). Sentence ends close entities. Token accuracy is the fraction of words
    whose tag equals the gold tag, ``O`` included.

    Raises ValueError if the numbers of sentences, or of words in a sentence, differ.
    """
    from seqeval.metrics.sequence_labeling import accuracy_score, precision_recall_fscore_support

    if len(predictions) != len(gold):
        raise ValueError(f"{len(predictions)} predicted sentences for {len(gold)} gold sentences")
    for i, (p, g) in enumerate(zip(predictions, gold)):
        if len(p) != len(g):
            raise ValueError(f"sentence {i}: {len(p)} predicted tags for {len(g)} words")
    y_true = [list(g) for g in gold]
    y_pred = [list(p) for p in predictions]
    precision, recall, f1, _ = precision_recall_fscore_support(y_true, y_pred, average="micro", zero_division=0)
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1),
            "accuracy": float(accuracy_score(y_true, y_pred))}
