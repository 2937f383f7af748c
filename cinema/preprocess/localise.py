"""Label-free heart localisation for the model-space crop.

The reference crops public datasets around the ground-truth LV box, which cannot be done on new data (reference
weakness 8.4). Here the heart is found from what makes it unique in a cine: it moves. Per voxel, the temporal standard
deviation of the (lightly smoothed, per-frame normalised) intensity is large where blood and myocardium move through
the cardiac cycle and small in static tissue. Averaging it over slices and finding the in-plane window of
``box_mm`` x ``box_mm`` that holds the most motion (lightly blurred, so that a heart smaller than the box lands in
its middle) gives the crop centre: a box sum is robust to speckle noise in the lungs and follows the whole beating
heart (LV and RV) rather than its brightest spot. Two frames (ED and ES, as in
the shared ACDC copy) are enough.

When the motion is not concentrated (a single frame, a static or pure-noise series) the image centre is returned and
``fallback`` is set. When long-axis views exist, `lax_plane_center` gives the reference's geometric centre (the
intersection of two LAX planes with the SAX stack) as an alternative.

Measured with the default 192 x 192 mm crop (benchmarks/heart_crop.py): on the 80 shared ACDC patients (ED and ES,
heart = RV + MYO + LV) every heart voxel is inside the crop, the closest 7.9 mm from its edge (an image-centred crop
loses up to 27 % of the heart); on both Sunnybrook cines every contoured LV voxel is inside, at least 16 mm from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np
from scipy import ndimage

# Side of the in-plane window whose motion is summed: about the size of a ventricle pair, well inside the crop.
BOX_MM = 100.0
# The box sum is flat wherever the moving region fits inside the box; a light blur makes its maximum the middle.
BOX_BLUR_MM = 10.0
# Light smoothing before the temporal statistic suppresses pixel noise, which otherwise dominates in the lungs.
PRESMOOTH_MM = 2.0
# Frames are put on a common scale by percentiles that static tissue dominates (the blood pool, whose size changes
# over the cycle, is a few % of voxels at most), so a filling ventricle does not rescale the whole frame.
SCALE_PERCENTILES = (1.0, 90.0)
SCALE_CLIP = 3.0
# Below this concentration (motion density in the best window / mean density) the signal is treated as absent.
MIN_CONFIDENCE = 2.0


@dataclass(frozen=True)
class HeartLocation:
    """Where the heart is in a SAX cine.

    Attributes:
        center_mm: world point (3,), RAS+ mm, to centre the model crop on.
        center_index: the same point as a continuous voxel index (3,) of the input grid.
        confidence: motion density in the chosen window relative to the image mean (about 1 for no signal).
        fallback: True when the signal was too weak and the image centre was returned instead.
        method: "motion", "lax_planes" or "image_centre" — what the centre came from.
    """

    center_mm: np.ndarray
    center_index: np.ndarray
    confidence: float
    fallback: bool
    method: str = "motion"


def _as_cine(cine: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    if isinstance(cine, np.ndarray):
        array = cine
    else:
        frames = [np.asarray(frame) for frame in cine]
        if not frames:
            raise ValueError("locate_heart needs at least one frame")
        shapes = {frame.shape for frame in frames}
        if len(shapes) != 1:
            raise ValueError(f"frames have different shapes: {sorted(shapes)}")
        array = np.stack(frames, axis=-1)
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4 or min(array.shape) < 1:
        raise ValueError(f"cine must be (X, Y, Z, T) or (X, Y, Z), got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or not np.isfinite(array).all():
        raise ValueError("cine must hold finite real numbers")
    return array


def motion_map(cine: np.ndarray, spacing: Sequence[float], presmooth_mm: float = PRESMOOTH_MM) -> np.ndarray:
    """Per-voxel temporal standard deviation (X, Y, Z) of a (X, Y, Z, T) cine after per-frame normalisation."""
    frames = np.empty(cine.shape, dtype=np.float32)
    for t in range(cine.shape[-1]):
        frame = cine[..., t].astype(np.float32)
        # Frames can be scaled independently (ACDC stores each frame z-scored), so compare them on a common scale.
        lo, hi = np.percentile(frame, SCALE_PERCENTILES)
        frames[..., t] = np.clip((frame - lo) / (hi - lo), 0.0, SCALE_CLIP) if hi > lo else 0.0
    if presmooth_mm > 0:
        sigma = [presmooth_mm / spacing[0], presmooth_mm / spacing[1], 0.0, 0.0]
        frames = ndimage.gaussian_filter(frames, sigma=sigma, mode="nearest")
    return frames.std(axis=-1)


def locate_heart(
    cine: np.ndarray | Sequence[np.ndarray],
    affine: np.ndarray,
    *,
    box_mm: float = BOX_MM,
    min_confidence: float = MIN_CONFIDENCE,
) -> HeartLocation:
    """Find the heart in a SAX cine without labels.

    Args:
        cine: (X, Y, Z, T) intensities, or a list of (X, Y, Z) frames (at least two for a motion signal).
        affine: 4x4 voxel -> world (mm) matrix of the spatial axes.
        box_mm: side of the in-plane window whose motion is maximised.
        min_confidence: weaker motion concentration falls back to the image centre.

    Returns:
        A `HeartLocation`; pass ``center_mm`` to `to_model_space`.
    """
    array = _as_cine(cine)
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise ValueError(f"affine must be a finite 4x4 matrix, got shape {affine.shape}")
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if (spacing <= 0).any():
        raise ValueError(f"voxel spacing must be positive, got {tuple(spacing.round(6).tolist())}")
    shape = np.asarray(array.shape[:3], dtype=np.float64)
    center_index = (shape - 1.0) / 2.0
    confidence = 0.0

    if array.shape[-1] >= 2:
        motion = motion_map(array, spacing)
        in_plane = motion.mean(axis=2)
        # The median is the static-tissue and noise floor; only motion above it counts.
        in_plane = np.clip(in_plane - np.median(in_plane), 0.0, None)
        box = [max(1, int(round(box_mm / spacing[0]))), max(1, int(round(box_mm / spacing[1])))]
        density = ndimage.uniform_filter(in_plane, size=box, mode="constant")
        density = ndimage.gaussian_filter(density, sigma=[BOX_BLUR_MM / spacing[0], BOX_BLUR_MM / spacing[1]])
        mean_density = float(in_plane.mean())
        if mean_density > 0:
            peak = np.unravel_index(int(np.argmax(density)), density.shape)
            confidence = float(density[peak]) / mean_density
            if confidence >= min_confidence:
                x0, y0 = (max(0, p - b // 2) for p, b in zip(peak, box, strict=True))
                window = motion[x0 : x0 + box[0], y0 : y0 + box[1]].sum(axis=(0, 1))
                z = float(np.average(np.arange(len(window)), weights=window)) if window.sum() > 0 else center_index[2]
                center_index = np.array([peak[0], peak[1], z], dtype=np.float64)

    fallback = confidence < min_confidence
    return HeartLocation(
        center_mm=affine[:3, :3] @ center_index + affine[:3, 3],
        center_index=center_index,
        confidence=confidence,
        fallback=fallback,
        method="image_centre" if fallback else "motion",
    )


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


def lax_plane_center(
    sax_shape: Sequence[int],
    sax_affine: np.ndarray,
    lax_affines: Sequence[np.ndarray],
    min_angle_deg: float = 20.0,
) -> np.ndarray | None:
    """World point where the long axis (intersection of two LAX planes) crosses the SAX stack's middle slice.

    This is the reference's geometric centre for UK Biobank. The LAX planes are taken from their affines (plane
    through the origin, normal = cross product of the in-plane axes); with three LAX views the pair with the widest
    angle is used. Returns None when fewer than two planes are given, the planes are nearly parallel, or the long axis
    runs parallel to the SAX slices.
    """
    sax_affine = np.asarray(sax_affine, dtype=np.float64)
    planes = []
    for lax in lax_affines:
        lax = np.asarray(lax, dtype=np.float64)
        if lax.shape != (4, 4) or not np.isfinite(lax).all():
            raise ValueError(f"LAX affine must be a finite 4x4 matrix, got shape {lax.shape}")
        planes.append((_unit(np.cross(lax[:3, 0], lax[:3, 1])), lax[:3, 3]))
    if len(planes) < 2:
        return None
    (n1, p1), (n2, p2) = max(combinations(planes, 2), key=lambda pair: np.linalg.norm(np.cross(pair[0][0], pair[1][0])))
    direction = np.cross(n1, n2)
    if np.linalg.norm(direction) < np.sin(np.deg2rad(min_angle_deg)):
        return None
    direction = _unit(direction)
    # The point of the line closest to the world origin satisfies both plane equations and is orthogonal to it.
    point = np.linalg.solve(np.stack([n1, n2, direction]), np.array([n1 @ p1, n2 @ p2, 0.0]))

    sax_normal = _unit(np.cross(sax_affine[:3, 0], sax_affine[:3, 1]))
    middle = (np.asarray(sax_shape[:3], dtype=np.float64) - 1.0) / 2.0
    sax_point = sax_affine[:3, :3] @ middle + sax_affine[:3, 3]
    along = sax_normal @ direction
    if abs(along) < np.sin(np.deg2rad(min_angle_deg)):
        return None
    return point + direction * (sax_normal @ (sax_point - point)) / along
