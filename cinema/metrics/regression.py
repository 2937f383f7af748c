"""Regression errors (EF, age, BMI) and landmark localisation distance in mm."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cinema.metrics.segmentation import spacing_from


def _errors(pred: Sequence[float] | np.ndarray, true: Sequence[float] | np.ndarray) -> np.ndarray:
    pred_arr = np.asarray(pred, dtype=np.float64).ravel()
    true_arr = np.asarray(true, dtype=np.float64).ravel()
    if pred_arr.shape != true_arr.shape:
        raise ValueError(f"prediction has {pred_arr.size} values but the target has {true_arr.size}")
    return pred_arr - true_arr


def mean_absolute_error(pred: Sequence[float] | np.ndarray, true: Sequence[float] | np.ndarray) -> float:
    """Mean |pred - true| (NaN for no samples)."""
    errors = _errors(pred, true)
    return float(np.abs(errors).mean()) if errors.size else float("nan")


def root_mean_squared_error(pred: Sequence[float] | np.ndarray, true: Sequence[float] | np.ndarray) -> float:
    """sqrt(mean((pred - true)^2)) (NaN for no samples)."""
    errors = _errors(pred, true)
    return float(np.sqrt(np.mean(errors**2))) if errors.size else float("nan")


def bias(pred: Sequence[float] | np.ndarray, true: Sequence[float] | np.ndarray) -> float:
    """Mean signed error mean(pred - true); positive means over-estimation (NaN for no samples)."""
    errors = _errors(pred, true)
    return float(errors.mean()) if errors.size else float("nan")


def regression_metrics(pred: Sequence[float] | np.ndarray, true: Sequence[float] | np.ndarray) -> dict[str, float]:
    """MAE, RMSE, bias, and the largest over- and under-estimation (max_error, min_error of pred - true)."""
    errors = _errors(pred, true)
    if errors.size == 0:
        nan = float("nan")
        return {"mae": nan, "rmse": nan, "bias": nan, "max_error": nan, "min_error": nan, "n": 0}
    return {
        "mae": float(np.abs(errors).mean()),
        "rmse": float(np.sqrt(np.mean(errors**2))),
        "bias": float(errors.mean()),
        "max_error": float(errors.max()),
        "min_error": float(errors.min()),
        "n": int(errors.size),
    }


def landmark_distance_mm(
    pred_xy: Sequence[float] | np.ndarray, gt_xy: Sequence[float] | np.ndarray, spacing: Sequence[float] | np.ndarray
) -> np.ndarray | float:
    """Euclidean distance in mm between predicted and true landmark coordinates given in pixels.

    Coordinates have shape (..., D) with the last axis in the same axis order as ``spacing`` (D values, or a
    (D+1)x(D+1) affine), e.g. (n_images, 3 landmarks, 2) with spacing (sx, sy). Returns shape (...) — a float for a
    single point. Anisotropic pixels are handled by scaling each axis before the norm.
    """
    pred_arr = np.asarray(pred_xy, dtype=np.float64)
    gt_arr = np.asarray(gt_xy, dtype=np.float64)
    if pred_arr.shape != gt_arr.shape or pred_arr.ndim == 0:
        raise ValueError(f"landmark arrays must share a shape (..., D), got {pred_arr.shape} and {gt_arr.shape}")
    sampling = spacing_from(spacing, pred_arr.shape[-1])
    distance = np.sqrt((((pred_arr - gt_arr) * sampling) ** 2).sum(axis=-1))
    return float(distance) if distance.ndim == 0 else distance
