"""Clinical measurements from a segmented short-axis cine: volume curves, ED/ES, volumes, EF and LV mass.

Volumes are voxel counts x voxel volume (Simpson's method over the stored slices, as in the ACDC and CineMA
evaluations). ED is the frame of maximum LV cavity volume and ES the frame of minimum, unless the caller knows them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from cinema.metrics import ejection_fraction, lv_mass_g, volume_curve

__all__ = ["CLASS_NAMES", "METRIC_KEYS", "cardiac_metrics", "find_ed_es", "label_series", "volume_curves"]

# label value -> structure name (0 background, 1 RV, 2 MYO, 3 LV, the ACDC convention)
CLASS_NAMES = {1: "rv", 2: "myo", 3: "lv"}

# keys every metrics.json carries (more may follow)
METRIC_KEYS = (
    "lv_edv_ml",
    "lv_esv_ml",
    "lv_sv_ml",
    "lv_ef_pct",
    "rv_edv_ml",
    "rv_esv_ml",
    "rv_sv_ml",
    "rv_ef_pct",
    "lv_mass_g",
    "ed_frame",
    "es_frame",
    "qc_warnings",
)


def label_series(labels: Mapping[int, np.ndarray], n_frames: int) -> np.ndarray:
    """Stack per-frame label maps {frame: (X, Y, Z)} into (X, Y, Z, T); every frame 0..n_frames-1 must be present."""
    missing = [f for f in range(n_frames) if f not in labels]
    if missing:
        raise ValueError(f"labels are missing for frames {missing}")
    return np.stack([np.asarray(labels[f], dtype=np.uint8) for f in range(n_frames)], axis=-1)


def volume_curves(series: np.ndarray, spacing: Sequence[float]) -> dict[str, np.ndarray]:
    """Volume (ml) of each structure per frame of an (X, Y, Z, T) label series: {"lv": (T,), "rv": ..., "myo": ...}."""
    table = volume_curve(series, spacing, classes=tuple(CLASS_NAMES), time_axis=-1)
    return {name: table[:, i] for i, name in enumerate(CLASS_NAMES.values())}


def find_ed_es(lv_volume: Sequence[float], ed: int | None = None, es: int | None = None) -> tuple[int, int]:
    """ED = frame of maximum LV volume and ES = frame of minimum, each unless given; both 0-based frame indices.

    Ties go to the earliest frame. ES is searched among frames other than ED so that a cine with a flat curve (e.g.
    no LV found) still gets two distinct frames when it has two.
    """
    curve = np.asarray(lv_volume, dtype=np.float64)
    n_frames = curve.size
    if n_frames == 0:
        raise ValueError("no frames to choose ED and ES from")
    for name, frame in (("ED", ed), ("ES", es)):
        if frame is not None and not 0 <= frame < n_frames:
            raise ValueError(f"{name} frame {frame} is outside the {n_frames} frames (0-based, 0..{n_frames - 1})")
    if ed is None:
        ed = int(np.argmax(curve)) if es is None or n_frames == 1 else int(np.argmax(_without(curve, es, -np.inf)))
    if es is None:
        es = ed if n_frames == 1 else int(np.argmin(_without(curve, ed, np.inf)))
    return int(ed), int(es)


def _without(curve: np.ndarray, frame: int, fill: float) -> np.ndarray:
    out = curve.copy()
    out[frame] = fill
    return out


def _number(value: float) -> float | None:
    """A finite float rounded for reports, or None (JSON null) for an undefined value."""
    value = float(value)
    return round(value, 3) if np.isfinite(value) else None


def cardiac_metrics(curves: Mapping[str, np.ndarray], ed: int, es: int) -> dict[str, float | int | None]:
    """LV/RV EDV, ESV, SV (ml), EF (%), LV mass at ED (g, 1.05 g/ml) and the ED/ES frames, from `volume_curves`.

    Undefined values (EF of an empty ventricle) are None.
    """
    lv, rv, myo = (np.asarray(curves[k], dtype=np.float64) for k in ("lv", "rv", "myo"))
    metrics: dict[str, float | int | None] = {}
    for name, curve in (("lv", lv), ("rv", rv)):
        edv, esv = float(curve[ed]), float(curve[es])
        metrics[f"{name}_edv_ml"] = _number(edv)
        metrics[f"{name}_esv_ml"] = _number(esv)
        metrics[f"{name}_sv_ml"] = _number(edv - esv) if ed != es else None
        metrics[f"{name}_ef_pct"] = _number(ejection_fraction(edv, esv)) if ed != es else None
    metrics["lv_mass_g"] = _number(lv_mass_g(float(myo[ed])))
    metrics["ed_frame"] = int(ed)
    metrics["es_frame"] = int(es)
    return metrics
