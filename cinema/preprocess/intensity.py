"""Intensity normalisation of cine MRI for the model.

The reference clips every 3-D volume (every frame of a cine) to its [0.95th percentile, 99.5th percentile] — the lower
bound really is the 0.95 % quantile — z-scores it and rescales it to [0, 1]. A min-max rescale after a z-score is the
same as a min-max rescale of the clipped values, and the clipped minimum is the lower percentile, so the whole step is
``(clip(x, lo, hi) - lo) / (hi - lo)``; that is what is computed here.

Per-frame percentiles (the reference) give every frame its own scale, so the blood pool brightness can jump between
frames of one cine (reference weakness 8.5). ``scope="cine"`` uses one set of percentiles for the whole cine instead.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

LOWER_PERCENTILE = 0.95
UPPER_PERCENTILE = 99.5

IntensityScope = Literal["frame", "cine"]


def _scale_to_unit(values: np.ndarray, valid: np.ndarray | None, lower: float, upper: float) -> np.ndarray:
    samples = values if valid is None else values[valid]
    out = np.zeros(values.shape, dtype=np.float32)
    if samples.size == 0:
        return out
    lo, hi = np.percentile(samples, [lower, upper])
    if not hi > lo:
        # A constant volume carries no contrast; the reference's z-score would divide by zero.
        return out
    out[...] = (np.clip(values, lo, hi) - lo) / (hi - lo)
    if valid is not None:
        out[~valid] = 0.0
    return out


def normalise_intensity(
    image: np.ndarray,
    *,
    n_spatial: int = 3,
    scope: IntensityScope = "frame",
    valid: np.ndarray | None = None,
    lower_percentile: float = LOWER_PERCENTILE,
    upper_percentile: float = UPPER_PERCENTILE,
) -> np.ndarray:
    """Clip to percentiles and rescale to [0, 1], per frame (reference) or over the whole cine.

    Args:
        image: intensities with ``n_spatial`` leading spatial axes and optional trailing frame axes, e.g. (X, Y, Z)
            or (X, Y, Z, T) for SAX, (X, Y) or (X, Y, T) for LAX.
        n_spatial: number of leading spatial axes; every index of the trailing axes is one frame.
        scope: "frame" computes percentiles per frame (the reference); "cine" one set over all frames, which keeps
            intensities comparable across the cardiac cycle.
        valid: optional boolean mask of the spatial shape; voxels outside it (padding) neither count in the
            percentiles nor keep a value (they become 0).
        lower_percentile: lower clipping percentile, in percent (the reference's 0.95).
        upper_percentile: upper clipping percentile, in percent.

    Returns:
        float32 array of the input's shape with values in [0, 1].
    """
    image = np.asarray(image)
    if image.ndim < n_spatial:
        raise ValueError(f"image must have at least {n_spatial} spatial axes, got shape {image.shape}")
    if scope not in ("frame", "cine"):
        raise ValueError(f"intensity scope must be 'frame' or 'cine', got {scope!r}")
    if not 0.0 <= lower_percentile < upper_percentile <= 100.0:
        raise ValueError(f"need 0 <= lower < upper <= 100 percentiles, got {lower_percentile}, {upper_percentile}")
    if not np.isfinite(image).all():
        raise ValueError("image contains NaN or infinite values")
    spatial_shape = image.shape[:n_spatial]
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        if valid.shape != spatial_shape:
            raise ValueError(f"valid mask shape {valid.shape} does not match the spatial shape {spatial_shape}")
    values = image.astype(np.float32, copy=False)
    if scope == "cine" or image.ndim == n_spatial:
        if valid is not None:
            valid = np.broadcast_to(valid.reshape(valid.shape + (1,) * (image.ndim - n_spatial)), image.shape)
        return _scale_to_unit(values, valid, lower_percentile, upper_percentile)
    frames = values.reshape(*spatial_shape, -1)
    out = np.empty(frames.shape, dtype=np.float32)
    for t in range(frames.shape[-1]):
        out[..., t] = _scale_to_unit(frames[..., t], valid, lower_percentile, upper_percentile)
    return out.reshape(image.shape)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Quantise [0, 1] intensities to uint8 the way the reference stores them (x 255, truncated)."""
    image = np.asarray(image, dtype=np.float32)
    return np.clip(np.floor(image * 255.0), 0, 255).astype(np.uint8)
