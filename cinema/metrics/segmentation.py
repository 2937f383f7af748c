"""Segmentation and cardiac-function metrics on label maps, in physical units.

Label convention (ACDC, M&Ms, M&Ms-2, CineMA): 0 background, 1 RV cavity, 2 LV myocardium, 3 LV cavity.
Every function that measures something physical takes the image's own voxel spacing in mm, given either as a sequence
of per-axis spacings or as the image's 4x4 affine (the spacing is then the length of each affine column), so no
function silently assumes 1 mm voxels.

Conventions that differ between toolkits, fixed here:
- Dice of a class absent from both prediction and ground truth is 1.0 (a correct "nothing there"), never NaN;
  MONAI's default would give NaN and drop the case from the mean.
- HD95 is the symmetric Hausdorff distance at the 95th percentile as in MONAI's ``compute_hausdorff_distance``: the
  larger of the two directed 95th percentiles of surface-to-surface distances, with surface voxels defined as the mask
  minus its 6-connected (face) erosion and voxels on the image border counted as surface. It is NaN when either mask
  is empty (the distance is undefined; the Dice already scores that failure).
- EF follows the reference definition (EDV - ESV) / EDV x 100 per ventricle, but without the reference's silent
  NaN -> 0 replacement and [0, 100] clipping: an empty EDV gives NaN and ESV > EDV gives a negative EF, so failures stay
  visible in the statistics.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

ACDC_CLASSES: dict[int, str] = {1: "rv", 2: "myo", 3: "lv"}
MYOCARDIUM_DENSITY_G_PER_ML = 1.05

# Clinical EF bands used by the reference evaluation: <= 40 % reduced, (40, 55] borderline, > 55 % normal.
REDUCED_EF_MAX = 40.0
NORMAL_EF_MIN = 55.0


def spacing_from(spacing_or_affine: Sequence[float] | np.ndarray, ndim: int) -> np.ndarray:
    """Per-axis voxel spacing in mm from a spacing sequence or a 4x4 (or (n+1)x(n+1)) affine.

    Only the first ``ndim`` axes are used, so a 3-D affine serves a 2-D slice and a 4-D (x, y, z, t) spacing serves
    a 3-D frame.
    """
    values = np.asarray(spacing_or_affine, dtype=np.float64)
    if values.ndim == 2:
        if values.shape[0] != values.shape[1] or values.shape[0] < 2:
            raise ValueError(f"affine must be square, got shape {values.shape}")
        # The voxel size along each array axis is the length of the corresponding affine column.
        values = np.linalg.norm(values[:-1, :-1], axis=0)
    elif values.ndim != 1:
        raise ValueError(f"spacing must be a 1-D sequence or a square affine, got shape {values.shape}")
    if values.size < ndim:
        raise ValueError(f"spacing {values.tolist()} has {values.size} values but the array has {ndim} dimensions")
    values = values[:ndim]
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(f"spacing must be positive and finite, got {values.tolist()}")
    return values


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}")
    return pred, gt


def dice_per_class(pred: np.ndarray, gt: np.ndarray, labels: Sequence[int] = (1, 2, 3)) -> dict[int, float]:
    """Dice coefficient 2|P∩G| / (|P| + |G|) for each label; 1.0 when the label is absent from both."""
    pred, gt = _check_pair(pred, gt)
    scores = {}
    for label in labels:
        p = pred == label
        g = gt == label
        total = int(p.sum()) + int(g.sum())
        scores[int(label)] = 1.0 if total == 0 else 2.0 * int(np.logical_and(p, g).sum()) / total
    return scores


def _surface(mask: np.ndarray) -> np.ndarray:
    # border_value=0 makes voxels on the array border part of the surface, as in MONAI's get_mask_edges.
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def surface_distances_mm(
    pred_mask: np.ndarray, gt_mask: np.ndarray, spacing: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances in mm: (pred surface -> gt surface, gt surface -> pred surface).

    Both masks must be non-empty. Distances are exact Euclidean distances between voxel centres.
    """
    pred_mask, gt_mask = _check_pair(np.asarray(pred_mask, dtype=bool), np.asarray(gt_mask, dtype=bool))
    sampling = spacing_from(spacing, pred_mask.ndim)
    if not pred_mask.any() or not gt_mask.any():
        raise ValueError("surface distances need two non-empty masks")
    # Every surface voxel, and so every nearest surface point, lies inside the union's bounding box; cropping to it
    # (with a one-voxel margin so erosion sees the same neighbourhood) makes the distance transforms much cheaper.
    union = pred_mask | gt_mask
    box = ndimage.find_objects(union.astype(np.uint8))[0]
    box = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(box, union.shape, strict=True))
    pred_surface = _surface(pred_mask[box])
    gt_surface = _surface(gt_mask[box])
    to_gt = ndimage.distance_transform_edt(~gt_surface, sampling=sampling)
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=sampling)
    return to_gt[pred_surface], to_pred[gt_surface]


