"""`cinema analyze`: one exam in, clinical measurements, quality control and a report out.

Pipeline: segment every stored SAX frame (`cinema.analysis.segment`) -> volume curves -> ED/ES -> LV/RV volumes,
EF and LV mass (`cinema.analysis.measure`) -> regional measurements (AHA-segment wall thickness, thickening and
contour strain from `cinema.analysis.regional`, volume-curve filling and ejection rates) -> QC sentences
(`cinema.analysis.qc`) -> an output folder written atomically (built beside OUT, renamed into place only when
complete):

- ``seg_sax.nii.gz``: uint8 labels (1 RV, 2 MYO, 3 LV) with the input's exact shape and affine (3-D for a 3-D NIfTI);
- ``volumes.csv``: one row per stored frame;
- ``metrics.json``: `METRIC_KEYS` plus extras, the regional ones in one nested ``regional`` object;
- ``report.html``: self-contained (embedded pictures), no patient-identifying fields;
- ``cine_overlay.gif``: the mid-ventricular slice over time.

Disease probabilities (ACDC groups) come from the shipped feature classifier (`cinema.analysis.disease`) applied
to the ED/ES segmentations; mitral-valve landmarks, LV length and MAPSE (`cinema.analysis.landmarks`) are computed
when the exam has a long-axis view and landmark weights are given (none ship: no landmark labels to train on).

An exam with long-axis cines only (or a long-axis NIfTI named with ``--view lax_4c``, or any exam with ``--view``
naming one of its LAX views) gets the long-axis analysis instead (`analyze_lax_study`), with a LAX segmentation
model (``--lax-weights``; the official ``finetuned/segmentation/mnms2_lax_4c`` checkpoint; none ships): every frame
of that view segmented on its own grid, per-frame RV, MYO and LV areas (mm^2) in the imaging plane, ED/ES from the
LV area curve (max / min) unless given, LV and RV fractional area change (FAC = (EDA - ESA) / EDA), and, with
landmark weights, MAPSE. The official LAX 4C model has no left-atrial class, so no LA area is reported. Its output
folder holds ``seg_<view>.nii.gz`` (the input's exact shape and affine), ``areas.csv``, ``metrics.json`` (with
every `METRIC_KEYS` key, the volume ones null), ``report.html`` and ``cine_overlay.gif``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cinema.analysis.measure import (
    CLASS_NAMES,
    METRIC_KEYS,
    cardiac_metrics,
    find_ed_es,
    label_series,
    volume_curves,
    volume_rates,
)
from cinema.analysis.qc import CONFIDENCE_NOT_AVAILABLE, MIN_CONFIDENCE, quality_warnings, regional_warnings
from cinema.analysis.regional import regional_analysis
from cinema.io.errors import InputError
from cinema.io.study import LAX_VIEWS, SAX, Study

logger = logging.getLogger(__name__)

__all__ = [
    "OUTPUT_FILES",
    "Analysis",
    "analyze_lax_study",
    "analyze_path",
    "analyze_study",
    "disease_probabilities",
    "example_study_path",
    "mitral_valve_landmarks",
    "regional_measurements",
    "write_analysis",
]

OUTPUT_FILES = ("seg_sax.nii.gz", "volumes.csv", "metrics.json", "report.html", "cine_overlay.gif")
# a long-axis analysis writes seg_<view>.nii.gz and areas.csv in place of the first two
LAX_OUTPUT_FILES = ("seg_{view}.nii.gz", "areas.csv", "metrics.json", "report.html", "cine_overlay.gif")
LA_NOT_AVAILABLE = (
    "left atrial area: not available (the long-axis segmentation model predicts RV, myocardium and LV, "
    "as the official LAX 4C model does, no atrium)"
)
EXAMPLE_NAME = "sunnybrook_scd0000301"


def example_study_path() -> Path:
    """The small real exam shipped inside the package (Sunnybrook SCD0000301, CC0; see its LICENSE.txt)."""
    folder = Path(__file__).resolve().parents[1] / "examples" / EXAMPLE_NAME
    if not (folder / "study.json").is_file():
        raise FileNotFoundError(f"the bundled example exam is missing from {folder} (reinstall the package)")
    return folder


# -------------------------------------------------------------------------------------------------------------------
# Hooks for analyses whose models do not ship yet: each returns (result or None, a sentence saying why not)
# -------------------------------------------------------------------------------------------------------------------


def disease_probabilities(
    series: np.ndarray, ed: int, es: int, spacing: Sequence[float], classifier: Any | None = None
) -> tuple[dict[str, float] | None, dict[str, float] | None, str]:
    """ACDC group probabilities (DCM, HCM, MINF, NOR, RV) from the ED and ES segmentations, the features they came
    from, and a sentence when they are not available (one phase only, or no classifier installed).

    ``classifier``: a `cinema.analysis.disease.DiseaseClassifier`; None loads the shipped one.
    """
    from cinema.analysis.disease import disease_features, load_disease_classifier

    if ed == es:
        return None, None, "disease probabilities: not available (they need distinct ED and ES frames)"
    if classifier is None:
        try:
            classifier = load_disease_classifier()
        except FileNotFoundError:  # the message would name install paths, which a report should not show
            return None, None, "disease probabilities: not available (no disease classifier is installed)"
    features = disease_features(series[..., ed], series[..., es], spacing)
    probabilities = {k: round(v, 4) for k, v in classifier.probabilities(features).items()}
    return probabilities, {k: (round(v, 4) if np.isfinite(v) else None) for k, v in features.items()}, ""


def mitral_valve_landmarks(study: Study, landmark_model: Any | None = None) -> tuple[dict[str, Any] | None, str]:
    """Mitral-valve hinge points and apex on every frame of a long-axis view, LV length, MAPSE (mm) and
    longitudinal shortening; with a sentence saying why not when the exam has no such view or no model is given.

    ``landmark_model``: from `cinema.analysis.landmarks.load_landmark_model` (``cinema analyze --landmark-weights``).
    """
    lax = [name for name in LAX_VIEWS if name in study.views]
    if not lax:
        return None, "mitral valve landmarks and MAPSE: not available (the exam has no long-axis views)"
    if landmark_model is None:
        return None, "mitral valve landmarks and MAPSE: not available (no landmark weights given: --landmark-weights)"
    if landmark_model.view not in study.views:
        return None, (
            f"mitral valve landmarks and MAPSE: not available (the landmark model reads {landmark_model.view}; "
            f"the exam has {', '.join(lax)})"
        )
    from cinema.analysis.landmarks import lax_function, predict_landmarks

    result = predict_landmarks(study, landmark_model)
    summary = lax_function(result.world)
    summary["view"] = result.view
    summary["points_voxel_xy"] = np.round(result.voxel, 2).tolist()  # [frame][hinge 1, hinge 2, apex][x, y]
    return summary, ""


def regional_measurements(
    series: np.ndarray, ed: int, es: int, view: Any, lv_curve: np.ndarray, rr_interval_ms: float | None = None
) -> dict[str, Any]:
    """The ``regional`` object of metrics.json: AHA-segment wall thickness, thickening and contour strain
    (`cinema.analysis.regional`), the LV volume-curve rates (`cinema.analysis.measure.volume_rates`) and a
    ``summary`` of a few scalars for cohort tables.

    Args:
        series: (X, Y, Z, T) labels; ed, es: stored-frame indices; view: the SAX `CineView` (affine, frame times);
        lv_curve: (T,) LV cavity volume (ml); rr_interval_ms: the R-R interval when the input records it.
    """
    regional = regional_analysis(series[..., ed], series[..., es] if es != ed else None, view.affine)
    times = view.frame_times_ms if view.n_frames > 1 else None
    regional["volume_rates"] = volume_rates(lv_curve, times, ed, es, rr_interval_ms=rr_interval_ms)
    ed_max = [s["ed"]["thickness_max_mm"] for s in regional["segments"] if s["ed"]["thickness_max_mm"] is not None]
    rates, overall = regional["volume_rates"], regional["global"]
    regional["summary"] = {
        "ed_wall_thickness_mean_mm": overall["ed_thickness_mean_mm"],
        "ed_wall_thickness_max_mm": max(ed_max) if ed_max else None,
        "radial_strain_pct": overall["radial_strain_pct"],
        "circumferential_strain_pct": overall["circumferential_strain_pct"],
        "peak_ejection_rate_ml_s": rates["peak_ejection_rate_ml_s"],
        "peak_filling_rate_ml_s": rates["peak_filling_rate_ml_s"],
        "peak_filling_rate_edv_s": rates["peak_filling_rate_edv_s"],
        "time_to_peak_filling_ms": rates["time_to_peak_filling_ms"],
        "e_a_ratio": rates["e_a_ratio"],
    }
    return regional


# -------------------------------------------------------------------------------------------------------------------
# The pipeline
# -------------------------------------------------------------------------------------------------------------------


@dataclass
class Analysis:
    """The result of `analyze_study`.

    Attributes:
        study: the analysed exam.
        labels: (X, Y, Z, T) uint8 labels on the SAX grid, one per stored frame; (X, Y, T) on the grid of the
            long-axis view for a long-axis analysis.
        curves: {"lv", "rv", "myo"} -> (T,) volumes in ml (SAX) or areas in mm^2 (long axis).
        metrics: `METRIC_KEYS` plus extras, JSON-ready (None for undefined values).
        notes: sentences about what was not checked or not available.
        view: the analysed view: ``sax``, or a long-axis view (``lax_4c`` ...).
    """

    study: Study
    labels: np.ndarray
    curves: dict[str, np.ndarray]
    metrics: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    view: str = SAX

    @property
    def is_sax(self) -> bool:
        return self.view == SAX


def _segment_all_frames(
    study: Study, predictor: Any, progress: bool, confidence: dict[int, float]
) -> dict[int, np.ndarray]:
    """Every frame through the predictor, with a progress bar; fills ``confidence`` (frame -> mean top-class
    probability in the heart)."""
    from tqdm.auto import tqdm

    n_frames = study.view(SAX).n_frames
    with tqdm(total=n_frames, desc="segmenting", unit="frame", disable=not progress, leave=False) as bar:
        return predictor.segment_study(study, confidence=confidence, progress=bar.update)


def _ed_es(study: Study, lv_curve: np.ndarray, ed: int | None, es: int | None) -> tuple[int, int, str]:
    """ED/ES given by the caller, else known from the input, else from the LV volume curve; and their source."""
    sources = []
    chosen = []
    for name, given, known in (("ED", ed, study.ed_frame), ("ES", es, study.es_frame)):
        if given is not None:
            chosen.append(int(given))
            sources.append(f"{name} given")
        elif known is not None:
            chosen.append(int(known))
            sources.append(f"{name} from the input")
        else:
            chosen.append(None)
            sources.append(f"{name} from the LV volume curve")
    ed_frame, es_frame = find_ed_es(lv_curve, chosen[0], chosen[1])
    return ed_frame, es_frame, ", ".join(sources)


def input_summary(study: Study, model_name: str, ed_es_source: str) -> list[tuple[str, str]]:
    """Non-identifying facts about the input for the report (a whitelist: no names, IDs, dates or paths)."""
    view = study.view(SAX)
    metadata = study.metadata or {}
    x, y, z = view.spatial_shape
    sx, sy, sz = view.spacing
    rows = [
        ("Input format", str(metadata.get("source_format", "unknown"))),
        ("Views", ", ".join(study.view_names)),
        ("SAX grid", f"{x} x {y} voxels x {z} slices, {view.n_frames} stored frame(s)"),
        ("SAX voxel size", f"{sx:.2f} x {sy:.2f} mm in plane, {sz:.2f} mm between slices"),
    ]
    if view.frame_indices is not None:
        rows.append(("Stored acquisition frames (0-based)", ", ".join(str(i) for i in view.frame_indices)))
    if view.frame_times_ms is not None and view.n_frames > 1:
        times = view.frame_times_ms
        step = float(np.median(np.diff(times)))
        rows.append(("Frame times", f"{times[0]:.0f}-{times[-1]:.0f} ms after the R wave, about {step:.0f} ms apart"))
    scanner = metadata.get("scanner") or {}
    if isinstance(scanner, Mapping):
        kit = " ".join(str(scanner[k]) for k in ("manufacturer", "model") if scanner.get(k))
        if scanner.get("field_strength_t"):
            kit += f", {scanner['field_strength_t']} T"
        if kit:
            rows.append(("Scanner", kit))
        if scanner.get("heart_rate_bpm"):
            rows.append(("Heart rate", f"{scanner['heart_rate_bpm']} bpm"))
    rows.append(("ED/ES frames from", ed_es_source))
    rows.append(("Segmentation model", model_name))
    for warning in metadata.get("warnings") or []:
        rows.append(("Input warning", str(warning)))
    if metadata.get("licence"):
        rows.append(("Data licence", str(metadata["licence"])))
    return rows


def analyze_study(
    study: Study,
    model: Any,
    *,
    ed: int | None = None,
    es: int | None = None,
    batch_size: int = 32,
    amp: bool | None = None,
    progress: bool = False,
    classifier: Any | None = None,
    landmark_model: Any | None = None,
) -> Analysis:
    """Segment every SAX frame of `study` and measure it.

    Args:
        study: the exam (read with `cinema.io.read_study`).
        model: a `cinema.analysis.segment.SegmentationPredictor` (its options are used as they are), or a model from
            `load_segmentation_model` (then run with `batch_size` and `amp`).
        ed, es: 0-based stored-frame indices of end-diastole / end-systole; None takes them from the input (ACDC
            Info.cfg, study.json) or else from the LV volume curve (max / min).
        batch_size: slices (2-D model) or frames (3-D model) per forward pass, for a bare model.
        amp: bf16 autocast, for a bare model (None: bf16 on CPUs that compute it natively; `InferenceOptions`).
        progress: show a progress bar.
        classifier: disease classifier (`cinema.analysis.disease`); None uses the shipped one.
        landmark_model: LAX landmark model (`cinema.analysis.landmarks`); None skips landmarks and MAPSE.
    """
    import torch

    from cinema.analysis.segment import InferenceOptions, SegmentationPredictor

    predictor = model
    if not isinstance(model, SegmentationPredictor):
        predictor = SegmentationPredictor(model, InferenceOptions(batch_size=batch_size, amp=amp))
    view = study.view(SAX)
    confidence: dict[int, float] = {}
    with torch.no_grad():
        per_frame = _segment_all_frames(study, predictor, progress, confidence)
    series = label_series(per_frame, view.n_frames)
    curves = volume_curves(series, view.spacing)
    ed, es, source = _ed_es(study, curves["lv"], ed, es)
    metrics: dict[str, Any] = cardiac_metrics(curves, ed, es)
    scores = [v for v in confidence.values() if np.isfinite(v)]
    heart_confidence = float(np.mean(scores)) if scores else None
    metrics["qc_warnings"] = quality_warnings(series, ed, es, metrics, confidence=heart_confidence)
    scanner = (study.metadata or {}).get("scanner") or {}
    rr = scanner.get("rr_interval_ms") if isinstance(scanner, Mapping) else None
    rr = float(rr) if isinstance(rr, int | float) and not isinstance(rr, bool) and rr > 0 else None
    regional = regional_measurements(series, ed, es, view, curves["lv"], rr_interval_ms=rr)
    metrics["qc_warnings"] += regional_warnings(regional)
    notes = [] if heart_confidence is not None else [CONFIDENCE_NOT_AVAILABLE]
    notes += [n for n in (regional["volume_rates"]["note"], regional["volume_rates"]["e_a_note"]) if n]
    disease, features, disease_note = disease_probabilities(series, ed, es, view.spacing, classifier)
    landmarks, landmark_note = mitral_valve_landmarks(study, landmark_model)
    notes += [n for n, value in ((disease_note, disease), (landmark_note, landmarks)) if value is None]
    gls = None if landmarks is None else landmarks.get("global_longitudinal_strain_pct")
    regional["global"]["longitudinal_strain_pct"] = regional["summary"]["longitudinal_strain_pct"] = gls
    model_name = Path(str(getattr(predictor.model, "source", "") or "model")).name
    times = view.frame_times_ms
    metrics.update(
        {
            "ed_es_source": source,
            "ed_time_ms": None if times is None else round(times[ed], 1),
            "es_time_ms": None if times is None else round(times[es], 1),
            "lv_myo_ed_ml": round(float(curves["myo"][ed]), 3),
            "model_confidence": None if heart_confidence is None else round(heart_confidence, 4),
            "disease_probabilities": disease,
            "disease_prediction": None if disease is None else max(disease, key=disease.get),
            "disease_features": features,
            "mitral_valve_landmarks": landmarks,
            "mapse_mm": None if landmarks is None else landmarks["mapse_mm"],
            "regional": regional,
            "qc_not_checked": [CONFIDENCE_NOT_AVAILABLE] if heart_confidence is None else [],
            "model": model_name,
            "precision": predictor.precision,
            "engine": predictor.engine,
            "n_frames": view.n_frames,
        }
    )
    if view.frame_indices is not None:
        metrics["ed_acquisition_frame"] = view.frame_indices[ed]
        metrics["es_acquisition_frame"] = view.frame_indices[es]
    return Analysis(study=study, labels=series, curves=curves, metrics=metrics, notes=notes)


def _lax_ed_es(study: Study, view: str, lv_area: np.ndarray, ed: int | None, es: int | None) -> tuple[int, int, str]:
    """ED/ES of a long-axis analysis: given, else from the input when its frames are this view's (an exam without a
    SAX cine: `Study` indexes ED/ES on its first view), else from the LV area curve (max / min)."""
    own_clock = SAX not in study.views and study.view_names[0] == view
    sources, chosen = [], []
    for name, given, known in (("ED", ed, study.ed_frame), ("ES", es, study.es_frame)):
        if given is not None:
            chosen.append(int(given))
            sources.append(f"{name} given")
        elif known is not None and own_clock:
            chosen.append(int(known))
            sources.append(f"{name} from the input")
        else:
            chosen.append(None)
            sources.append(f"{name} from the LV area curve")
    ed_frame, es_frame = find_ed_es(lv_area, chosen[0], chosen[1])
    return ed_frame, es_frame, ", ".join(sources)


def _fractional_change(curve: np.ndarray, ed: int, es: int) -> float | None:
    """(ED - ES) / ED in %, None when undefined (no structure at ED, or one frame)."""
    at_ed, at_es = float(curve[ed]), float(curve[es])
    return round((at_ed - at_es) / at_ed * 100.0, 2) if at_ed > 0 and ed != es else None


def _lax_quality_warnings(series: np.ndarray, curves: Mapping[str, np.ndarray], confidence: float | None) -> list[str]:
    """What to look at before trusting long-axis numbers: frames without LV, a low model confidence."""
    warnings = []
    empty = [int(t) for t in np.flatnonzero(curves["lv"] <= 0)]
    if empty:
        shown = ", ".join(str(t) for t in empty[:10]) + (" ..." if len(empty) > 10 else "")
        warnings.append(f"no LV cavity segmented in {len(empty)} of {series.shape[-1]} frame(s) ({shown})")
    if confidence is not None and confidence < MIN_CONFIDENCE:
        warnings.append(
            f"low model confidence ({confidence:.2f} < {MIN_CONFIDENCE:.2f}): the image may not be a long-axis "
            "view of the kind the model was trained on"
        )
    return warnings


def analyze_lax_study(
    study: Study,
    predictor: Any,
    *,
    view: str | None = None,
    ed: int | None = None,
    es: int | None = None,
    progress: bool = False,
    landmark_model: Any | None = None,
) -> Analysis:
    """Segment every frame of a long-axis view of `study` and measure areas in its plane (see the module notes).

    Args:
        study: the exam.
        predictor: a `cinema.analysis.segment.SegmentationPredictor` of a long-axis segmentation model.
        view: the long-axis view to analyse (default: the model's).
        ed, es: 0-based stored frames of that view; None: from the input (an exam without SAX) or the LV area curve.
        progress: show a progress bar.
        landmark_model: LAX landmark model (`cinema.analysis.landmarks`); None skips landmarks and MAPSE.
    """
    import torch
    from tqdm.auto import tqdm

    model = predictor.model
    view = view or model.view
    if view == SAX or view not in LAX_VIEWS:
        raise InputError(f"a long-axis analysis needs a long-axis view, got {view}")
    if model.view != view:
        raise InputError(
            f"{study.source or 'exam'}: the long-axis model segments {model.view} cines; the {view} cine needs a "
            f"{view} segmentation model"
        )
    cine = study.view(view)
    confidence: dict[int, float] = {}
    with torch.no_grad(), tqdm(total=cine.n_frames, desc="segmenting", unit="frame", disable=not progress) as bar:
        per_frame = predictor.segment_view(
            cine, center_mm=predictor.locate_heart(study), confidence=confidence, progress=bar.update
        )
    series = np.stack([per_frame[t] for t in range(cine.n_frames)], axis=-1)  # (X, Y, T)
    pixel_mm2 = float(cine.spacing[0] * cine.spacing[1])
    curves = {name: (series == value).sum(axis=(0, 1)) * pixel_mm2 for value, name in CLASS_NAMES.items()}
    ed, es, source = _lax_ed_es(study, view, curves["lv"], ed, es)
    scores = [v for v in confidence.values() if np.isfinite(v)]
    heart_confidence = float(np.mean(scores)) if scores else None
    landmarks, landmark_note = mitral_valve_landmarks(study, landmark_model)
    notes = [] if heart_confidence is not None else [CONFIDENCE_NOT_AVAILABLE]
    notes.append(LA_NOT_AVAILABLE)
    if landmarks is None:
        notes.append(landmark_note)
    times = cine.frame_times_ms
    metrics: dict[str, Any] = {key: None for key in METRIC_KEYS}  # the SAX volumes: null, the keys still there
    metrics.update(
        {
            "view": view,
            "ed_frame": ed,
            "es_frame": es,
            "ed_es_source": source,
            "ed_time_ms": None if times is None else round(times[ed], 1),
            "es_time_ms": None if times is None else round(times[es], 1),
            "areas_mm2": {name: [round(float(v), 2) for v in curve] for name, curve in curves.items()},
            "lv_eda_mm2": round(float(curves["lv"][ed]), 2),
            "lv_esa_mm2": round(float(curves["lv"][es]), 2),
            "lv_fac_pct": _fractional_change(curves["lv"], ed, es),
            "rv_eda_mm2": round(float(curves["rv"][ed]), 2),
            "rv_esa_mm2": round(float(curves["rv"][es]), 2),
            "rv_fac_pct": _fractional_change(curves["rv"], ed, es),
            "myo_ed_area_mm2": round(float(curves["myo"][ed]), 2),
            "la_area_mm2": None,
            "qc_warnings": _lax_quality_warnings(series, curves, heart_confidence),
            "model_confidence": None if heart_confidence is None else round(heart_confidence, 4),
            "mitral_valve_landmarks": landmarks,
            "mapse_mm": None if landmarks is None else landmarks["mapse_mm"],
            "qc_not_checked": [CONFIDENCE_NOT_AVAILABLE] if heart_confidence is None else [],
            "model": Path(str(model.source or "model")).name,
            "n_frames": cine.n_frames,
        }
    )
    if cine.frame_indices is not None:
        metrics["ed_acquisition_frame"] = cine.frame_indices[ed]
        metrics["es_acquisition_frame"] = cine.frame_indices[es]
    return Analysis(study=study, labels=series, curves=curves, metrics=metrics, notes=notes, view=view)


def areas_csv(analysis: Analysis) -> str:
    """One row per stored frame of a long-axis analysis: frame, time, LV / RV / myocardium area (mm^2), phase."""
    view = analysis.study.view(analysis.view)
    ed, es = analysis.metrics["ed_frame"], analysis.metrics["es_frame"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["frame", "time_ms", "lv_mm2", "rv_mm2", "myo_mm2", "phase"])
    for f in range(view.n_frames):
        time = "" if view.frame_times_ms is None else f"{view.frame_times_ms[f]:.1f}"
        phase = "/".join(p for p, frame in (("ED", ed), ("ES", es)) if frame == f)
        writer.writerow([f, time, *(f"{analysis.curves[k][f]:.2f}" for k in ("lv", "rv", "myo")), phase])
    return buffer.getvalue()


def _area_plot_png(curves: Mapping[str, np.ndarray], ed: int, es: int, times_ms: Sequence[float] | None) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cinema.analysis.report import COLOURS, LABEL_TEXT, _figure_png

    x = np.asarray(times_ms, dtype=float) if times_ms is not None else np.arange(len(curves["lv"]), dtype=float)
    figure, axis = plt.subplots(figsize=(7.0, 3.6))
    for name, value in (("lv", 3), ("rv", 1), ("myo", 2)):
        axis.plot(
            x, curves[name], marker="o", markersize=3, color=np.asarray(COLOURS[value]) / 255.0, label=LABEL_TEXT[value]
        )
    for frame, text in ((ed, "ED"), (es, "ES")):
        axis.axvline(x[frame], color="0.4", linestyle="--", linewidth=1)
        axis.annotate(text, (x[frame], axis.get_ylim()[1]), ha="center", va="bottom", fontsize=9)
    axis.set_xlabel("time after R wave (ms)" if times_ms is not None else "frame")
    axis.set_ylabel("area in the imaging plane (mm²)")
    axis.grid(alpha=0.3)
    axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    return _figure_png(figure)


def lax_input_summary(study: Study, view_name: str, model_name: str, ed_es_source: str) -> list[tuple[str, str]]:
    """Non-identifying facts about a long-axis input for the report (the same whitelist as `input_summary`)."""
    view = study.view(view_name)
    x, y = view.spatial_shape
    sx, sy, sz = view.spacing
    rows = [
        ("Input format", str((study.metadata or {}).get("source_format", "unknown"))),
        ("Views", ", ".join(study.view_names)),
        (f"{view_name} grid", f"{x} x {y} pixels, {view.n_frames} stored frame(s)"),
        (f"{view_name} pixel size", f"{sx:.2f} x {sy:.2f} mm, {sz:.2f} mm slice thickness"),
        ("ED/ES frames from", ed_es_source),
        ("Segmentation model", model_name),
    ]
    return rows + [("Input warning", str(w)) for w in (study.metadata or {}).get("warnings") or []]


def lax_report_html(analysis: Analysis) -> tuple[str, bytes]:
    """(report.html text, cine_overlay.gif bytes) of a long-axis analysis."""
    import html

    from cinema import __version__
    from cinema.analysis.report import (
        _CSS,
        COLOURS,
        LABEL_TEXT,
        _fmt,
        _img,
        _table,
        cine_gif_bytes,
        heart_box,
        slice_grid_png,
    )

    view = analysis.study.view(analysis.view)
    metrics = analysis.metrics
    ed, es = metrics["ed_frame"], metrics["es_frame"]
    image, labels = view.image[:, :, None, :], analysis.labels[:, :, None, :]  # one-slice stacks for the drawings
    box = heart_box(labels)
    ed_png = slice_grid_png(image[..., ed], labels[..., ed], view.spacing, box, f"ED, frame {ed}")
    es_png = slice_grid_png(image[..., es], labels[..., es], view.spacing, box, f"ES, frame {es}") if es != ed else None
    times = view.frame_times_ms if view.n_frames > 1 else None
    frame_ms = float(np.median(np.diff(times))) if times is not None else 80.0
    gif = cine_gif_bytes(image, labels, view.spacing, 0, frame_ms=frame_ms)
    name = analysis.view
    rows = [
        (f"LV end-diastolic area ({name})", _fmt(metrics["lv_eda_mm2"], "mm²")),
        (f"LV end-systolic area ({name})", _fmt(metrics["lv_esa_mm2"], "mm²")),
        ("LV fractional area change", _fmt(metrics["lv_fac_pct"], "%")),
        (f"RV end-diastolic area ({name})", _fmt(metrics["rv_eda_mm2"], "mm²")),
        (f"RV end-systolic area ({name})", _fmt(metrics["rv_esa_mm2"], "mm²")),
        ("RV fractional area change", _fmt(metrics["rv_fac_pct"], "%")),
        (f"Myocardial area at ED ({name})", _fmt(metrics["myo_ed_area_mm2"], "mm²")),
        ("ED frame (0-based)", str(ed)),
        ("ES frame (0-based)", str(es)),
    ]
    landmarks = metrics.get("mitral_valve_landmarks")
    if landmarks and metrics.get("mapse_mm") is not None:
        rows += [
            (f"MAPSE ({landmarks['view']})", _fmt(metrics["mapse_mm"], "mm")),
            (
                f"LV longitudinal shortening ({landmarks['view']})",
                _fmt(landmarks.get("longitudinal_shortening_pct"), "%"),
            ),
        ]
    metric_rows = "".join(f"<tr><th>{html.escape(k)}</th><td class=num>{html.escape(v)}</td></tr>" for k, v in rows)
    warnings = metrics.get("qc_warnings") or []
    qc = "".join(f'<div class="warn">{html.escape(w)}</div>' for w in warnings) or (
        '<div class="ok">No quality-control warnings.</div>'
    )
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in analysis.notes)
    legend = "".join(f'<span style="background:rgb{COLOURS[v]}"></span>{LABEL_TEXT[v]}' for v in (3, 2, 1))
    summary = lax_input_summary(analysis.study, name, metrics.get("model", ""), metrics.get("ed_es_source", ""))
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        "<meta name=viewport content='width=device-width,initial-scale=1'>",
        f"<title>CineMA long-axis cine analysis</title><style>{_CSS}</style></head><body>",
        f"<h1>CineMA long-axis cine analysis ({html.escape(name)})</h1>",
        f'<p class="note">cinema {html.escape(__version__)} &middot; automatic segmentation, research use only, '
        "not a medical device: review the overlays before trusting the numbers. Areas are measured in the imaging "
        "plane; no volumes are derived from one long-axis view.</p>",
        "<h2>Measurements</h2>",
        f"<table>{metric_rows}</table>",
        "<h2>Quality control</h2>",
        qc,
        f'<ul class="note">{notes}</ul>' if notes else "",
        "<h2>Area&ndash;time curves</h2>",
        _img(_area_plot_png(analysis.curves, ed, es, times), "image/png", "area-time curves"),
        f'<h2>Segmentation at ED (frame {ed})</h2><p class="legend">{legend}</p>',
        _img(ed_png, "image/png", "ED overlay"),
    ]
    if es_png is not None:
        parts += [f"<h2>Segmentation at ES (frame {es})</h2>", _img(es_png, "image/png", "ES overlay")]
    if view.n_frames > 1:
        parts += [f"<h2>Cine ({html.escape(name)})</h2>", _img(gif, "image/gif", "cine overlay")]
    parts += ["<h2>Input</h2>", _table(summary), "</body></html>"]
    return "\n".join(parts), gif


def volumes_csv(analysis: Analysis) -> str:
    """One row per stored frame: frame, time, LV / RV / myocardium volume (ml), and the ED/ES phase mark."""
    view = analysis.study.view(SAX)
    ed, es = analysis.metrics["ed_frame"], analysis.metrics["es_frame"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["frame", "time_ms", "lv_ml", "rv_ml", "myo_ml", "phase"])
    for f in range(view.n_frames):
        time = "" if view.frame_times_ms is None else f"{view.frame_times_ms[f]:.1f}"
        phase = "/".join(p for p, frame in (("ED", ed), ("ES", es)) if frame == f)
        values = [f"{analysis.curves[k][f]:.3f}" for k in ("lv", "rv", "myo")]
        writer.writerow([f, time, *values, phase])
    return buffer.getvalue()


def report_html(analysis: Analysis) -> tuple[str, bytes]:
    """(report.html text, cine_overlay.gif bytes)."""
    from cinema.analysis.report import (
        bullseye_png,
        cine_gif_bytes,
        heart_box,
        mid_ventricular_slice,
        rate_plot_png,
        render_report_html,
        slice_grid_png,
        volume_plot_png,
    )

    view = analysis.study.view(SAX)
    metrics = analysis.metrics
    ed, es = metrics["ed_frame"], metrics["es_frame"]
    box = heart_box(analysis.labels)
    ed_png = slice_grid_png(view.frame(ed), analysis.labels[..., ed], view.spacing, box, f"ED, frame {ed}")
    es_png = None
    if es != ed:
        es_png = slice_grid_png(view.frame(es), analysis.labels[..., es], view.spacing, box, f"ES, frame {es}")
    times = view.frame_times_ms if view.n_frames > 1 else None
    volume_png = volume_plot_png(analysis.curves, ed, es, times)
    frame_ms = float(np.median(np.diff(times))) if times is not None else 80.0
    gif = cine_gif_bytes(
        view.image, analysis.labels, view.spacing, mid_ventricular_slice(analysis.labels, ed), frame_ms=frame_ms
    )
    summary = input_summary(analysis.study, metrics.get("model", ""), metrics.get("ed_es_source", ""))
    regional = metrics.get("regional")
    bullseye = rate = None
    if regional and any(regional["levels"].values()):
        bullseye = bullseye_png(regional["segments"])
    if regional and regional["volume_rates"]["curve"] is not None:
        rate = rate_plot_png(regional["volume_rates"], metrics.get("es_time_ms"))
    text = render_report_html(
        metrics=metrics,
        input_summary=summary,
        volume_png=volume_png,
        ed_png=ed_png,
        es_png=es_png,
        gif=gif if view.n_frames > 1 else None,
        not_checked=[n for n in analysis.notes if "not checked" in n],
        not_available=[n for n in analysis.notes if "not checked" not in n],
        bullseye_png=bullseye,
        rate_png=rate,
    )
    return text, gif


def write_analysis(
    analysis: Analysis,
    out_dir: str | Path,
    *,
    force: bool = False,
    spatial_only: bool = False,
    inputs: Sequence[str | Path] = (),
    shape: Sequence[int] | None = None,
) -> Path:
    """Write every output into `out_dir` atomically (all files or none), by the output-safety rule of
    `cinema.io.atomic` (`force` replaces only an earlier cinema output; never one of `inputs` or a folder holding
    one).

    Args:
        spatial_only: write ``seg_sax.nii.gz`` as 3-D (the input was one 3-D NIfTI frame).
        shape: the label map's shape in the file, when it must be the input NIfTI's own (a long-axis file: (X, Y),
            (X, Y, 1) or (X, Y, 1, T)); default (X, Y, Z, T) for SAX and (X, Y, 1, T) for a long-axis view.
    """
    from cinema.io import write_label_nifti
    from cinema.io.atomic import atomic_directory

    out_dir = Path(out_dir)
    view = analysis.study.view(analysis.view)
    if analysis.is_sax:
        labels = analysis.labels[..., 0] if spatial_only else analysis.labels
        html_text, gif = report_html(analysis)
        seg_name, table_name, table = "seg_sax.nii.gz", "volumes.csv", volumes_csv(analysis)
    else:
        labels = analysis.labels[:, :, None, :]  # the single-slice axis of a long-axis cine file
        html_text, gif = lax_report_html(analysis)
        seg_name, table_name, table = f"seg_{analysis.view}.nii.gz", "areas.csv", areas_csv(analysis)
    if shape is not None:
        labels = labels.reshape(shape)  # same voxels in the same order: only the singleton axes differ
    with atomic_directory(out_dir, force=force, inputs=inputs, command="analyze") as tmp:
        write_label_nifti(labels, view.affine, tmp / seg_name, keep_2d=labels.ndim == 2)
        (tmp / table_name).write_text(table, encoding="utf-8")
        (tmp / "metrics.json").write_text(
            json.dumps(analysis.metrics, indent=2, allow_nan=False) + "\n", encoding="utf-8"
        )
        (tmp / "report.html").write_text(html_text, encoding="utf-8")
        (tmp / "cine_overlay.gif").write_bytes(gif)
    return out_dir


def analyze_path(
    source: str | Path,
    out_dir: str | Path,
    predictor: Any,
    *,
    ed: int | None = None,
    es: int | None = None,
    study_id: str | None = None,
    landmark_model: Any | None = None,
    force: bool = False,
    progress: bool = False,
    display_name: str | None = None,
    other_inputs: Sequence[str | Path] = (),
    view: str | None = None,
    lax_predictor: Any | None = None,
) -> Analysis:
    """Read an exam, analyse it and write `out_dir`: the one sequence behind ``cinema analyze`` and ``cinema serve``.

    Args:
        source: an exam as `cinema.io.read_study` takes it. A NIfTI file's view is `view`, else its file name's
            (``..._lax_4c.nii.gz``), else a stack of several slices is SAX; a single-slice file whose view is not
            named is refused (never read as a one-slice SAX stack).
        predictor: a `cinema.analysis.segment.SegmentationPredictor` of a SAX model, or a zero-argument callable
            returning one (built only when the exam's SAX cine is analysed).
        ed, es: 0-based stored frames of end-diastole / end-systole (default: from the input or the LV curve).
        study_id: the study to take from a DICOM folder holding several.
        force: replace `out_dir` if it is an earlier cinema output (`cinema.io.atomic.check_output`).
        display_name: shown for the exam in messages and the report instead of its path.
        other_inputs: further files the command read (weights): `out_dir` must not replace them either.
        view: the view to analyse (and a NIfTI's view): default SAX when the exam has it, else its long-axis view.
        lax_predictor: a `SegmentationPredictor` of a long-axis model, for the long-axis analysis.
    """
    from cinema.io import read_study
    from cinema.io.datasets import nifti_shape
    from cinema.io.read import detect_input_kind
    from cinema.io.study import view_name_for

    source = Path(source)
    kind = detect_input_kind(source)
    view = None if view is None else view_name_for(view)
    study = read_study(source, view=view if kind == "nifti" else None, study=study_id)
    if display_name is not None:
        study.source = display_name
    lax_present = [name for name in study.view_names if name != SAX]
    target = view or (SAX if SAX in study.views else lax_present[0])
    n_frames = study.view(target).n_frames  # a clear error for an exam without that view
    for flag, frame in (("--ed", ed), ("--es", es)):
        if frame is not None and not 0 <= frame < n_frames:
            raise InputError(f"{flag} {frame} is outside the {n_frames} stored frames (0-based, 0..{n_frames - 1})")
    shape = nifti_shape(source) if kind == "nifti" else None
    if target == SAX:
        sax_predictor = predictor() if callable(predictor) else predictor
        analysis = analyze_study(study, sax_predictor, ed=ed, es=es, progress=progress, landmark_model=landmark_model)
        spatial_only = shape is not None and len(shape) == 3
        write_analysis(analysis, out_dir, force=force, spatial_only=spatial_only, inputs=[source, *other_inputs])
        return analysis
    if lax_predictor is None:
        raise InputError(
            f"{study.source or source}: the {target} cine needs a long-axis segmentation model: give one with "
            "--lax-weights (e.g. the official CineMA finetuned/segmentation/mnms2_lax_4c folder); the shipped model "
            "segments short-axis cines only"
        )
    analysis = analyze_lax_study(
        study, lax_predictor, view=target, ed=ed, es=es, progress=progress, landmark_model=landmark_model
    )
    write_analysis(analysis, out_dir, force=force, inputs=[source, *other_inputs], shape=shape)
    return analysis


def summary_lines(metrics: Mapping[str, Any]) -> list[str]:
    """A few console lines with the headline numbers and the QC warnings."""

    def fmt_value(value: float | None, unit: str) -> str:
        return "n/a" if value is None else f"{value:.1f} {unit}"

    def fmt(key: str, unit: str) -> str:
        return fmt_value(metrics.get(key), unit)

    if metrics.get("view", SAX) != SAX:
        return _lax_summary_lines(metrics, fmt)
    lines = [
        f"ED frame {metrics['ed_frame']}, ES frame {metrics['es_frame']} ({metrics.get('ed_es_source', '')})",
        f"LV: EDV {fmt('lv_edv_ml', 'ml')}, ESV {fmt('lv_esv_ml', 'ml')}, SV {fmt('lv_sv_ml', 'ml')}, "
        f"EF {fmt('lv_ef_pct', '%')}, mass {fmt('lv_mass_g', 'g')}",
        f"RV: EDV {fmt('rv_edv_ml', 'ml')}, ESV {fmt('rv_esv_ml', 'ml')}, SV {fmt('rv_sv_ml', 'ml')}, "
        f"EF {fmt('rv_ef_pct', '%')}",
    ]
    warnings: Sequence[str] = metrics.get("qc_warnings", [])
    if metrics.get("mapse_mm") is not None:
        lines.append(f"MAPSE {metrics['mapse_mm']:.1f} mm ({metrics['mitral_valve_landmarks']['view']})")
    summary = (metrics.get("regional") or {}).get("summary") or {}
    if summary.get("ed_wall_thickness_mean_mm") is not None:
        lines.append(
            f"Regional: ED wall {summary['ed_wall_thickness_mean_mm']:.1f} mm (AHA bullseye in the report), "
            f"thickening {fmt_value(summary.get('radial_strain_pct'), '%')}, "
            f"circumferential strain {fmt_value(summary.get('circumferential_strain_pct'), '%')}, "
            f"peak filling rate {fmt_value(summary.get('peak_filling_rate_ml_s'), 'ml/s')}"
        )
    probabilities = metrics.get("disease_probabilities")
    if probabilities:
        best = metrics["disease_prediction"]
        lines.append(f"Disease group (ACDC categories, research aid): {best} {100 * probabilities[best]:.1f} %")
    lines += [f"QC: {w}" for w in warnings] or ["QC: no warnings"]
    return lines


def _lax_summary_lines(metrics: Mapping[str, Any], fmt: Any) -> list[str]:
    view = metrics["view"]
    lines = [
        f"{view}: ED frame {metrics['ed_frame']}, ES frame {metrics['es_frame']} ({metrics.get('ed_es_source', '')})",
        f"LV area: ED {fmt('lv_eda_mm2', 'mm2')}, ES {fmt('lv_esa_mm2', 'mm2')}, FAC {fmt('lv_fac_pct', '%')}",
        f"RV area: ED {fmt('rv_eda_mm2', 'mm2')}, ES {fmt('rv_esa_mm2', 'mm2')}, FAC {fmt('rv_fac_pct', '%')}",
    ]
    if metrics.get("mapse_mm") is not None:
        lines.append(f"MAPSE {metrics['mapse_mm']:.1f} mm ({metrics['mitral_valve_landmarks']['view']})")
    return lines + ([f"QC: {w}" for w in metrics.get("qc_warnings", [])] or ["QC: no warnings"])
