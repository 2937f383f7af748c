"""Classification metrics against hand-computed values and brute-force pair counts."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from cinema.metrics.classification import (
    accuracy,
    average_ranks,
    classification_metrics,
    confusion_matrix,
    matthews_corrcoef,
    roc_auc_binary,
    roc_auc_multiclass,
    sensitivity_specificity,
)

Y_TRUE = [0, 0, 1, 1, 2, 2, 2]
Y_PRED = [0, 1, 1, 1, 2, 0, 2]


def brute_force_auc(positive: np.ndarray, score: np.ndarray) -> float:
    """Fraction of (positive, negative) pairs ranked correctly, ties counting 1/2."""
    pos, neg = score[positive], score[~positive]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_confusion_accuracy_mcc_hand_example():
    np.testing.assert_array_equal(confusion_matrix(Y_TRUE, Y_PRED), [[1, 1, 0], [0, 2, 0], [1, 0, 2]])
    assert accuracy(Y_TRUE, Y_PRED) == pytest.approx(5 / 7)
    # Gorodkin: c = 5 correct, s = 7, true counts t = (2, 2, 3), predicted counts p = (2, 3, 2).
    # (c s - p.t) / sqrt((s^2 - p.p)(s^2 - t.t)) = (35 - 16) / sqrt((49 - 17)(49 - 17)) = 19 / 32.
    assert matthews_corrcoef(Y_TRUE, Y_PRED) == pytest.approx(19 / 32)


def test_binary_mcc_matches_classical_formula():
    y_true = [1, 1, 1, 0, 0, 0, 0, 1]
    y_pred = [1, 0, 1, 0, 0, 1, 0, 1]
    # TP 3, FN 1, TN 3, FP 1: (TP TN - FP FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = 8 / 16.
    assert matthews_corrcoef(y_true, y_pred) == pytest.approx(0.5)
    assert matthews_corrcoef(y_true, [1] * 8) == 0.0  # constant prediction carries no correlation
    assert matthews_corrcoef([0, 1, 2, 1], [0, 1, 2, 1]) == pytest.approx(1.0)


def test_sensitivity_specificity_per_class():
    sensitivity, specificity = sensitivity_specificity(Y_TRUE, Y_PRED)
    # class 0: TP 1 of 2; negatives 5 with 1 predicted 0 -> 4/5. class 1: 2/2; FP 1 of 5 negatives -> 4/5.
    # class 2: 2/3; no FP among 4 negatives -> 1.
    np.testing.assert_allclose(sensitivity, [0.5, 1.0, 2 / 3])
    np.testing.assert_allclose(specificity, [0.8, 0.8, 1.0])
    sensitivity, _ = sensitivity_specificity([0, 0], [0, 1], n_classes=3)
    assert math.isnan(sensitivity[2])  # no positives of class 2


def test_binary_auroc_hand_examples():
    # Pairs (pos, neg): 0.35 > 0.1, 0.35 < 0.4, 0.8 > both -> 3 of 4.
    assert roc_auc_binary([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    # Ties: positive 0.5 ties both negatives (1/2 + 1/2), positive 0.9 beats both -> 3 of 4.
    assert roc_auc_binary([0, 0, 1, 1], [0.5, 0.5, 0.5, 0.9]) == pytest.approx(0.75)
    assert math.isnan(roc_auc_binary([1, 1, 1], [0.2, 0.3, 0.4]))


@pytest.mark.parametrize("seed", range(5))
def test_binary_auroc_matches_pair_count_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 60)
    scores = rng.integers(0, 8, 60).astype(float)  # few distinct values: many ties
    assert roc_auc_binary(labels, scores) == pytest.approx(brute_force_auc(labels == 1, scores))


def test_average_ranks_share_tied_positions():
    np.testing.assert_allclose(average_ranks(np.array([3.0, 1.0, 3.0, 2.0, 3.0])), [4.0, 1.0, 4.0, 2.0, 4.0])


@pytest.mark.parametrize("seed", range(3))
def test_multiclass_auroc_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n_classes = 4
    labels = rng.integers(0, n_classes, 50)
    proba = np.round(rng.dirichlet(np.ones(n_classes), 50), 1)  # rounded: ties inside each column
    expected_ovr = np.mean([brute_force_auc(labels == k, proba[:, k]) for k in range(n_classes)])
    assert roc_auc_multiclass(labels, proba, "ovr") == pytest.approx(expected_ovr)
    pair_scores = []
    for j, k in itertools.combinations(range(n_classes), 2):
        keep = (labels == j) | (labels == k)
        a_jk = brute_force_auc(labels[keep] == j, proba[keep, j])
        a_kj = brute_force_auc(labels[keep] == k, proba[keep, k])
        pair_scores.append((a_jk + a_kj) / 2)
    assert roc_auc_multiclass(labels, proba, "ovo") == pytest.approx(np.mean(pair_scores))


def test_multiclass_auroc_perfect_and_missing_class():
    labels = np.array([0, 1, 2, 0, 1, 2])
    proba = np.eye(3)[labels] * 0.8 + 0.2 / 3
    assert roc_auc_multiclass(labels, proba, "ovo") == pytest.approx(1.0)
    assert roc_auc_multiclass(labels, proba, "ovr") == pytest.approx(1.0)
    # Class 2 never occurs: its one-vs-rest AUROC is undefined and left out of the mean.
    two_present = np.array([0, 1, 0, 1])
    assert roc_auc_multiclass(two_present, np.eye(3)[two_present] * 0.8 + 0.2 / 3, "ovr") == pytest.approx(1.0)
    with pytest.raises(ValueError, match="multi_class"):
        roc_auc_multiclass(labels, proba, "macro")


def test_classification_metrics_binary_and_multiclass():
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    p1 = np.array([0.9, 0.4, 0.8, 0.3, 0.2, 0.7, 0.1, 0.6])
    result = classification_metrics(labels, np.stack([1 - p1, p1], axis=1))
    # arg-max predictions equal the y_pred of the MCC example above: TP 3, FN 1, TN 3, FP 1.
    assert result["accuracy"] == pytest.approx(0.75)
    assert result["mcc"] == pytest.approx(0.5)
    assert result["sensitivity"] == pytest.approx(0.75) and result["specificity"] == pytest.approx(0.75)
    assert result["auroc"] == pytest.approx(brute_force_auc(labels == 1, p1))

    proba = np.eye(3)[Y_PRED] * 0.6 + 0.4 / 3
    multi = classification_metrics(Y_TRUE, proba)
    assert multi["accuracy"] == pytest.approx(5 / 7) and multi["mcc"] == pytest.approx(19 / 32)
    assert multi["sensitivity"] == pytest.approx((0.5 + 1.0 + 2 / 3) / 3)
    assert multi["specificity_2"] == pytest.approx(1.0)


def test_bad_labels_are_rejected():
    with pytest.raises(ValueError, match="integer"):
        accuracy([0.5, 1.0], [0, 1])
    with pytest.raises(ValueError, match="samples"):
        confusion_matrix([0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match=r"\{0, 1\}"):
        roc_auc_binary([0, 2], [0.1, 0.2])
