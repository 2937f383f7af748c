"""Real Sunnybrook cine DICOM: stacking by position (not SliceLocation), phase order, geometry, manual contours."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from cinema.io import read_dicom_study, read_sunnybrook_contours
from cinema.io.privacy import redact_pydicom_log

EXAMS = ["SCD0000301", "SCD0000401"]


def dicom_headers(exam_dir):
    """(path, dataset) of every DICOM file of an exam, pixels included."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [(path, pydicom.dcmread(path)) for path in sorted((exam_dir / "dicom").glob("*.dcm"))]


def expected_slice_and_phase(headers):
    """Independent bookkeeping: slice = rank of the position along the normal, phase = rank of TriggerTime."""
    orientation = np.array([float(v) for v in headers[0][1].ImageOrientationPatient])
    normal = np.cross(orientation[:3], orientation[3:])
    distance = {p: float(np.array([float(v) for v in d.ImagePositionPatient]) @ normal) for p, d in headers}
    levels = np.unique(np.round(list(distance.values()), 1))
    slice_of = {p: int(np.searchsorted(levels, round(distance[p], 1))) for p, _ in headers}
    phase_of = {}
    for k in range(len(levels)):
        members = sorted((float(d.TriggerTime), int(d.InstanceNumber), p) for p, d in headers if slice_of[p] == k)
        phase_of.update({p: t for t, (_, _, p) in enumerate(members)})
    return slice_of, phase_of


def dicom_world(dataset, i, j):
    position = np.array([float(v) for v in dataset.ImagePositionPatient])
    orientation = np.array([float(v) for v in dataset.ImageOrientationPatient])
    row_spacing, column_spacing = (float(v) for v in dataset.PixelSpacing)
    lps = position + i * column_spacing * orientation[:3] + j * row_spacing * orientation[3:]
    return lps * np.array([-1.0, -1.0, 1.0])


def assert_matches_dicom(affine, image, headers, tolerance_mm=1e-3):
    """Every DICOM image's pixels and voxel corners/centres agree with (affine, image)."""
    slice_of, phase_of = expected_slice_and_phase(headers)
    rows, columns = headers[0][1].Rows, headers[0][1].Columns
    points = [(-0.5, -0.5), (columns - 0.5, -0.5), (-0.5, rows - 0.5), (columns - 0.5, rows - 0.5), (0, 0)]
    points += [(columns - 1, rows - 1), (100.0, 37.0)]
    worst = 0.0
    for path, dataset in headers:
        k, t = slice_of[path], phase_of[path]
        np.testing.assert_array_equal(image[:, :, k, t], dataset.pixel_array.T, err_msg=str(path))
        for i, j in points:
            ours = affine[:3, :3] @ [i, j, k] + affine[:3, 3]
            worst = max(worst, float(np.abs(ours - dicom_world(dataset, i, j)).max()))
    assert worst < tolerance_mm
    return worst


@pytest.fixture(scope="module")
def exams(sunnybrook_dir):
    return {name: (read_dicom_study(sunnybrook_dir / name), dicom_headers(sunnybrook_dir / name)) for name in EXAMS}


@pytest.mark.parametrize("name", EXAMS)
def test_sunnybrook_stack(exams, name):
    study, headers = exams[name]
    sax = study.sax
    n_slices = sax.image.shape[2]
    assert sax.image.shape == (256, 256, n_slices, 20) and n_slices in (10, 11)
    assert n_slices * 20 == len(headers)
    assert sax.spacing[2] == pytest.approx(8.0, abs=0.01)
    assert np.all(np.diff(sax.frame_times_ms) > 0)
    assert study.metadata["warnings"] == [] and study.metadata["skipped"] == []
    # SliceLocation disagrees with the true 8 mm spacing: it must not have been used.
    locations = sorted({float(d.SliceLocation) for _, d in headers})
    assert abs(abs(locations[1] - locations[0]) - 8.0) > 1.0
    assert_matches_dicom(sax.affine, sax.image, headers)


@pytest.mark.parametrize("name", EXAMS)
def test_sunnybrook_contours_overlap_blood_pool(exams, sunnybrook_dir, name):
    study, _ = exams[name]
    exam_dir = sunnybrook_dir / name
    contours = read_sunnybrook_contours(exam_dir, study)
    assert len(contours) == len(list((exam_dir / "contours" / "i-contours").glob("*.txt")))
    assert sum("epi" in masks for masks in contours.values()) == len(
        list((exam_dir / "contours" / "o-contours").glob("*.txt"))
    )
    contrast, transposed_contrast = [], []
    for (k, t), masks in contours.items():
        image = study.sax.image[:, :, k, t]
        endo = masks["endo"]
        assert endo.shape == (256, 256) and endo.sum() > 100
        if "epi" in masks:
            assert (endo & ~masks["epi"]).sum() <= 0.01 * endo.sum()  # the epicardium encloses the cavity
            ring = masks["epi"] & ~endo
        else:
            ring = ndimage.binary_dilation(endo, iterations=5) & ~endo
        assert image[endo].mean() > image[ring].mean(), (k, t)
        contrast.append(image[endo].mean() - image[ring].mean())
        ring_t = ndimage.binary_dilation(endo.T, iterations=5) & ~endo.T
        transposed_contrast.append(image[endo.T].mean() - image[ring_t].mean())
    # With x and y swapped the masks would miss the blood pool: the axis convention is what makes it work.
    assert np.mean(contrast) > 2 * np.mean(transposed_contrast)


def test_rasterise_polygon_axes_and_bounds():
    from cinema.io.sunnybrook import rasterise_polygon

    square = np.array([[1.5, 0.5], [4.5, 0.5], [4.5, 2.5], [1.5, 2.5]])  # x 2..4 (columns), y 1..2 (rows)
    mask = rasterise_polygon(square, (8, 6))
    assert mask.shape == (8, 6)
    assert sorted(zip(*np.nonzero(mask), strict=True)) == [(i, j) for i in (2, 3, 4) for j in (1, 2)]
    assert not rasterise_polygon(square - 50, (8, 6)).any()


def test_pydicom_log_never_shows_a_header_value(sunnybrook_dir, caplog):
    # These GE files hold UIDs pydicom calls invalid (leading zeros), and pydicom logs the value itself.
    exam = sunnybrook_dir / "SCD0000301" / "dicom"
    first = sorted(p for p in exam.rglob("*") if p.is_file())[0]
    uids = {str(e.value) for e in pydicom.dcmread(first, stop_before_pixels=True).iterall() if e.VR == "UI"}
    logging.getLogger("pydicom").filters.clear()  # a fresh filter: earlier tests' messages were already said once
    redact_pydicom_log()
    with caplog.at_level("DEBUG", logger="pydicom"):
        read_dicom_study(exam)
    pydicom_lines = [r.getMessage() for r in caplog.records if r.name.startswith("pydicom")]
    assert any("Invalid value for VR UI" in line for line in pydicom_lines)  # the case this guards happened
    assert len(pydicom_lines) == len(set(pydicom_lines))  # said once, not once per file
    assert not [uid for uid in uids if len(uid) > 8 and uid in caplog.text]