def hausdorff_mm(
    pred_mask: np.ndarray, gt_mask: np.ndarray, spacing: Sequence[float] | np.ndarray, percentile: float = 95.0
) -> float:
    """Symmetric percentile Hausdorff distance in mm between two binary masks; NaN if either is empty.

    ``percentile=100`` gives the classical Hausdorff distance.
    """
    pred_mask, gt_mask = _check_pair(np.asarray(pred_mask, dtype=bool), np.asarray(gt_mask, dtype=bool))
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    if not pred_mask.any() or not gt_mask.any():
        spacing_from(spacing, pred_mask.ndim)  # still reject a bad spacing
        return float("nan")
    pred_to_gt, gt_to_pred = surface_distances_mm(pred_mask, gt_mask, spacing)
    return float(max(np.percentile(pred_to_gt, percentile), np.percentile(gt_to_pred, percentile)))


def hausdorff95_mm(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | np.ndarray, labels: Sequence[int] = (1, 2, 3)
) -> dict[int, float]:
    """HD95 in mm for each label of two label maps (NaN for a label empty in either map)."""
    pred, gt = _check_pair(pred, gt)
    return {int(label): hausdorff_mm(pred == label, gt == label, spacing, 95.0) for label in labels}


def class_volumes_ml(
    labels: np.ndarray, spacing: Sequence[float] | np.ndarray, classes: Sequence[int] = (1, 2, 3)
) -> dict[int, float]:
    """Volume of each class in ml: voxel count x voxel volume (mm^3) / 1000."""
    labels = np.asarray(labels)
    voxel_ml = float(np.prod(spacing_from(spacing, labels.ndim))) / 1000.0
    return {int(c): int(np.count_nonzero(labels == c)) * voxel_ml for c in classes}


