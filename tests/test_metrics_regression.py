"""Regression errors and landmark distances in mm."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cinema.metrics.regression import (
    bias,
    landmark_distance_mm,
    mean_absolute_error,
    regression_metrics,
    root_mean_squared_error,
)


def test_regression_errors_hand_example():
    pred, true = [3.0, 5.0, 2.0], [1.0, 5.0, 4.0]
    # errors pred - true = 2, 0, -2: MAE 4/3, RMSE sqrt(8/3), bias 0, max 2, min -2.
    assert mean_absolute_error(pred, true) == pytest.approx(4 / 3)
    assert root_mean_squared_error(pred, true) == pytest.approx(math.sqrt(8 / 3))
    assert bias(pred, true) == 0.0
    assert bias([2.0, 4.0], [1.0, 1.0]) == pytest.approx(2.0)  # over-estimation is positive
    assert regression_metrics(pred, true) == pytest.approx(
        {"mae": 4 / 3, "rmse": math.sqrt(8 / 3), "bias": 0.0, "max_error": 2.0, "min_error": -2.0, "n": 3}
    )
    with pytest.raises(ValueError, match="values"):
        mean_absolute_error([1.0, 2.0], [1.0])


def test_landmark_distance_mm():
    assert landmark_distance_mm([3.0, 4.0], [0.0, 0.0], (1.0, 1.0)) == pytest.approx(5.0)
    # Anisotropic pixels: dx 3 px x 2 mm = 6 mm, dy 4 px x 0.5 mm = 2 mm -> sqrt(40).
    assert landmark_distance_mm([3.0, 4.0], [0.0, 0.0], (2.0, 0.5)) == pytest.approx(math.sqrt(40))
    affine = np.diag([2.0, 0.5, 8.0, 1.0])  # a 3-D image affine serves 2-D in-plane coordinates
    assert landmark_distance_mm([3.0, 4.0], [0.0, 0.0], affine) == pytest.approx(math.sqrt(40))

    pred = np.zeros((2, 3, 2))
    gt = np.zeros((2, 3, 2))
    gt[1, 2] = (0.0, 10.0)  # image 1, landmark 2 (apex) is 10 px off in y
    distances = landmark_distance_mm(pred, gt, (1.2, 1.2))
    assert distances.shape == (2, 3)
    np.testing.assert_allclose(distances, [[0, 0, 0], [0, 0, 12.0]])
    with pytest.raises(ValueError, match="shape"):
        landmark_distance_mm(np.zeros((3, 2)), np.zeros((2, 2)), (1.0, 1.0))
