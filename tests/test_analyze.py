"""`cinema analyze`: measurements, QC, outputs and their contract, atomic writing, and LVEF against the manual
Sunnybrook contours with the shipped model."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import re

import nibabel as nib
import numpy as np
import pytest
from dicom_factory import PHI, write_cine_series

from cinema.analysis import analyze as analyze_module
from cinema.analysis.analyze import OUTPUT_FILES, example_study_path
from cinema.analysis.disease import ACDC_GROUPS, FEATURE_NAMES
from cinema.analysis.measure import METRIC_KEYS, cardiac_metrics, find_ed_es, volume_curves
from cinema.analysis.qc import quality_warnings
from cinema.cli import main
from cinema.io import read_acdc_patient, read_study, read_sunnybrook_contours
from cinema.io.atomic import OUTPUT_MARKER


@pytest.fixture(scope="module")
def example_out(tmp_path_factory, tiny_weights):
    """`cinema analyze` with no STUDY (the bundled real exam), run once for the output-contract tests."""
    out = tmp_path_factory.mktemp("analyze") / "example"
    assert main(["analyze", "-o", str(out), "--weights", str(tiny_weights), "--quiet"]) == 0
    return out


# -------------------------------------------------------------------------------------------------------------------
# A synthetic heart with known geometry
# -------------------------------------------------------------------------------------------------------------------

SPACING = (1.5, 1.5, 8.0)


def _disc(shape, centre, radius):
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    return (x - centre[0]) ** 2 + (y - centre[1]) ** 2 < radius**2


def _heart(lv_radius: float, rv_radius: float, n_slices: int = 10) -> np.ndarray:
    """(X, Y, Z) labels: LV disc inside a closed myocardial ring, RV beside it, empty first and last slices."""
    shape = (112, 96)
    plane = np.zeros(shape, dtype=np.uint8)
    plane[_disc(shape, (70, 48), lv_radius + 6)] = 2
    plane[_disc(shape, (70, 48), lv_radius)] = 3
    rv = _disc(shape, (70 - lv_radius - 6 - rv_radius, 48), rv_radius) & (plane == 0)
    plane[rv] = 1
    labels = np.zeros((*shape, n_slices), dtype=np.uint8)
    labels[:, :, 1:-1] = plane[:, :, None]
    return labels


def _cine_labels() -> np.ndarray:
    """(X, Y, Z, 6): ED at frame 1 (largest), ES at frame 4 (smallest)."""
    radii = [(17, 14), (20, 16), (18, 14), (15, 12), (13, 10), (16, 13)]
    return np.stack([_heart(lv, rv) for lv, rv in radii], axis=-1)


def test_volumes_ed_es_and_metrics_match_the_geometry():
    series = _cine_labels()
    curves = volume_curves(series, SPACING)
    voxel_ml = np.prod(SPACING) / 1000.0
    np.testing.assert_allclose(curves["lv"], (series == 3).sum(axis=(0, 1, 2)) * voxel_ml)
    ed, es = find_ed_es(curves["lv"])
    assert (ed, es) == (1, 4)
    metrics = cardiac_metrics(curves, ed, es)
    lv_edv, lv_esv = curves["lv"][1], curves["lv"][4]
    assert metrics["lv_edv_ml"] == pytest.approx(lv_edv, abs=1e-3)
    assert metrics["lv_sv_ml"] == pytest.approx(lv_edv - lv_esv, abs=1e-3)
    assert metrics["lv_ef_pct"] == pytest.approx(100 * (lv_edv - lv_esv) / lv_edv, abs=1e-3)
    assert metrics["rv_ef_pct"] == pytest.approx(100 * (curves["rv"][1] - curves["rv"][4]) / curves["rv"][1], abs=1e-3)
    assert metrics["lv_mass_g"] == pytest.approx(1.05 * curves["myo"][1], abs=1e-3)
    assert (metrics["ed_frame"], metrics["es_frame"]) == (1, 4)


def test_find_ed_es_respects_given_frames_and_rejects_bad_ones():
    curve = [5.0, 9.0, 7.0, 2.0, 4.0]
    assert find_ed_es(curve) == (1, 3)
    assert find_ed_es(curve, ed=0) == (0, 3)
    assert find_ed_es(curve, es=1) == (2, 1)  # ED is the largest among the other frames
    assert find_ed_es([3.0, 3.0, 3.0]) == (0, 1)  # a flat curve still gives two distinct frames
    assert find_ed_es([3.0]) == (0, 0)
    with pytest.raises(ValueError, match="ES frame 5 is outside the 5 frames"):
        find_ed_es(curve, es=5)


def test_single_phase_leaves_stroke_volume_and_ef_undefined():
    series = _heart(18, 14)[..., None]
    metrics = cardiac_metrics(volume_curves(series, SPACING), 0, 0)
    assert metrics["lv_ef_pct"] is None and metrics["lv_sv_ml"] is None and metrics["rv_ef_pct"] is None
    assert metrics["lv_edv_ml"] > 0
    warnings = quality_warnings(series, 0, 0, metrics)
    assert any("Only one cardiac phase" in w for w in warnings)


# -------------------------------------------------------------------------------------------------------------------
# Quality control
# -------------------------------------------------------------------------------------------------------------------


def _qc(series, ed=1, es=4):
    return quality_warnings(series, ed, es, cardiac_metrics(volume_curves(series, SPACING), ed, es))


def test_qc_is_quiet_on_a_well_formed_heart():
    assert _qc(_cine_labels()) == []


def test_qc_flags_coverage_open_myocardium_gaps_and_splits():
    series = _cine_labels()
    series[:, :, 0, 1] = series[:, :, 1, 1]  # LV on the first slice at ED
    assert any("still large on the first slice" in w and "ED (frame 1)" in w for w in _qc(series))

    series = _cine_labels()
    ring = series[:, :, 5, 4]
    ring[(ring == 2) & (np.arange(ring.shape[0])[:, None] > 70)] = 0  # half the myocardium gone on slice 6 at ES
    warnings = _qc(series)
    assert any("does not close around the LV cavity on slice 6" in w and "ES (frame 4)" in w for w in warnings)

    series = _cine_labels()
    series[:, :, 4, 1][series[:, :, 4, 1] == 3] = 2  # LV cavity missing on slice 5 at ED
    assert any("LV cavity is missing on slice 5" in w for w in _qc(series))

    series = _cine_labels()
    series[100:110, 80:95, 2:8, 4] = 1  # a second RV piece of sizeable volume at ES
    assert any("RV cavity is split" in w and "ES (frame 4)" in w for w in _qc(series))

    series = _cine_labels()
    series[..., 4][series[..., 4] == 3] = 0  # no LV at all at ES
    warnings = _qc(series)
    assert any("No LV cavity was found at ES" in w for w in warnings)
    assert any("No LV cavity was found in frame(s) 4" in w for w in warnings)


def test_qc_flags_low_model_confidence_only_below_its_threshold():
    series = _cine_labels()
    metrics = cardiac_metrics(volume_curves(series, SPACING), 1, 4)
    assert not any("confidence" in w for w in quality_warnings(series, 1, 4, metrics, confidence=0.95))
    low = [w for w in quality_warnings(series, 1, 4, metrics, confidence=0.8) if "confidence" in w]
    assert len(low) == 1 and "0.80" in low[0]


def test_qc_flags_implausible_values():
    metrics = {"lv_ef_pct": 91.0, "rv_ef_pct": 50.0, "lv_edv_ml": 120.0, "lv_esv_ml": 10.8, "rv_edv_ml": 500.0}
    metrics.update({"rv_esv_ml": 250.0, "lv_mass_g": 100.0})
    warnings = quality_warnings(_cine_labels(), 1, 4, metrics)
    assert any(w.startswith("LVEF 91.0 % is outside the plausible range 5-85 %") for w in warnings)
    assert any(w.startswith("RVEDV 500.0 ml is outside") for w in warnings)
    swapped = quality_warnings(_cine_labels(), 1, 4, {**metrics, "lv_esv_ml": 130.0})
    assert any("LVESV (130.0 ml) is larger than LVEDV (120.0 ml)" in w for w in swapped)


def test_qc_does_not_flag_structure_on_manual_acdc_labels(acdc_dir):
    """Specificity on real expert labels: no split, gap or missing-structure warnings for normal hearts."""
    patients = sorted(p for p in acdc_dir.iterdir() if (p / "Info.cfg").is_file())
    normal = [p for p in patients if "NOR" in (p / "Info.cfg").read_text()][:4]
    assert normal
    for folder in normal:
        study = read_acdc_patient(folder)
        series = np.stack([study.sax.labels[f] for f in range(study.sax.n_frames)], axis=-1)
        curves = volume_curves(series, study.sax.spacing)
        metrics = cardiac_metrics(curves, study.ed_frame, study.es_frame)
        warnings = quality_warnings(series, study.ed_frame, study.es_frame, metrics)
        structural = [w for w in warnings if "split" in w or "missing" in w or "No " in w or "plausible" in w]
        assert structural == [], (folder.name, structural)


# -------------------------------------------------------------------------------------------------------------------
# The command and its outputs
# -------------------------------------------------------------------------------------------------------------------


def test_example_outputs_follow_the_contract(example_out):
    assert sorted(p.name for p in example_out.iterdir()) == sorted([*OUTPUT_FILES, OUTPUT_MARKER])
    source = read_study(example_study_path())
    seg = nib.load(example_out / "seg_sax.nii.gz")
    assert seg.shape == source.sax.image.shape
    np.testing.assert_allclose(seg.affine, source.sax.affine, atol=1e-5)
    labels = np.asarray(seg.dataobj)
    assert labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1, 2, 3}

    metrics = json.loads((example_out / "metrics.json").read_text())
    assert set(METRIC_KEYS) <= set(metrics)
    assert isinstance(metrics["qc_warnings"], list) and all(isinstance(w, str) for w in metrics["qc_warnings"])
    assert metrics["mapse_mm"] is None and metrics["mitral_valve_landmarks"] is None  # no LAX views in the example
    assert 0.0 < metrics["model_confidence"] <= 1.0 and metrics["qc_not_checked"] == []
    probabilities = metrics["disease_probabilities"]
    assert sorted(probabilities) == sorted(ACDC_GROUPS) and sum(probabilities.values()) == pytest.approx(1, abs=1e-3)
    assert metrics["disease_prediction"] == max(probabilities, key=probabilities.get)
    assert set(metrics["disease_features"]) == set(FEATURE_NAMES)
    best = metrics["disease_prediction"]
    assert f"{best} {100 * probabilities[best]:.1f} %" in " ".join(analyze_module.summary_lines(metrics))

    rows = list(csv.DictReader(io.StringIO((example_out / "volumes.csv").read_text())))
    assert [int(r["frame"]) for r in rows] == list(range(20))
    # the table is the segmentation's own volumes, and the metrics come from it
    voxel_ml = np.prod(source.sax.spacing) / 1000.0
    lv = (labels == 3).sum(axis=(0, 1, 2)) * voxel_ml
    np.testing.assert_allclose([float(r["lv_ml"]) for r in rows], lv, atol=1e-3)
    ed, es = metrics["ed_frame"], metrics["es_frame"]
    assert ed == int(np.argmax(lv)) and rows[ed]["phase"].startswith("ED") and "ES" in rows[es]["phase"]
    assert metrics["lv_edv_ml"] == pytest.approx(lv[ed], abs=1e-3)
    assert metrics["lv_esv_ml"] == pytest.approx(lv.min(), abs=1e-3)


def test_report_is_self_contained_and_readable(example_out):
    text = (example_out / "report.html").read_text()
    assert 'src="http' not in text and "<script" not in text  # nothing to fetch, nothing to run
    images = re.findall(r'src="data:(image/(?:png|gif));base64,([A-Za-z0-9+/=]+)"', text)
    # volume curves, AHA bullseye, volume rate curve, ED, ES, cine
    assert [m for m, _ in images] == ["image/png"] * 5 + ["image/gif"]
    assert 'alt="AHA bullseye of ED wall thickness and thickening"' in text and 'alt="LV volume rate curve"' in text
    from PIL import Image

    for _, data in images:
        picture = Image.open(io.BytesIO(base64.b64decode(data)))
        assert min(picture.size) > 100
    metrics = json.loads((example_out / "metrics.json").read_text())
    for warning in metrics["qc_warnings"]:
        assert html.escape(warning) in text
    assert "LV ejection fraction" in text and "Sunnybrook" in text  # metrics table; licence of the bundled exam
    gif = Image.open(example_out / "cine_overlay.gif")
    assert gif.n_frames == 20


def test_report_has_no_patient_fields(tmp_path, tiny_weights):
    exam = tmp_path / "Doe_exam"
    write_cine_series(exam, n_slices=4, n_phases=5, rows=40, columns=36)
    out = tmp_path / "out"
    assert main(["analyze", str(exam), "-o", str(out), "--weights", str(tiny_weights), "--quiet"]) == 0
    text = (out / "report.html").read_text() + (out / "metrics.json").read_text()
    for value in PHI.values():
        assert value not in text
    assert str(exam) not in text and "Doe_exam" not in text
    assert nib.load(out / "seg_sax.nii.gz").shape == (36, 40, 4, 5)  # (columns, rows, slices, frames)


def test_acdc_folder_uses_its_ed_es_and_3d_nifti_stays_3d(tmp_path, acdc_dir, tiny_weights):
    folder = acdc_dir / "patient001"
    study = read_acdc_patient(folder)
    out = tmp_path / "acdc"
    assert main(["analyze", str(folder), "-o", str(out), "--weights", str(tiny_weights), "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["ed_frame"], metrics["es_frame"]) == (study.ed_frame, study.es_frame)
    assert metrics["ed_es_source"] == "ED from the input, ES from the input"
    assert metrics["ed_acquisition_frame"] == study.sax.frame_indices[study.ed_frame]
    assert nib.load(out / "seg_sax.nii.gz").shape == (*study.sax.spatial_shape, 2)

    frame = tmp_path / "frame.nii.gz"
    image = study.sax.image[..., :1]
    nib.save(nib.Nifti1Image(image[..., 0], study.sax.affine), frame)
    out3d = tmp_path / "single"
    assert main(["analyze", str(frame), "-o", str(out3d), "--weights", str(tiny_weights), "--quiet"]) == 0
    assert nib.load(out3d / "seg_sax.nii.gz").shape == study.sax.spatial_shape
    metrics = json.loads((out3d / "metrics.json").read_text())
    assert metrics["lv_ef_pct"] is None and any("Only one cardiac phase" in w for w in metrics["qc_warnings"])


def test_given_ed_es_are_used_and_bad_ones_are_one_line_errors(tmp_path, tiny_weights, short_cine, capsys):
    cine = short_cine
    out = tmp_path / "given"
    args = ["analyze", str(cine), "-o", str(out), "--weights", str(tiny_weights), "--quiet", "--ed", "3", "--es", "5"]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["ed_frame"], metrics["es_frame"]) == (3, 5)
    assert metrics["ed_es_source"] == "ED given, ES given"

    capsys.readouterr()
    assert main(["analyze", str(cine), "-o", str(tmp_path / "bad"), "--weights", str(tiny_weights), "--es", "6"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["cinema analyze: error: --es 6 is outside the 6 stored frames (0-based, 0..5)"]
    assert not (tmp_path / "bad").exists()


def test_existing_out_is_kept_without_force_and_failures_leave_nothing(
    tmp_path, tiny_weights, short_cine, monkeypatch, capsys
):
    cine = short_cine
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    base = ["analyze", str(cine), "-o", str(out), "--weights", str(tiny_weights), "--quiet"]
    assert main(base) == 2
    assert "use --force" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    assert main([*base, "--force"]) == 2  # --force never replaces a folder cinema did not write
    assert "not written by cinema" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["mine.txt"]

    out = tmp_path / "earlier"
    base = ["analyze", str(cine), "-o", str(out), "--weights", str(tiny_weights), "--quiet"]
    assert main(base) == 0
    first = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken(analysis):
        raise ValueError("disk full while writing volumes.csv")

    monkeypatch.setattr(analyze_module, "volumes_csv", broken)
    assert main([*base, "--force"]) == 1
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first  # a failed --force run leaves the old output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["earlier", "out"]  # no temporary folder left behind

    monkeypatch.undo()
    assert main([*base, "--force"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([*OUTPUT_FILES, OUTPUT_MARKER])


# -------------------------------------------------------------------------------------------------------------------
# Accuracy with the shipped model: LVEF against the manual Sunnybrook contours
# -------------------------------------------------------------------------------------------------------------------


def _manual_lvef(exam_dir, study) -> float:
    """EF from the manual endocardial contours: cavity area x slice spacing summed per contoured frame."""
    contours = read_sunnybrook_contours(exam_dir, study)
    frames = sorted({frame for _, frame in contours})
    assert len(frames) == 2, frames  # Sunnybrook contours ED and ES only
    sx, sy, sz = study.sax.spacing
    volume = {f: sum(m["endo"].sum() for (_, g), m in contours.items() if g == f) * sx * sy * sz / 1000 for f in frames}
    edv, esv = max(volume.values()), min(volume.values())
    return 100.0 * (edv - esv) / edv


@pytest.mark.slow
@pytest.mark.parametrize("exam", ["SCD0000301", "SCD0000401"])
def test_lvef_agrees_with_manual_contours(tmp_path, sunnybrook_dir, exam):
    from cinema.weights import default_weights_dir

    try:
        default_weights_dir("sax_segmentation")
    except FileNotFoundError as err:
        pytest.skip(f"the shipped default segmentation weights are not in the package yet ({err})")
    exam_dir = sunnybrook_dir / exam
    reference = _manual_lvef(exam_dir, read_study(exam_dir / "dicom"))
    out = tmp_path / exam
    assert main(["analyze", str(exam_dir), "-o", str(out), "--quiet"]) == 0  # the exam folder, as a user passes it
    metrics = json.loads((out / "metrics.json").read_text())
    assert abs(metrics["lv_ef_pct"] - reference) <= 5.0, (metrics["lv_ef_pct"], reference)
