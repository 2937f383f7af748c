"""Quality control of an automatic cine analysis: plain sentences a reader can act on.

Each check looks for a failure that silently biases the reported numbers: a stack that does not cover the whole
ventricle, structures the model missed or broke apart, a myocardium that does not enclose the LV cavity, and values
outside the physiological range. Thresholds are deliberately wide (adult disease included) so a warning means
"look at this exam", not "abnormal heart".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import ndimage

from cinema.analysis.measure import CLASS_NAMES

__all__ = ["CONFIDENCE_NOT_AVAILABLE", "PLAUSIBLE_RANGES", "quality_warnings", "regional_warnings"]

PRETTY = {"lv": "LV cavity", "rv": "RV cavity", "myo": "LV myocardium"}
LABEL_OF = {name: value for value, name in CLASS_NAMES.items()}

# metric -> (low, high): outside means implausible for an adult exam (or a failed segmentation)
PLAUSIBLE_RANGES = {
    "lv_ef_pct": (5.0, 85.0),
    "rv_ef_pct": (5.0, 85.0),
    "lv_edv_ml": (30.0, 400.0),
    "rv_edv_ml": (30.0, 450.0),
    "lv_mass_g": (30.0, 350.0),
}
PRETTY_METRIC = {
    "lv_ef_pct": ("LVEF", "%"),
    "rv_ef_pct": ("RVEF", "%"),
    "lv_edv_ml": ("LVEDV", "ml"),
    "rv_edv_ml": ("RVEDV", "ml"),
    "lv_mass_g": ("LV mass", "g"),
}

# fraction of the LV cavity's outer rim allowed to touch background or RV on a slice before it counts as open
OPEN_RIM_FRACTION = 0.1
# LV area on an end slice, relative to the largest LV slice, from which the stack counts as cut short
END_SLICE_AREA = 0.25
# a second connected piece holding this fraction of a structure counts as a split (ACDC manual labels: at most 16 %,
# 99th percentile 4 %, over 80 patients x ED/ES)
SPLIT_FRACTION = 0.2
# exam mean of `heart_confidence` below which the image is flagged as unlike the training data: the shipped ensemble
# scored 0.930-0.968 per frame on the 15 held-out ACDC exams and 0.918-0.953 on the Sunnybrook (GE) exams, but
# 0.52-0.80 on gamma noise and on exams with their pixels scrambled in 8x8 blocks (benchmarks/qc_confidence.py; the
# single v3 model: 0.938-0.968, 0.939-0.953 and 0.64-0.87)
MIN_CONFIDENCE = 0.9
CONFIDENCE_NOT_AVAILABLE = "model confidence was not checked: no heart was predicted in any frame"

_IN_PLANE_CROSS = ndimage.generate_binary_structure(2, 1)


def _slices(indices: list[int]) -> str:
    """1-based slice numbers as a reader counts them."""
    numbers = [str(i + 1) for i in indices]
    return ("slice " if len(numbers) == 1 else "slices ") + ", ".join(numbers)


def _coverage(labels: np.ndarray, phase: str) -> list[str]:
    n_slices = labels.shape[2]
    area = (labels == LABEL_OF["lv"]).sum(axis=(0, 1))
    if n_slices < 2 or area.max() == 0:
        return []
    # a small apical cap on an end slice hides little volume; a large cavity there means the stack stops too early
    ends = [
        where for index, where in ((0, "first"), (n_slices - 1, "last")) if area[index] >= END_SLICE_AREA * area.max()
    ]
    if not ends:
        return []
    where = " and ".join(ends)
    return [
        f"The LV cavity is still large on the {where} slice of the stack at {phase}: the stack may not cover the "
        "whole ventricle (base or apex cut off), so LV volumes may be underestimated."
    ]


def _missing_and_split(labels: np.ndarray, phase: str) -> list[str]:
    warnings = []
    for name, value in LABEL_OF.items():
        mask = labels == value
        if not mask.any():
            warnings.append(f"No {PRETTY[name]} was found at {phase}: its measurements are unusable.")
            continue
        parts, n_parts = ndimage.label(mask)
        sizes = np.sort(np.bincount(parts.ravel())[1:])[::-1]
        # manual contours on 8-10 mm slices also break into islands; only a sizeable second piece is suspicious
        if n_parts > 1 and sizes[1] >= SPLIT_FRACTION * sizes.sum():
            warnings.append(
                f"The {PRETTY[name]} is split into disconnected parts at {phase} (the second largest holds "
                f"{100 * sizes[1] / sizes.sum():.0f} % of it): check the segmentation."
            )
        present = np.flatnonzero(mask.any(axis=(0, 1)))
        gaps = [int(z) for z in range(present[0], present[-1] + 1) if z not in set(present.tolist())]
        if gaps:
            warnings.append(
                f"The {PRETTY[name]} is missing on {_slices(gaps)} at {phase} although it is present on slices above "
                "and below: the volume misses that slab."
            )
    return warnings


def _open_myocardium(labels: np.ndarray, phase: str) -> list[str]:
    lv_value, myo_value = LABEL_OF["lv"], LABEL_OF["myo"]
    open_slices = []
    for z in range(labels.shape[2]):
        plane = labels[:, :, z]
        # holes in the cavity (papillary muscles left unlabelled) are inside the LV, not a gap in its wall
        cavity = ndimage.binary_fill_holes(plane == lv_value)
        if not cavity.any():
            continue
        rim = ndimage.binary_dilation(cavity, _IN_PLANE_CROSS) & ~cavity
        outside = rim & (plane != myo_value)
        if outside.sum() >= 3 and outside.sum() > OPEN_RIM_FRACTION * rim.sum():
            open_slices.append(z)
    if not open_slices:
        return []
    return [
        f"At {phase} the myocardium does not close around the LV cavity on {_slices(open_slices)} (the cavity touches "
        "background or the RV): expected at the most basal slice near the outflow tract, otherwise check the "
        "segmentation there."
    ]


def _implausible(metrics: Mapping[str, object]) -> list[str]:
    warnings = []
    for key, (low, high) in PLAUSIBLE_RANGES.items():
        value = metrics.get(key)
        if value is None:
            continue
        name, unit = PRETTY_METRIC[key]
        if not low <= float(value) <= high:
            warnings.append(
                f"{name} {float(value):.1f} {unit} is outside the plausible range {low:g}-{high:g} {unit}: check the "
                "segmentation and the ED/ES frames."
            )
    for side in ("lv", "rv"):
        edv, esv = metrics.get(f"{side}_edv_ml"), metrics.get(f"{side}_esv_ml")
        if edv is not None and esv is not None and float(esv) > float(edv):
            warnings.append(
                f"{side.upper()}ESV ({float(esv):.1f} ml) is larger than {side.upper()}EDV ({float(edv):.1f} ml): "
                "ED and ES are probably swapped or wrong."
            )
    return warnings


def quality_warnings(
    series: np.ndarray,
    ed: int,
    es: int,
    metrics: Mapping[str, object],
    confidence: float | None = None,
) -> list[str]:
    """Plain-sentence QC warnings for an analysis; empty when nothing looks wrong.

    Args:
        series: (X, Y, Z, T) uint8 labels (1 RV, 2 MYO, 3 LV) on the native grid.
        ed, es: 0-based frames of end-diastole and end-systole.
        metrics: `cardiac_metrics` output.
        confidence: mean max softmax probability inside the heart, when the segmenter exposes probabilities.
    """
    series = np.asarray(series)
    if series.ndim != 4:
        raise ValueError(f"QC needs an (X, Y, Z, T) label series, got shape {series.shape}")
    warnings: list[str] = []
    phases = [(f"ED (frame {ed})", ed)] + ([(f"ES (frame {es})", es)] if es != ed else [])
    warnings += _coverage(series[..., ed], phases[0][0])
    for phase, frame in phases:
        warnings += _missing_and_split(series[..., frame], phase)
    for phase, frame in phases:
        warnings += _open_myocardium(series[..., frame], phase)
    no_lv = [f for f in range(series.shape[3]) if not (series[..., f] == LABEL_OF["lv"]).any()]
    if no_lv and len(no_lv) < series.shape[3]:
        frames = ", ".join(str(f) for f in no_lv)
        warnings.append(f"No LV cavity was found in frame(s) {frames}: the volume curve has holes there.")
    if series.shape[3] == 1 or ed == es:
        warnings.append("Only one cardiac phase is available: stroke volumes and ejection fractions are undefined.")
    warnings += _implausible(metrics)
    if confidence is not None and confidence < MIN_CONFIDENCE:
        warnings.append(
            f"Low model confidence: the mean top class probability in the heart is {confidence:.2f} "
            f"(below {MIN_CONFIDENCE:.2f}); the image may be unlike the training data."
        )
    return warnings


def regional_warnings(regional: Mapping[str, Any]) -> list[str]:
    """Plain-sentence QC warnings for the ``regional`` object of an analysis (`cinema.analysis.regional`): unsure
    RV insertion points, an AHA level without a slice, and a long-axis direction at odds with the scanner's."""
    warnings: list[str] = []
    levels = regional.get("levels") or {}
    if not any(levels.values()):
        return ["No slice has an LV cavity surrounded by myocardium at ED: no regional measurements."]
    empty = [name for name in ("basal", "mid", "apical") if not levels.get(name)]
    if empty:
        warnings.append(
            f"No slice falls in the {' or '.join(empty)} third of the LV at ED: the AHA segments of that level are "
            "not measured (too few slices cover the ventricle)."
        )
    # The RV does not reach the apex, so apical slices without insertion points are normal anatomy and take the
    # septum of the other slices; at ES a slice without them keeps its ED septum. What deserves a look is a mid
    # slice without them (the RV always borders the mid septum) or a basal or mid level where no slice has them.
    ed_points = (regional.get("insertion_points") or {}).get("ed") or {}
    unsure = {int(u["slice"]): str(u["reason"]).split(";")[0] for u in ed_points.get("unsure_slices") or []}
    mid = [z for z in levels.get("mid") or [] if z in unsure]
    if mid:
        reasons = "; ".join(sorted({unsure[z] for z in mid}))
        warnings.append(
            f"RV insertion points are unsure at ED on mid-ventricular {_slices([z - 1 for z in mid])} ({reasons}): "
            "the septum direction of the other slices was used there; check the segment positions."
        )
    for level in ("basal", "mid"):
        numbers = levels.get(level) or []
        if numbers and all(z in unsure for z in numbers):
            warnings.append(
                f"No {level} slice has RV insertion points at ED: the {level} segments are placed by the septum "
                "direction of other slices (or of the RV centroid); check their positions."
            )
    orientation = regional.get("orientation") or {}
    if orientation.get("apex_direction_agrees_with_anatomy") is False:
        warnings.append(
            "The apex found from the segmentation (the end where the LV narrows) points away from the patient's "
            "left-anterior-inferior side in the scanner geometry: base and apex, and so the AHA levels, may be swapped."
        )
    if orientation.get("apex_end_guessed"):
        warnings.append(
            "The LV does not narrow towards either end of the stack: the apex was assumed at the high slice numbers, "
            "so the basal and apical AHA levels may be swapped."
        )
    return warnings
