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

from cinema.analysis.measure import cardiac_metrics, find_ed_es, label_series, volume_curves, volume_rates
from cinema.analysis.qc import CONFIDENCE_NOT_AVAILABLE, quality_warnings, regional_warnings
from cinema.analysis.regional import regional_analysis
from cinema.io.errors import InputError
from cinema.io.study import LAX_VIEWS, SAX, Study

logger = logging.getLogger(__name__)

__all__ = [
    "OUTPUT_FILES",
    "Analysis",
    "analyze_path",
    "analyze_study",
    "disease_probabilities",
    "example_study_path",
    "mitral_valve_landmarks",
    "regional_measurements",
    "write_analysis",
]

OUTPUT_FILES = ("seg_sax.nii.gz", "volumes.csv", "metrics.json", "report.html", "cine_overlay.gif")
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
        labels: (X, Y, Z, T) uint8 labels on the SAX grid, one per stored frame.
        curves: {"lv", "rv", "myo"} -> (T,) volumes in ml.
        metrics: `METRIC_KEYS` plus extras, JSON-ready (None for undefined values).
        notes: sentences about what was not checked or not available.
    """

    study: Study
    labels: np.ndarray
    curves: dict[str, np.ndarray]
    metrics: dict[str, Any]
    notes: list[str] = field(default_factory=list)


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
    amp: bool = False,
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
        amp: bf16 autocast, for a bare model.
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
            "n_frames": view.n_frames,
        }
    )
    if view.frame_indices is not None:
        metrics["ed_acquisition_frame"] = view.frame_indices[ed]
        metrics["es_acquisition_frame"] = view.frame_indices[es]
    return Analysis(study=study, labels=series, curves=curves, metrics=metrics, notes=notes)


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
) -> Path:
    """Write every output into `out_dir` atomically (all files or none), by the output-safety rule of
    `cinema.io.atomic` (`force` replaces only an earlier cinema output; never one of `inputs` or a folder holding
    one).

    Args:
        spatial_only: write ``seg_sax.nii.gz`` as 3-D (the input was one 3-D NIfTI frame).
    """
    from cinema.io import write_label_nifti
    from cinema.io.atomic import atomic_directory

    out_dir = Path(out_dir)
    view = analysis.study.view(SAX)
    labels = analysis.labels[..., 0] if spatial_only else analysis.labels
    html_text, gif = report_html(analysis)
    with atomic_directory(out_dir, force=force, inputs=inputs, command="analyze") as tmp:
        write_label_nifti(labels, view.affine, tmp / "seg_sax.nii.gz")
        (tmp / "volumes.csv").write_text(volumes_csv(analysis), encoding="utf-8")
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
) -> Analysis:
    """Read an exam, analyse it and write `out_dir`: the one sequence behind ``cinema analyze`` and ``cinema serve``.

    Args:
        source: an exam as `cinema.io.read_study` takes it (a NIfTI file is read as the SAX cine).
        predictor: a `cinema.analysis.segment.SegmentationPredictor`.
        ed, es: 0-based stored frames of end-diastole / end-systole (default: from the input or the LV curve).
        study_id: the study to take from a DICOM folder holding several.
        force: replace `out_dir` if it is an earlier cinema output (`cinema.io.atomic.check_output`).
        display_name: shown for the exam in messages and the report instead of its path.
        other_inputs: further files the command read (weights): `out_dir` must not replace them either.
    """
    from cinema.io import read_study
    from cinema.io.datasets import nifti_shape
    from cinema.io.read import detect_input_kind

    source = Path(source)
    kind = detect_input_kind(source)
    study = read_study(source, view=SAX if kind == "nifti" else None, study=study_id)
    if display_name is not None:
        study.source = display_name
    n_frames = study.view(SAX).n_frames  # a clear error for an exam without a short-axis cine
    for flag, frame in (("--ed", ed), ("--es", es)):
        if frame is not None and not 0 <= frame < n_frames:
            raise InputError(f"{flag} {frame} is outside the {n_frames} stored frames (0-based, 0..{n_frames - 1})")
    analysis = analyze_study(study, predictor, ed=ed, es=es, progress=progress, landmark_model=landmark_model)
    spatial_only = kind == "nifti" and len(nifti_shape(source)) == 3
    write_analysis(analysis, out_dir, force=force, spatial_only=spatial_only, inputs=[source, *other_inputs])
    return analysis


def summary_lines(metrics: Mapping[str, Any]) -> list[str]:
    """A few console lines with the headline numbers and the QC warnings."""

    def fmt_value(value: float | None, unit: str) -> str:
        return "n/a" if value is None else f"{value:.1f} {unit}"

    def fmt(key: str, unit: str) -> str:
        return fmt_value(metrics.get(key), unit)

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
