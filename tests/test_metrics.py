"""Task metrics against hand-computed values."""

import math

import pytest

from sparse_dist.metrics import accuracy, bleu, compute_metrics, f1, mcc, pearson, spearman

PRED = [1, 1, 0, 0, 1, 0, 1, 1]
GOLD = [1, 0, 0, 1, 1, 0, 1, 0]  # tp 3, fp 2, fn 1, tn 2


def test_classification_metrics():
    assert accuracy(PRED, GOLD) == 5 / 8
    assert f1(PRED, GOLD) == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    assert mcc(PRED, GOLD) == pytest.approx((3 * 2 - 2 * 1) / math.sqrt(5 * 4 * 4 * 3))
    assert mcc([1, 1], [1, 0]) == 0.0 and f1([0, 0], [1, 1]) == 0.0  # undefined cases are 0


def test_correlations():
    assert pearson([1.0, 2.0, 3.0], [2.0, 4.0, 6.5]) == pytest.approx(4.5 / math.sqrt(2 * 61 / 6))
    assert spearman([1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 15.0, 40.0]) == pytest.approx(0.8)
    assert pearson([1.0, 1.0], [0.0, 2.0]) == 0.0  # constant predictions


def test_bleu_with_variable_reference_counts():
    references = [["the cat sat on the mat ."], ["a dog barked at the mailman .", "the dog barked ."]]
    assert bleu(["the cat sat on the mat .", "the dog barked ."], references) == pytest.approx(100.0)
    assert bleu(["completely unrelated words here", "nothing"], references) < 5


def test_compute_metrics_checks_lengths():
    assert compute_metrics(["accuracy", "f1"], PRED, GOLD)["accuracy"] == 5 / 8
    with pytest.raises(ValueError, match="3 predictions for 8 gold answers"):
        compute_metrics(["accuracy"], PRED[:3], GOLD)
