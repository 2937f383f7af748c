"""Clinical measurements from a segmented short-axis cine: volume curves, ED/ES, volumes, EF and LV mass.

Volumes are voxel counts x voxel volume (Simpson's method over the stored slices, as in the ACDC and CineMA
evaluations). ED is the frame of maximum LV cavity volume and ES the frame of minimum, unless the caller knows them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cinema.metrics import ejection_fraction, lv_mass_g, volume_curve

__all__ = [
    "CLASS_NAMES",
    "METRIC_KEYS",
    "cardiac_metrics",
    "find_ed_es",
    "label_series",
    "volume_curves",
    "volume_rates",
]

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


# E/A needs the early (E) and atrial (A) filling waves resolved as two peaks of the rate curve; the atrial wave lasts
# about 100-150 ms, so a frame interval above this many ms leaves it one or two samples and the ratio is not reported.
MAX_FRAME_INTERVAL_FOR_E_A_MS = 30.0
# a cine counts as covering the whole cycle (its last frame followed by the next beat's first) when the frames span
# the R-R interval to within this fraction of one frame interval
_CYCLE_TOLERANCE = 0.5


def _local_maxima(values: np.ndarray) -> np.ndarray:
    inner = (values[1:-1] > values[:-2]) & (values[1:-1] >= values[2:])
    return np.flatnonzero(inner) + 1


def volume_rates(
    lv_volume: Sequence[float],
    times_ms: Sequence[float] | None,
    ed: int,
    es: int,
    rr_interval_ms: float | None = None,
) -> dict[str, Any]:
    """Peak ejection and filling rates of the LV volume curve, time to peak filling and the E/A ratio.

    The rate between two consecutive frames is their volume difference over their time difference, placed at the
    interval's midpoint: the finest the frames support, with no fitted curve whose shape would set the peaks. When
    the frames span the R-R interval (``rr_interval_ms``, e.g. DICOM NominalInterval) the last frame is joined to
    the next beat's first, so that late diastolic filling is included. Peaks averaged over one frame interval
    underestimate the instantaneous peak when the interval is long compared to the wave (about 100 ms for E).

    Returns JSON-ready values: rates in ml/s and EDV/s (normalised by the ED volume), ``time_to_peak_filling_ms``
    from ES (the end-systolic frame) to the peak filling rate, ``e_a_ratio`` (peak early over peak atrial filling
    rate) or None with ``e_a_note`` saying why, and ``curve`` (midpoint times and rates) for plotting. Every value
    is None, with ``note`` saying why, without frame times or with fewer than 3 frames.
    """
    volume = np.asarray(lv_volume, dtype=np.float64)
    empty: dict[str, Any] = {
        key: None
        for key in (
            "peak_ejection_rate_ml_s",
            "peak_ejection_rate_edv_s",
            "peak_filling_rate_ml_s",
            "peak_filling_rate_edv_s",
            "time_to_peak_filling_ms",
            "e_a_ratio",
            "frame_interval_ms",
        )
    }
    empty.update({"curve": None, "cycle_closed": False, "e_a_note": "", "note": ""})
    if times_ms is None or volume.size < 3:
        why = "no frame times" if times_ms is None else f"{volume.size} frame(s) stored"
        empty["note"] = f"volume-curve rates: not available ({why}; they need the whole cine with its timing)"
        empty["e_a_note"] = "E/A: not available (no volume-curve rates)"
        return empty
    times = np.asarray(times_ms, dtype=np.float64)
    if times.shape != volume.shape or np.any(np.diff(times) <= 0):
        raise ValueError("frame times must be increasing, one per frame")
    interval = float(np.median(np.diff(times)))
    t, v = times, volume
    closed = rr_interval_ms is not None and abs(times[-1] + interval - times[0] - rr_interval_ms) <= (
        _CYCLE_TOLERANCE * interval
    )
    if closed:
        t = np.append(times, times[0] + float(rr_interval_ms))
        v = np.append(volume, volume[0])
    rate_ml_s = np.diff(v) / (np.diff(t) / 1000.0)
    middle = (t[:-1] + t[1:]) / 2
    edv = float(volume[ed])
    ejection, filling = int(np.argmin(rate_ml_s)), int(np.argmax(rate_ml_s))
    per, pfr = -float(rate_ml_s[ejection]), float(rate_ml_s[filling])
    period = float(rr_interval_ms) if closed else None
    to_peak = middle[filling] - times[es]
    if to_peak < 0 and period is not None:
        to_peak += period
    out = dict(empty)
    out.update(
        {
            "peak_ejection_rate_ml_s": round(per, 1) if per > 0 else None,
            "peak_ejection_rate_edv_s": round(per / edv, 3) if per > 0 and edv > 0 else None,
            "peak_filling_rate_ml_s": round(pfr, 1) if pfr > 0 else None,
            "peak_filling_rate_edv_s": round(pfr / edv, 3) if pfr > 0 and edv > 0 else None,
            "time_to_peak_filling_ms": round(float(to_peak), 1) if pfr > 0 and to_peak >= 0 else None,
            "frame_interval_ms": round(interval, 1),
            "cycle_closed": bool(closed),
            "curve": {"time_ms": np.round(middle, 1).tolist(), "rate_ml_s": np.round(rate_ml_s, 1).tolist()},
        }
    )
    if interval > MAX_FRAME_INTERVAL_FOR_E_A_MS:
        out["e_a_note"] = (
            f"E/A: not available (frames {interval:.0f} ms apart; resolving the atrial filling wave needs "
            f"{MAX_FRAME_INTERVAL_FOR_E_A_MS:.0f} ms or less)"
        )
        return out
    # diastole: the rate intervals after ES, up to the end of the cycle (or of the stored frames)
    diastole = np.flatnonzero(middle > times[es])
    rates = rate_ml_s[diastole]
    peaks = [int(i) for i in _local_maxima(rates) if rates[i] > 0]
    early = [i for i in peaks if rates[i] >= 0.5 * rates.max()] if rates.size else []
    late = [i for i in peaks if early and i > early[0]]
    atrial = max(late, key=lambda i: rates[i]) if late else None
    if atrial is None or rates[early[0] : atrial + 1].min() > 0.8 * rates[atrial]:
        out["e_a_note"] = (
            "E/A: not available (no separate atrial filling peak in the rate curve: the waves are fused, as at "
            "high heart rates, or the cine stops before atrial contraction)"
        )
        return out
    out["e_a_ratio"] = round(float(rates[early[0]] / rates[atrial]), 2)
    return out
