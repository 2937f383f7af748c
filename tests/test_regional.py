"""Regional LV measurements (`cinema.analysis.regional`, `cinema.analysis.measure.volume_rates`): analytic phantoms
with known thickness, eccentricity, segmental thinning and contraction recovered within 0.5 mm / 2 % strain; the
orientation conventions (insertion points, handedness, base/apex); QC; the report and cohort wiring; and the
expected physiology on the shared ACDC ground truth."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cinema.analysis.measure import volume_rates
from cinema.analysis.qc import regional_warnings
from cinema.analysis.regional import AHA_SEGMENTS, aha_segment_of, regional_analysis, slice_wall
from cinema.cohort.table import metric_scalars

# anisotropic in-plane voxels on purpose: geometry must come from the affine, not the voxel counts
SPACING = (1.4, 1.7, 8.0)
SHAPE = (110, 100)
CENTRE = (75.0, 80.0)  # mm
RV_ARC = (100.0, 220.0)  # degrees around the LV centre, from voxel axis 0 towards axis 1
SEPTUM = 160.0  # bisector of RV_ARC
N_SLICES = 9


def _grid():
    x = (np.arange(SHAPE[0]) * SPACING[0])[:, None]
    y = (np.arange(SHAPE[1]) * SPACING[1])[None, :]
    return x - CENTRE[0], y - CENTRE[1]


def _in_arc(angle, start, end):
    return ((angle - start) % 360) < ((end - start) % 360)


def heart(r_base=26.0, r_apex=14.0, thickness=8.0, shift=(0.0, 0.0), sector=None, rv=True, rv_missing=()):
    """(X, Y, Z) labels: a myocardial ring (outer circle about CENTRE) around a cavity whose radius tapers from base
    (slice 0) to apex, an RV crescent outside the septal arc, and an apical cap slice (myocardium only).

    shift: offset (mm) of the cavity circle from the outer circle's centre (eccentric wall);
    sector: (start, end, thickness) a wall sector (degrees) with another thickness.
    """
    dx, dy = _grid()
    angle = np.degrees(np.arctan2(dy, dx)) % 360
    radius = np.hypot(dx, dy)
    labels = np.zeros((*SHAPE, N_SLICES + 1), dtype=np.uint8)
    for z in range(N_SLICES):
        r_in = r_base + (r_apex - r_base) * z / (N_SLICES - 1)
        r_out = np.full(SHAPE, r_in + thickness)
        if sector is not None:
            r_out = np.where(_in_arc(angle, sector[0], sector[1]), r_in + sector[2], r_out)
        plane = np.zeros(SHAPE, dtype=np.uint8)
        if rv and z not in rv_missing:
            plane[(radius >= r_in + thickness) & (radius < r_in + thickness + 12) & _in_arc(angle, *RV_ARC)] = 1
        plane[radius < r_out] = 2
        plane[np.hypot(dx - shift[0], dy - shift[1]) < r_in] = 3
        labels[:, :, z] = plane
    labels[:, :, N_SLICES][radius < 10] = 2
    return labels


AFFINE = np.diag([*SPACING, 1.0])


def segments(result):
    return {s["segment"]: s for s in result["segments"]}


@pytest.fixture(scope="module")
def contraction():
    """ED: 8 mm wall; ES: 11 mm wall around a smaller cavity (incompressible-ish systole)."""
    ed = heart()
    es = heart(r_base=18.0, r_apex=9.0, thickness=11.0)
    return regional_analysis(ed, es, AFFINE)


def _midwall_radius(r_base, r_apex, thickness):
    r_in = r_base + (r_apex - r_base) * np.arange(N_SLICES) / (N_SLICES - 1)
    return r_in + thickness / 2


def test_ring_thickness_is_recovered_in_every_segment(contraction):
    for number, segment in segments(contraction).items():
        for phase, truth in (("ed", 8.0), ("es", 11.0)):
            values = segment[phase]
            assert values["thickness_mean_mm"] == pytest.approx(truth, abs=0.5), (number, phase)
            # the maximum (thickest 8 mm stretch) sits on the voxel staircase: within one voxel above the truth
            assert truth - 0.5 <= values["thickness_max_mm"] <= truth + max(SPACING[:2]), (number, phase)
    assert contraction["global"]["ed_thickness_mean_mm"] == pytest.approx(8.0, abs=0.3)
    assert contraction["global"]["es_thickness_mean_mm"] == pytest.approx(11.0, abs=0.3)


def test_known_contraction_gives_the_analytic_strains(contraction):
    ed_mid = _midwall_radius(26.0, 14.0, 8.0)
    es_mid = _midwall_radius(18.0, 9.0, 11.0)
    circumferential = 100 * (es_mid.sum() / ed_mid.sum() - 1)  # -20.8 %
    assert contraction["global"]["circumferential_strain_pct"] == pytest.approx(circumferential, abs=2.0)
    assert contraction["global"]["radial_strain_pct"] == pytest.approx(100 * (11 / 8 - 1), abs=2.0)
    for number, segment in segments(contraction).items():
        level = segment["level"]
        chosen = {"basal": slice(0, 3), "mid": slice(3, 6), "apical": slice(6, 9)}[level]
        truth = 100 * (es_mid[chosen].sum() / ed_mid[chosen].sum() - 1)
        assert segment["circumferential_strain_pct"] == pytest.approx(truth, abs=2.0), number
        # segmental thickening divides two 60-degree means, each within 0.5 mm: a few percent
        assert segment["thickening_pct"] == pytest.approx(37.5, abs=6.0), number
    assert contraction["levels"] == {"basal": [1, 2, 3], "mid": [4, 5, 6], "apical": [7, 8, 9]}
    assert contraction["global"]["strain_slices"] == list(range(1, 10))


def _medial_thickness(angles_deg, r_in, r_out, shift):
    """Exact centreline thickness of an eccentric ring at each angle around the outer centre: the mid-wall point m
    at distance rho solves |m - c_in| - r_in = r_out - rho, and the thickness there is 2 (r_out - rho)."""
    u = np.stack([np.cos(np.radians(angles_deg)), np.sin(np.radians(angles_deg))], -1)
    low, high = np.zeros(len(u)), np.full(len(u), r_out)
    for _ in range(60):  # bisection: the left side minus the right side grows with rho
        rho = (low + high) / 2
        gap = np.linalg.norm(rho[:, None] * u - np.asarray(shift), axis=1) - r_in - (r_out - rho)
        low, high = np.where(gap < 0, rho, low), np.where(gap < 0, high, rho)
    rho = (low + high) / 2
    points = rho[:, None] * u
    step = np.linalg.norm(np.roll(points, -1, axis=0) - points, axis=1)
    return 2 * (r_out - rho), step


def test_eccentric_ring_thickness_per_segment_matches_the_exact_centreline():
    shift = (3.0 * np.cos(np.radians(SEPTUM)), 3.0 * np.sin(np.radians(SEPTUM)))  # cavity towards the septum
    result = regional_analysis(heart(shift=shift), None, AFFINE)
    found = segments(result)
    angles = np.arange(0.0, 360.0, 0.1)
    for z, level in ((1, "basal"), (4, "mid")):
        r_in = 26.0 + (14.0 - 26.0) * z / (N_SLICES - 1)
        thickness, weight = _medial_thickness(angles, r_in, r_in + 8.0, shift)
        numbers = aha_segment_of(angles - SEPTUM, level)
        for number in np.unique(numbers):
            pick = numbers == number
            truth = float((thickness[pick] * weight[pick]).sum() / weight[pick].sum())
            # the level's slices all share this geometry but for the radius, which barely changes the means
            assert found[int(number)]["ed"]["thickness_mean_mm"] == pytest.approx(truth, abs=0.5), number
    # thinnest at the septum (8 - 3 mm), thickest at the lateral wall (8 + 3 mm)
    assert found[8]["ed"]["thickness_mean_mm"] < 6.5 < 9.5 < found[11]["ed"]["thickness_mean_mm"]
    assert max(s["ed"]["thickness_max_mm"] for s in result["segments"]) == pytest.approx(11.0, abs=0.75)
    assert result["global"]["circumferential_strain_pct"] is None  # one phase


def test_segmental_thinning_and_akinesia_are_localised():
    # basal and mid inferolateral: 120-180 degrees inferior of the septal bisector
    sector = ((SEPTUM + 120) % 360, (SEPTUM + 180) % 360)
    ed = heart(sector=(*sector, 4.0))
    # ES: the thinned sector stays 4 mm thick (akinetic), the rest thickens from 8 to 11 mm
    es = heart(r_base=18.0, r_apex=9.0, thickness=11.0, sector=(*sector, 4.0))
    found = segments(regional_analysis(ed, es, AFFINE))
    for number in (5, 11):
        assert found[number]["ed"]["thickness_mean_mm"] == pytest.approx(4.0, abs=0.5)
        assert abs(found[number]["thickening_pct"]) < 10
    for number in (1, 2, 3, 7, 8, 9):
        assert found[number]["ed"]["thickness_mean_mm"] == pytest.approx(8.0, abs=0.5)
        assert found[number]["thickening_pct"] > 25


def _angle_of(voxel):
    x, y = voxel[0] * SPACING[0] - CENTRE[0], voxel[1] * SPACING[1] - CENTRE[1]
    return np.degrees(np.arctan2(y, x)) % 360


def _angle_difference(a, b):
    return abs((a - b + 180) % 360 - 180)


def test_insertion_points_follow_the_rv_and_the_affine_handedness():
    labels = heart()
    points = regional_analysis(labels, None, AFFINE)["insertion_points"]["ed"]["points_voxel_xy"]
    assert len(points) == N_SLICES
    for entry in points:
        # the contact zone reaches two voxels beyond the RV's edge
        assert _angle_difference(_angle_of(entry["anterior"]), RV_ARC[0]) < 8
        assert _angle_difference(_angle_of(entry["inferior"]), RV_ARC[1]) < 8
    # a mirrored affine (x axis reversed) is the mirror-image patient: anterior and inferior swap, septum stays
    mirrored = AFFINE @ np.diag([-1.0, 1.0, 1.0, 1.0])
    swapped = regional_analysis(labels, None, mirrored)
    for entry in swapped["insertion_points"]["ed"]["points_voxel_xy"]:
        assert _angle_difference(_angle_of(entry["anterior"]), RV_ARC[1]) < 8
    thinned = heart(sector=(SEPTUM + 60, SEPTUM + 120, 4.0))  # the inferior wall in the true orientation
    assert segments(regional_analysis(thinned, None, AFFINE))[4]["ed"]["thickness_mean_mm"] < 5
    assert segments(regional_analysis(thinned, None, mirrored))[1]["ed"]["thickness_mean_mm"] < 5


def test_base_and_apex_come_from_the_anatomy_not_the_slice_order():
    labels = heart(sector=(SEPTUM - 60, SEPTUM, 4.0))  # anteroseptal thinning at every level
    # the same patient stored apex first: the slice axis of the affine turns round with the slice order
    flipped_axis = AFFINE.copy()
    flipped_axis[:3, 2] *= -1
    flipped_axis[:3, 3] = AFFINE[:3, 2] * N_SLICES
    result = regional_analysis(labels[:, :, ::-1], None, flipped_axis)
    assert result["orientation"]["apex_end"] == "low slice numbers"
    # slice 1 is the apical cap; slices 2-10 hold the cavity, apex first
    assert result["levels"] == {"basal": [8, 9, 10], "mid": [5, 6, 7], "apical": [2, 3, 4]}
    found = segments(result)
    assert found[2]["ed"]["thickness_mean_mm"] < 5 and found[8]["ed"]["thickness_mean_mm"] < 5
    assert found[3]["ed"]["thickness_mean_mm"] > 7 and found[6]["ed"]["thickness_mean_mm"] > 7
    # reversing the slices under the same affine stores the mirror-image heart: its thin septal wall is inferoseptal
    mirror = segments(regional_analysis(labels[:, :, ::-1], None, AFFINE))
    assert mirror[3]["ed"]["thickness_mean_mm"] < 5 and mirror[2]["ed"]["thickness_mean_mm"] > 7


def test_oblique_scanner_geometry_is_checked_against_the_anatomical_apex():
    # a stack whose slice axis runs towards the patient's left, anterior and inferior: apex at high slice numbers
    towards_apex = np.array([-1.0, 1.0, -1.0]) / np.sqrt(3)
    in_plane_x = np.array([1.0, 1.0, 0.0]) / np.sqrt(2)
    in_plane_y = np.cross(towards_apex, in_plane_x)
    rotation = np.stack([in_plane_x, in_plane_y, towards_apex], axis=1)
    affine = np.eye(4)
    affine[:3, :3] = rotation * np.asarray(SPACING)
    labels = heart()
    agrees = regional_analysis(labels, None, affine)
    assert agrees["orientation"]["apex_direction_agrees_with_anatomy"] is True
    assert not any("apex" in w for w in regional_warnings(agrees))
    # same thicknesses as the axis-aligned stack: only the voxel sizes matter for them
    plain = segments(regional_analysis(labels, None, AFFINE))
    for number, segment in segments(agrees).items():
        assert segment["ed"]["thickness_mean_mm"] == pytest.approx(plain[number]["ed"]["thickness_mean_mm"], abs=0.3)
    flipped = regional_analysis(labels[:, :, ::-1], None, affine)  # the apex now points right-posterior-superior
    assert flipped["orientation"]["apex_direction_agrees_with_anatomy"] is False
    assert any("base and apex" in w for w in regional_warnings(flipped))


def test_qc_flags_missing_rv_on_mid_slices_and_empty_levels():
    quiet = regional_analysis(heart(), heart(r_base=18.0, r_apex=9.0, thickness=11.0), AFFINE)
    assert regional_warnings(quiet) == []
    # no RV on two mid slices: still measured (septum of the other slices), but flagged
    gap = regional_analysis(heart(rv_missing=(3, 4)), None, AFFINE)
    assert gap["insertion_points"]["ed"]["unsure_slices"][0]["slice"] == 4
    assert all(s["ed"]["thickness_mean_mm"] is not None for s in gap["segments"])
    warnings = regional_warnings(gap)
    assert len(warnings) == 1 and "slices 4, 5" in warnings[0] and "no RV" in warnings[0]
    # the RV missing only on the apical slices is anatomy, not a failure
    assert regional_warnings(regional_analysis(heart(rv_missing=(6, 7, 8)), None, AFFINE)) == []
    # two cavity slices cannot fill three levels
    short = heart()
    short[:, :, 2:] = 0
    result = regional_analysis(short, None, AFFINE)
    empty = [name for name, numbers in result["levels"].items() if not numbers]
    assert empty and all(s["ed"]["thickness_mean_mm"] is None for s in result["segments"] if s["level"] in empty)
    assert any("third of the LV" in w for w in regional_warnings(result))
    nothing = regional_analysis(np.zeros((20, 20, 4), np.uint8), None, AFFINE)
    assert all(s["ed"]["thickness_mean_mm"] is None for s in nothing["segments"])
    assert regional_warnings(nothing) == [
        "No slice has an LV cavity surrounded by myocardium at ED: no regional measurements."
    ]


def test_open_ring_is_kept_for_thickness_but_not_for_strain():
    plane = heart()[:, :, 0]
    dx, dy = _grid()
    angle = np.degrees(np.arctan2(dy, dx)) % 360
    opened = plane.copy()
    opened[(plane == 2) & _in_arc(angle, 330, 30)] = 0  # a 60-degree gap in the lateral wall
    wall = slice_wall(opened, SPACING[:2])
    assert not wall.closed and 0.1 < wall.open_fraction < 0.25
    assert np.average(wall.thickness[wall.on_wall], weights=wall.lengths[wall.on_wall]) == pytest.approx(8, abs=0.5)
    assert slice_wall(plane, SPACING[:2]).closed


def test_segment_numbering_follows_the_aha_layout():
    assert [aha_segment_of(np.array([a]), "basal")[0] for a in (-90, -30, 30, 90, 150, -150)] == [1, 2, 3, 4, 5, 6]
    assert [aha_segment_of(np.array([a]), "mid")[0] for a in (-90, -30, 30, 90, 150, -150)] == [7, 8, 9, 10, 11, 12]
    assert [aha_segment_of(np.array([a]), "apical")[0] for a in (-90, 0, 90, 180)] == [13, 14, 15, 16]
    assert [s[0] for s in AHA_SEGMENTS] == list(range(1, 17))


# -------------------------------------------------------------------------------------------------------------------
# Volume-curve rates
# -------------------------------------------------------------------------------------------------------------------


def _lv_curve(t):
    """1000 ms cycle: ejection 150 -> 60 ml by a half cosine over 300 ms (peak 471 ml/s), early filling 60 -> 120 ml
    over 350-550 ms (peak 471 ml/s), diastasis, atrial filling 120 -> 150 ml over 800-950 ms (peak 314 ml/s)."""
    t = np.asarray(t, dtype=float)
    v = np.where(t < 300, 105 + 45 * np.cos(np.pi * t / 300), 60.0)
    v = np.where((t >= 300) & (t < 350), 60.0, v)
    v = np.where(t >= 350, 60 + 30 * (1 - np.cos(np.pi * np.clip(t - 350, 0, 200) / 200)), v)
    return np.where(t >= 800, 120 + 15 * (1 - np.cos(np.pi * np.clip(t - 800, 0, 150) / 150)), v)


def test_volume_rates_recover_the_analytic_peaks_and_e_a():
    times = np.arange(50) * 20.0 + 5
    volume = _lv_curve(times)
    es = int(np.argmin(volume))
    rates = volume_rates(volume, times, 0, es, rr_interval_ms=1000.0)
    peak = 45 * np.pi / 300 * 1000  # ml/s
    assert rates["peak_ejection_rate_ml_s"] == pytest.approx(peak, rel=0.02)
    assert rates["peak_filling_rate_ml_s"] == pytest.approx(peak, rel=0.02)
    assert rates["peak_filling_rate_edv_s"] == pytest.approx(peak / volume[0], rel=0.02)
    assert rates["time_to_peak_filling_ms"] == pytest.approx(450 - times[es], abs=20)
    assert rates["e_a_ratio"] == pytest.approx(1.5, abs=0.1)
    assert rates["cycle_closed"] and len(rates["curve"]["rate_ml_s"]) == 50
    coarse = np.arange(20) * 50.0 + 5
    slow = volume_rates(_lv_curve(coarse), coarse, 0, int(np.argmin(_lv_curve(coarse))), rr_interval_ms=1000.0)
    assert slow["e_a_ratio"] is None and "50 ms apart" in slow["e_a_note"]
    assert slow["peak_filling_rate_ml_s"] == pytest.approx(peak, rel=0.1)
    # without an R-R interval the last frame is not joined to the next beat: late atrial filling is cut
    open_cycle = volume_rates(volume, times, 0, es)
    assert not open_cycle["cycle_closed"] and len(open_cycle["curve"]["rate_ml_s"]) == 49
    none = volume_rates([100.0, 50.0], None, 0, 1)
    assert none["peak_filling_rate_ml_s"] is None and "not available" in none["note"]


# -------------------------------------------------------------------------------------------------------------------
# Wiring: analyze -> metrics.json, report, cohort table
# -------------------------------------------------------------------------------------------------------------------


def test_analyze_writes_the_regional_object_report_and_cohort_columns(tmp_path):
    from cinema.analysis.analyze import analyze_study, write_analysis
    from cinema.analysis.segment import InferenceOptions, SegmentationPredictor
    from cinema.io import CineView, Study

    # a 12-frame cine whose cavity and wall follow a contraction: the stub predictor returns these labels
    frames = []
    for phase in np.sin(np.linspace(0, np.pi, 12)):
        frames.append(heart(r_base=26 - 8 * phase, r_apex=14 - 5 * phase, thickness=8 + 3 * phase))
    times = list(np.arange(12) * 70.0 + 10)
    view = CineView(image=np.stack(frames, -1).astype(np.float32), affine=AFFINE, frame_times_ms=times, name="sax")
    study = Study(views={"sax": view}, metadata={"scanner": {"rr_interval_ms": 840}})

    class Stub(SegmentationPredictor):
        def __init__(self):
            super().__init__(type("Model", (), {"source": "stub"})(), InferenceOptions(amp=False))
            self._engine = "torch"  # no network to run

        def segment_study(self, study, confidence=None, progress=None):
            return {f: frames[f] for f in range(len(frames))}

    analysis = analyze_study(study, Stub(), classifier=None)
    regional = analysis.metrics["regional"]
    assert len(regional["segments"]) == 16 and regional["units"]["thickness"] == "mm"
    assert regional["segments"][0]["ed"]["thickness_mean_mm"] == pytest.approx(8.0, abs=0.5)
    assert regional["segments"][0]["es"]["thickness_mean_mm"] == pytest.approx(11.0, abs=0.5)
    assert regional["global"]["circumferential_strain_pct"] < -15
    rates = regional["volume_rates"]
    assert rates["peak_ejection_rate_ml_s"] > 0 and rates["cycle_closed"]
    assert "E/A: not available (frames 70 ms apart" in " ".join(analysis.notes)
    out = write_analysis(analysis, tmp_path / "out")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["regional"]["summary"] == regional["summary"]
    report = (out / "report.html").read_text()
    assert "Regional function (AHA 16 segments)" in report
    assert report.count("<tr><th>") >= 16 and "16 apical lateral" in report
    assert 'alt="AHA bullseye of ED wall thickness and thickening"' in report
    assert 'alt="LV volume rate curve"' in report
    row = metric_scalars(metrics)
    regional_columns = sorted(k for k in row if k.startswith("regional_"))
    assert 5 <= len(regional_columns) <= 10 and "regional" not in row
    assert row["regional_circumferential_strain_pct"] == regional["global"]["circumferential_strain_pct"]
    assert row["regional_peak_filling_rate_ml_s"] == rates["peak_filling_rate_ml_s"]


# -------------------------------------------------------------------------------------------------------------------
# Real data: ACDC ground truth
# -------------------------------------------------------------------------------------------------------------------

ACDC_PATIENTS = {
    "NOR": ("patient061", "patient062", "patient063"),
    "HCM": ("patient021", "patient022", "patient023"),
    "DCM": ("patient001", "patient002", "patient003"),
    "MINF": ("patient041", "patient042", "patient043"),
}


@pytest.fixture(scope="module")
def acdc_regional(acdc_dir):
    from cinema.io import read_acdc_patient

    out = {}
    for group, patients in ACDC_PATIENTS.items():
        out[group] = []
        for patient in patients:
            study = read_acdc_patient(acdc_dir / patient)
            assert study.metadata["group"] == group
            labels = study.sax.labels
            out[group].append(regional_analysis(labels[study.ed_frame], labels[study.es_frame], study.sax.affine))
    return out


def test_acdc_ground_truth_shows_the_expected_physiology(acdc_regional):
    def mean(group, key):
        return float(np.mean([r["global"][key] for r in acdc_regional[group]]))

    # HCM: thicker walls than NOR, globally and in the thickest segment
    assert mean("HCM", "ed_thickness_mean_mm") > mean("NOR", "ed_thickness_mean_mm") + 2.0
    thickest = {
        g: np.mean([max(s["ed"]["thickness_mean_mm"] for s in r["segments"]) for r in acdc_regional[g]])
        for g in ("HCM", "NOR")
    }
    assert thickest["HCM"] > thickest["NOR"] + 3.0
    # DCM: low global thickening and circumferential shortening; MINF: reduced, in its weakest segments above all
    assert mean("DCM", "radial_strain_pct") < 0.5 * mean("NOR", "radial_strain_pct")
    assert mean("DCM", "circumferential_strain_pct") > mean("NOR", "circumferential_strain_pct") + 8
    assert mean("MINF", "radial_strain_pct") < mean("NOR", "radial_strain_pct")
    weakest = {
        g: np.mean(
            [
                min(s["thickening_pct"] for s in r["segments"] if s["thickening_pct"] is not None)
                for r in acdc_regional[g]
            ]
        )
        for g in ("MINF", "NOR")
    }
    assert weakest["MINF"] < weakest["NOR"] - 10
    # every manual segmentation fills the three levels and measures all 16 segments at both phases
    for results in acdc_regional.values():
        for result in results:
            assert all(result["levels"].values())
            assert all(s["thickening_pct"] is not None for s in result["segments"])
            assert 4.0 < result["global"]["ed_thickness_mean_mm"] < 16.0
