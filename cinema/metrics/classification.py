"""Classification metrics from integer labels and class probabilities (numpy only, sklearn conventions).

Classes are integers 0..K-1. For binary tasks class 1 is the positive class (e.g. "disease"), so sensitivity is the
recall of class 1 and specificity the recall of class 0. AUROC of a task where only one class is present is NaN
(undefined) rather than an error, so that small subgroups in a fairness breakdown do not abort the analysis.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import numpy as np


def _labels(values: Sequence[int] | np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of class indices, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise ValueError(f"{name} must contain integer class indices")
        arr = arr.astype(np.int64)
    if arr.size and arr.min() < 0:
        raise ValueError(f"{name} must contain non-negative class indices")
    return arr.astype(np.int64, copy=False)


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values`` where tied values share the mean of their ranks (scipy's ``rankdata``)."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    # Each run of equal values spans ordinal ranks first..last; all members get (first + last) / 2.
    run_starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    run_ends = np.r_[run_starts[1:], sorted_values.size]
    run_rank = (run_starts + 1 + run_ends) / 2.0
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat(run_rank, run_ends - run_starts)
    return ranks


def confusion_matrix(
    y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, n_classes: int | None = None
) -> np.ndarray:
    """Counts C[i, j] of samples of true class i predicted as class j, shape (n_classes, n_classes)."""
    true = _labels(y_true, "y_true")
    pred = _labels(y_pred, "y_pred")
    if true.shape != pred.shape:
        raise ValueError(f"y_true has {true.size} samples but y_pred has {pred.size}")
    if n_classes is None:
        n_classes = int(max(true.max(initial=0), pred.max(initial=0))) + 1
    if true.size and max(true.max(), pred.max()) >= n_classes:
        raise ValueError(f"class index out of range for n_classes={n_classes}")
    return np.bincount(true * n_classes + pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def accuracy(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray) -> float:
    """Fraction of correct predictions (NaN for no samples)."""
    matrix = confusion_matrix(y_true, y_pred)
    total = matrix.sum()
    return float(np.trace(matrix) / total) if total else float("nan")


def matthews_corrcoef(
    y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, n_classes: int | None = None
) -> float:
    """Matthews correlation coefficient, multi-class form of Gorodkin (2004); equals the usual MCC for two classes.

    MCC = (c s - sum_k p_k t_k) / sqrt((s^2 - sum_k p_k^2)(s^2 - sum_k t_k^2)) with c correct predictions, s samples,
    t_k true and p_k predicted counts of class k. 0 when either factor of the denominator is zero (a constant true
    or predicted labelling carries no correlation), as in sklearn.
    """
    matrix = confusion_matrix(y_true, y_pred, n_classes).astype(np.float64)
    true_counts = matrix.sum(axis=1)
    pred_counts = matrix.sum(axis=0)
    correct = np.trace(matrix)
    samples = matrix.sum()
    numerator = correct * samples - pred_counts @ true_counts
    denominator = (samples**2 - pred_counts @ pred_counts) * (samples**2 - true_counts @ true_counts)
    return float(numerator / np.sqrt(denominator)) if denominator > 0 else 0.0


def sensitivity_specificity(
    y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, n_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-class (one-vs-rest) sensitivity TP/(TP+FN) and specificity TN/(TN+FP), each of shape (n_classes,).

    A class with no positive (or no negative) samples has NaN sensitivity (or specificity).
    """
    matrix = confusion_matrix(y_true, y_pred, n_classes).astype(np.float64)
    true_positive = np.diag(matrix)
    positives = matrix.sum(axis=1)
    predicted_positive = matrix.sum(axis=0)
    negatives = matrix.sum() - positives
    true_negative = negatives - (predicted_positive - true_positive)
    with np.errstate(divide="ignore", invalid="ignore"):
        sensitivity = np.where(positives > 0, true_positive / positives, np.nan)
        specificity = np.where(negatives > 0, true_negative / negatives, np.nan)
    return sensitivity, specificity