def volume_curve(
    label_4d: np.ndarray,
    spacing: Sequence[float] | np.ndarray,
    classes: Sequence[int] = (1, 2, 3),
    time_axis: int = -1,
) -> np.ndarray:
    """Volumes in ml per frame and class of a label time series, shape (n_frames, len(classes)).

    ``spacing`` covers the spatial axes (in array order without the time axis); a 4-D spacing or affine whose
    time entry sits last, as in a NIfTI (x, y, z, t) header, is accepted too.
    """
    labels = np.moveaxis(np.asarray(label_4d), time_axis, 0)
    if labels.ndim < 2:
        raise ValueError(f"label time series needs a time axis and at least one spatial axis, got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.array_equal(labels, np.round(labels)):
            raise ValueError("label map must contain integer labels")
        labels = labels.astype(np.int64)
    voxel_ml = float(np.prod(spacing_from(spacing, labels.ndim - 1))) / 1000.0
    n_frames = labels.shape[0]
    flat = labels.reshape(n_frames, -1)
    if flat.size and flat.min() < 0:
        raise ValueError("label map must not contain negative labels")
    # One bincount over (frame, label) pairs counts every class in every frame in a single pass.
    n_labels = int(max(flat.max(initial=0), max(classes, default=0))) + 1
    frame_offsets = np.arange(n_frames, dtype=np.int64)[:, None] * n_labels
    counts = np.bincount((flat + frame_offsets).ravel(), minlength=n_frames * n_labels).reshape(n_frames, n_labels)
    return counts[:, list(classes)] * voxel_ml


def ejection_fraction(edv: float | np.ndarray, esv: float | np.ndarray) -> float | np.ndarray:
    """EF in % = (EDV - ESV) / EDV x 100; NaN where EDV <= 0 (no ventricle found)."""
    edv_arr = np.asarray(edv, dtype=np.float64)
    esv_arr = np.asarray(esv, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ef = np.where(edv_arr > 0, (edv_arr - esv_arr) / np.where(edv_arr > 0, edv_arr, 1.0) * 100.0, np.nan)
    return float(ef) if ef.ndim == 0 else ef


def lv_mass_g(myo_volume_ml: float | np.ndarray, density: float = MYOCARDIUM_DENSITY_G_PER_ML) -> float | np.ndarray:
    """LV myocardial mass in g from the myocardial volume (usually at ED) and tissue density in g/ml."""
    mass = np.asarray(myo_volume_ml, dtype=np.float64) * density
    return float(mass) if mass.ndim == 0 else mass


def ef_category(ef: float | np.ndarray) -> int | np.ndarray:
    """EF band: 0 reduced (<= 40 %), 1 borderline (40-55 %], 2 normal (> 55 %), as in the reference evaluation."""
    ef_arr = np.asarray(ef, dtype=np.float64)
    if np.any(np.isnan(ef_arr)):
        raise ValueError("EF category is undefined for NaN EF")
    category = np.where(ef_arr <= REDUCED_EF_MAX, 0, np.where(ef_arr <= NORMAL_EF_MIN, 1, 2))
    return int(category) if category.ndim == 0 else category


def ventricular_function(
    ed_labels: np.ndarray,
    es_labels: np.ndarray,
    spacing_ed: Sequence[float] | np.ndarray,
    spacing_es: Sequence[float] | np.ndarray | None = None,
) -> dict[str, float]:
    """LV and RV EDV/ESV (ml), EF (%), and LV mass (g, from ED myocardium) from ED and ES label maps."""
    ed = class_volumes_ml(ed_labels, spacing_ed)
    es = class_volumes_ml(es_labels, spacing_ed if spacing_es is None else spacing_es)
    return {
        "lv_edv": ed[3],
        "lv_esv": es[3],
        "lv_ef": ejection_fraction(ed[3], es[3]),
        "rv_edv": ed[1],
        "rv_esv": es[1],
        "rv_ef": ejection_fraction(ed[1], es[1]),
        "lv_mass": lv_mass_g(ed[2]),
    }


def cardiac_case_metrics(
    pred_ed: np.ndarray,
    gt_ed: np.ndarray,
    pred_es: np.ndarray,
    gt_es: np.ndarray,
    spacing_ed: Sequence[float] | np.ndarray,
    spacing_es: Sequence[float] | np.ndarray | None = None,
) -> dict[str, float]:
    """One flat per-case row: Dice and HD95 per class at ED and ES, and function indices predicted vs true.

    Keys: ``dice_ed_lv``, ``hd95_es_rv``, ... and ``lv_ef_pred`` / ``lv_ef_true``, ``lv_mass_pred`` / ... so rows
    feed straight into :func:`cinema.metrics.agreement.bland_altman` and :mod:`cinema.metrics.subgroups`.
    """
    spacing_es = spacing_ed if spacing_es is None else spacing_es
    row: dict[str, float] = {}
    for phase, pred, gt, spacing in (("ed", pred_ed, gt_ed, spacing_ed), ("es", pred_es, gt_es, spacing_es)):
        dice = dice_per_class(pred, gt)
        hd95 = hausdorff95_mm(pred, gt, spacing)
        for label, name in ACDC_CLASSES.items():
            row[f"dice_{phase}_{name}"] = dice[label]
            row[f"hd95_{phase}_{name}"] = hd95[label]
    predicted = ventricular_function(pred_ed, pred_es, spacing_ed, spacing_es)
    reference = ventricular_function(gt_ed, gt_es, spacing_ed, spacing_es)
    for key in predicted:
        row[f"{key}_pred"] = predicted[key]
        row[f"{key}_true"] = reference[key]
    return row
