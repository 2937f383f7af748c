"""Agreement between two measurements of the same quantity: Bland-Altman statistics and plot, scan-rescan CV.

Used for predicted vs manual EDV/ESV/EF/LV mass and for paired scan-rescan studies. Differences are always
``pred - ref``, so a positive bias means the prediction over-estimates.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cinema.io.atomic import write_bytes_atomic

LOA_Z = 1.96  # limits of agreement cover 95 % of differences under normality


def _paired(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired measurements differ in length: {a.size} vs {b.size}")
    finite = np.isfinite(a) & np.isfinite(b)
    return a[finite], b[finite], int(a.size - finite.sum())


def bland_altman(pred: Sequence[float] | np.ndarray, ref: Sequence[float] | np.ndarray) -> dict[str, float]:
    """Bland-Altman summary of ``pred`` against ``ref``.

    Returns mae, bias (mean of pred - ref), sd (sample SD of the differences), loa_low / loa_high
    (bias -/+ 1.96 sd), rmse, n (pairs used) and n_dropped (pairs with a NaN or inf, e.g. an EF of an empty
    prediction, which are excluded but counted so they cannot vanish unnoticed). Statistics of zero pairs are NaN;
    sd and the limits need at least two pairs.
    """
    pred_arr, ref_arr, n_dropped = _paired(pred, ref)
    diff = pred_arr - ref_arr
    n = diff.size
    nan = float("nan")
    bias = float(diff.mean()) if n else nan
    sd = float(diff.std(ddof=1)) if n > 1 else nan
    return {
        "mae": float(np.abs(diff).mean()) if n else nan,
        "bias": bias,
        "sd": sd,
        "loa_low": bias - LOA_Z * sd,
        "loa_high": bias + LOA_Z * sd,
        "rmse": float(np.sqrt(np.mean(diff**2))) if n else nan,
        "n": n,
        "n_dropped": n_dropped,
    }


def bland_altman_plot(
    pred: Sequence[float] | np.ndarray,
    ref: Sequence[float] | np.ndarray,
    path: str | os.PathLike,
    title: str = "",
    unit: str = "",
) -> Path:
    """Write a Bland-Altman plot (mean of the pair vs difference pred - ref, bias and 95 % limits) as a PNG.

    The PNG is rendered in memory and appears atomically (temporary file in the same folder, then renamed); a
    missing output folder is created.
    """
    # The object-oriented Agg API draws without pyplot's global state or a display, safe in threads and on servers.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    pred_arr, ref_arr, _ = _paired(pred, ref)
    if pred_arr.size == 0:
        raise ValueError(f"{path}: no finite pairs to plot")
    stats = bland_altman(pred_arr, ref_arr)
    means = (pred_arr + ref_arr) / 2.0
    diffs = pred_arr - ref_arr
    suffix = f" ({unit})" if unit else ""

    figure = Figure(figsize=(6.0, 4.5), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.scatter(means, diffs, s=14, alpha=0.7, color="tab:blue", edgecolors="none")
    axes.axhline(stats["bias"], color="tab:red", linewidth=1.2, label=f"bias {stats['bias']:.2f}")
    if np.isfinite(stats["sd"]):
        for key in ("loa_low", "loa_high"):
            axes.axhline(stats[key], color="tab:gray", linestyle="--", linewidth=1.0)
        axes.plot(
            [], [], color="tab:gray", linestyle="--", label=f"95% LoA [{stats['loa_low']:.2f}, {stats['loa_high']:.2f}]"
        )
    axes.axhline(0.0, color="black", linewidth=0.5)
    axes.set_xlabel(f"mean of prediction and reference{suffix}")
    axes.set_ylabel(f"prediction - reference{suffix}")
    axes.set_title(f"{title} (n={stats['n']}, MAE {stats['mae']:.2f})" if title else f"n={stats['n']}")
    axes.legend(loc="best", fontsize="small")
    figure.tight_layout()

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return write_bytes_atomic(path, buffer.getvalue())


def coefficient_of_variation(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Scan-rescan coefficient of variation as a fraction (x 100 for %), from paired measurements a and b.

    CV = sqrt(mean(((a - b)^2 / 2) / ((a + b) / 2)^2)): the root mean of each pair's within-subject variance
    (two readings: s^2 = (a - b)^2 / 2) over its squared mean. Pairs with a NaN are dropped; pairs with a zero mean
    are rejected because their relative variation is undefined.
    """
    a_arr, b_arr, _ = _paired(a, b)
    if a_arr.size == 0:
        return float("nan")
    pair_mean = (a_arr + b_arr) / 2.0
    if np.any(pair_mean == 0):
        raise ValueError("coefficient of variation is undefined for a pair whose mean is zero")
    within_variance = (a_arr - b_arr) ** 2 / 2.0
    return float(np.sqrt(np.mean(within_variance / pair_mean**2)))