def roc_auc_binary(y_true: Sequence[int] | np.ndarray, score: Sequence[float] | np.ndarray) -> float:
    """Exact area under the ROC curve for labels in {0, 1} and a score that is higher for class 1.

    Uses the Mann-Whitney rank statistic with average ranks, so a positive-negative pair with equal scores counts
    one half: AUC = (R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg). NaN when only one class is present.
    """
    true = _labels(y_true, "y_true")
    score_arr = np.asarray(score, dtype=np.float64)
    if score_arr.shape != true.shape:
        raise ValueError(f"score shape {score_arr.shape} differs from label shape {true.shape}")
    if true.size and true.max() > 1:
        raise ValueError("binary AUROC needs labels in {0, 1}")
    if not np.all(np.isfinite(score_arr)):
        raise ValueError("scores must be finite")
    n_pos = int(true.sum())
    n_neg = true.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = average_ranks(score_arr)
    return float((ranks[true == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_auc_multiclass(y_true: Sequence[int] | np.ndarray, proba: np.ndarray, multi_class: str = "ovo") -> float:
    """Macro-averaged multi-class AUROC from class probabilities of shape (n_samples, n_classes).

    ``"ovr"``: mean over classes of the AUROC of class k vs the rest using proba[:, k].
    ``"ovo"`` (Hand & Till 2001, the reference's choice): for each class pair (j, k), restricted to samples of those
    two classes, the mean of AUROC(j vs k on proba[:, j]) and AUROC(k vs j on proba[:, k]); then the mean over pairs.
    Classes (or pairs) without samples are left out of the mean; NaN if nothing is defined.
    """
    true = _labels(y_true, "y_true")
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or proba.shape[0] != true.size:
        raise ValueError(f"proba must have shape ({true.size}, n_classes), got {proba.shape}")
    n_classes = proba.shape[1]
    if true.size and true.max() >= n_classes:
        raise ValueError(f"label {int(true.max())} out of range for {n_classes} probability columns")
    if multi_class == "ovr":
        scores = [roc_auc_binary((true == k).astype(np.int64), proba[:, k]) for k in range(n_classes)]
    elif multi_class == "ovo":
        scores = []
        for j, k in combinations(range(n_classes), 2):
            pair = (true == j) | (true == k)
            if not np.any(true[pair] == j) or not np.any(true[pair] == k):
                continue
            j_vs_k = roc_auc_binary((true[pair] == j).astype(np.int64), proba[pair, j])
            k_vs_j = roc_auc_binary((true[pair] == k).astype(np.int64), proba[pair, k])
            scores.append((j_vs_k + k_vs_j) / 2.0)
    else:
        raise ValueError(f"multi_class must be 'ovr' or 'ovo', got {multi_class!r}")
    defined = [s for s in scores if np.isfinite(s)]
    return float(np.mean(defined)) if defined else float("nan")


def classification_metrics(
    y_true: Sequence[int] | np.ndarray, proba: np.ndarray, multi_class: str = "ovo"
) -> dict[str, float]:
    """Accuracy, MCC, AUROC, sensitivity and specificity from labels and probabilities (n_samples, n_classes).

    The predicted class is the arg-max probability. For two classes, sensitivity/specificity are those of class 1
    and AUROC uses proba[:, 1]; for more, they are macro averages over classes with defined values, and the
    per-class values are added as ``sensitivity_<k>`` / ``specificity_<k>``.
    """
    true = _labels(y_true, "y_true")
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or proba.shape[0] != true.size or proba.shape[1] < 2:
        raise ValueError(f"proba must have shape ({true.size}, n_classes >= 2), got {proba.shape}")
    n_classes = proba.shape[1]
    pred = proba.argmax(axis=1)
    sensitivity, specificity = sensitivity_specificity(true, pred, n_classes)
    result = {"accuracy": accuracy(true, pred), "mcc": matthews_corrcoef(true, pred, n_classes)}
    if n_classes == 2:
        result["auroc"] = roc_auc_binary(true, proba[:, 1])
        result["sensitivity"] = float(sensitivity[1])
        result["specificity"] = float(specificity[1])
        return result
    result["auroc"] = roc_auc_multiclass(true, proba, multi_class)
    with np.errstate(invalid="ignore"):
        result["sensitivity"] = float(np.nanmean(sensitivity)) if np.any(np.isfinite(sensitivity)) else float("nan")
        result["specificity"] = float(np.nanmean(specificity)) if np.any(np.isfinite(specificity)) else float("nan")
    for k in range(n_classes):
        result[f"sensitivity_{k}"] = float(sensitivity[k])
        result[f"specificity_{k}"] = float(specificity[k])
    return result
