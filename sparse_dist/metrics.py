"""Task metrics on complete prediction lists: accuracy, F1, MCC, Pearson/Spearman, BLEU.

These are pure functions of (predictions, gold) in dataset order. Distributed evaluation gathers the
per-example predictions first (a few bytes per dev example) and then calls these on every rank, so a
distributed metric is the very same number as a single-process one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import sacrebleu
from scipy import stats


def accuracy(predictions: Sequence[int], labels: Sequence[int]) -> float:
    p, y = np.asarray(predictions), np.asarray(labels)
    return float((p == y).mean())


def _binary_counts(predictions: Sequence[int], labels: Sequence[int]) -> tuple[int, int, int, int]:
    p, y = np.asarray(predictions) == 1, np.asarray(labels) == 1
    return int((p & y).sum()), int((p & ~y).sum()), int((~p & y).sum()), int((~p & ~y).sum())


def f1(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """F1 of the positive class (label 1), as GLUE reports it for MRPC and QQP."""
    tp, fp, fn, _ = _binary_counts(predictions, labels)
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def mcc(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Matthews correlation coefficient of a binary task (0 when undefined)."""
    tp, fp, fn, tn = _binary_counts(predictions, labels)
    denominator = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return 0.0 if denominator == 0 else (tp * tn - fp * fn) / denominator


def pearson(predictions: Sequence[float], labels: Sequence[float]) -> float:
    if np.std(predictions) == 0 or np.std(labels) == 0:
        return 0.0
    return float(stats.pearsonr(predictions, labels).statistic)


def spearman(predictions: Sequence[float], labels: Sequence[float]) -> float:
    if np.std(predictions) == 0 or np.std(labels) == 0:
        return 0.0
    return float(stats.spearmanr(predictions, labels).statistic)


def bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU (sacrebleu defaults) with a variable number of references per example."""
    width = max(len(refs) for refs in references)
    streams = [[refs[i] if i < len(refs) else None for refs in references] for i in range(width)]
    return float(sacrebleu.corpus_bleu(list(hypotheses), streams).score)


METRICS = {"accuracy": accuracy, "f1": f1, "mcc": mcc, "pearson": pearson, "spearman": spearman, "bleu": bleu}


def compute_metrics(names: Sequence[str], predictions: Sequence, gold: Sequence) -> dict[str, float]:
    """Every named metric of ``predictions`` against ``gold`` (same order, same length)."""
    if len(predictions) != len(gold):
        raise ValueError(f"{len(predictions)} predictions for {len(gold)} gold answers")
    return {name: METRICS[name](predictions, gold) for name in names}
