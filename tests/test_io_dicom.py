"""DICOM folder reading on generated series: view grouping, slice/phase ordering, geometry, policies, bad input."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from dicom_factory import PHI, SAX_ORIENTATION, pixel_value, write_cine_series

from cinema.io import read_dicom_study, read_study
from cinema.io.dicom import view_from_description


def _dicom_world(dataset: pydicom.Dataset, i: float, j: float) -> np.ndarray:
    """RAS world position of pixel (column i, row j) straight from the DICOM header (LPS -> RAS)."""
    position = np.array([float(v) for v in dataset.ImagePositionPatient])
    orientation = np.array([float(v) for v in dataset.ImageOrientationPatient])
    row_spacing, column_spacing = (float(v) for v in dataset.PixelSpacing)
    lps = position + i * column_spacing * orientation[:3] + j * row_spacing * orientation[3:]
    return lps * np.array([-1.0, -1.0, 1.0])


def _normal(orientation=SAX_ORIENTATION) -> np.ndarray:
    row, col = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    row = row / np.linalg.norm(row)
    col = col - (col @ row) * row
    return np.cross(row, col / np.linalg.norm(col))


def test_sax_stack_ordering_pixels_and_world_geometry(tmp_path):
    files = write_cine_series(tmp_path, n_slices=4, n_phases=5, description="", rescale=(2.0, -10.0))
    (tmp_path / "notes.txt").write_text("not DICOM")
    study = read_dicom_study(tmp_path)
    assert study.view_names == ["sax"]
    sax = study.sax
    assert sax.image.shape == (12, 16, 4, 5)  # (columns, rows, slices, phases)
    assert sax.spacing == pytest.approx((1.25, 1.5, 8.0), abs=1e-6)
    for k in range(4):
        for t in range(5):
            np.testing.assert_array_equal(sax.image[:, :, k, t], 2.0 * pixel_value(k, t, 16, 12).T - 10.0)
    # Every file's pixels land where its own header puts them in the world.
    for path in files:
        dataset = pydicom.dcmread(path)
        k = int(dataset.InstanceNumber - 1) // 5
        for i, j in [(0, 0), (11, 0), (0, 15), (11, 15), (5.5, 7.25)]:
            np.testing.assert_allclose(sax.voxel_to_world([i, j, k]), _dicom_world(dataset, i, j), atol=1e-4)
    assert study.metadata["views"]["sax"]["trigger_times_ms"][2] == pytest.approx([6, 46, 86, 126, 166])
    assert sax.frame_times_ms == pytest.approx([4.5, 44.5, 84.5, 124.5, 164.5])  # median over the 4 slices


def test_slices_sorted_along_normal_not_by_file_order(tmp_path):
    # Written from the highest position downwards: slice index 0 must be the lowest along the normal.
    write_cine_series(tmp_path, n_slices=3, n_phases=3, slice_spacing=-7.0)
    sax = read_dicom_study(tmp_path).sax
    np.testing.assert_allclose(sax.affine[:3, 2] * [-1, -1, 1], 7.0 * _normal(), atol=1e-6)
    np.testing.assert_array_equal(sax.image[:, :, 0, 0], pixel_value(2, 0, 16, 12).T)


def test_phases_follow_trigger_time_not_instance_number(tmp_path):
    write_cine_series(tmp_path, n_slices=2, n_phases=4, trigger_times=lambda k, t: 400.0 - 90.0 * t + k)
    study = read_dicom_study(tmp_path)
    assert study.sax.frame_times_ms == pytest.approx([130.5, 220.5, 310.5, 400.5])
    np.testing.assert_array_equal(study.sax.image[:, :, 1, 0], pixel_value(1, 3, 16, 12).T)


def test_unequal_phase_counts_truncate_with_warning(tmp_path):
    write_cine_series(tmp_path, n_slices=3, n_phases=[5, 4, 5])
    study = read_dicom_study(tmp_path)
    assert study.sax.n_frames == 4
    assert any("unequal phase counts" in w and "[5, 4, 5]" in w for w in study.metadata["warnings"])


def test_lax_views_by_description_and_unnamed_single_slice_skipped(tmp_path):
    write_cine_series(tmp_path, n_slices=3, n_phases=4)
    write_cine_series(tmp_path, view="lax_2c", series_number=2, description="CINE_segmented_LAX_2Ch")
    write_cine_series(tmp_path, view="lax_3c", series_number=3, description="cine LVOT")
    write_cine_series(tmp_path, view="lax_4c", series_number=4, description="4 CH cine", slice_thickness=6.0)
    write_cine_series(tmp_path, view="lax_4c", series_number=5, description="cine tf2d")
    study = read_dicom_study(tmp_path)
    assert study.view_names == ["sax", "lax_2c", "lax_3c", "lax_4c"]
    lax = study.views["lax_4c"]
    assert lax.image.shape == (12, 16, 4)
    assert lax.spacing == pytest.approx((1.25, 1.5, 6.0), abs=1e-6)
    np.testing.assert_array_equal(lax.image[..., 2], pixel_value(0, 2, 16, 12).T)
    assert any("cine tf2d" in s and "does not name a view" in s for s in study.metadata["skipped"])
    used = {r["series_number"]: r["used_as"] for r in study.metadata["series"]}
    assert used == {1: "sax", 2: "lax_2c", 3: "lax_3c", 4: "lax_4c", 5: None}


def test_one_series_per_slice_is_merged_into_one_stack(tmp_path):
    normal = _normal()
    origin = np.array([-30.0, -200.0, 110.0])
    for k in (2, 0, 3, 1):
        write_cine_series(
            tmp_path,
            n_slices=1,
            n_phases=3,
            origin=origin + 10.0 * k * normal,
            description=f"CINE_segmented_SAX_b{k + 1}",
            series_number=10 + k,
            values=lambda _, t, r, c, k=k: pixel_value(k, t, r, c),
        )
    study = read_dicom_study(tmp_path)
    assert study.sax.image.shape == (12, 16, 4, 3)
    assert study.sax.spacing[2] == pytest.approx(10.0, abs=1e-5)
    for k in range(4):
        np.testing.assert_array_equal(study.sax.image[:, :, k, 1], pixel_value(k, 1, 16, 12).T)


def test_repeated_slice_keeps_latest_series(tmp_path):
    write_cine_series(tmp_path, n_slices=3, n_phases=3, series_number=1, description="sax")
    write_cine_series(
        tmp_path,
        n_slices=1,
        n_phases=3,
        series_number=7,
        description="sax",
        values=lambda k, t, r, c: np.full((r, c), 9),
    )
    study = read_dicom_study(tmp_path)
    assert study.sax.image.shape[2:] == (3, 3)
    assert (study.sax.image[:, :, 0, :] == 9).all()
    assert any("kept the latest" in w for w in study.metadata["warnings"])


def test_phi_only_with_keep_phi(tmp_path):
    write_cine_series(tmp_path, n_slices=2, n_phases=3)
    text = repr(read_dicom_study(tmp_path).metadata)
    assert not any(value in text for value in PHI.values())
    kept = read_dicom_study(tmp_path, keep_phi=True).metadata["patient"]
    assert kept["PatientID"] == PHI["PatientID"] and kept["InstitutionName"] == PHI["InstitutionName"]


@pytest.mark.parametrize(
    ("description", "view"),
    [
        ("CINE_segmented_SAX_b7", "sax"),
        ("SA cine", "sax"),
        ("short axis stack", "sax"),
        ("cine_2ch", "lax_2c"),
        ("CINE_segmented_LAX_4Ch", "lax_4c"),
        ("3-chamber", "lax_3c"),
        ("LVOT", "lax_3c"),
        ("HLA cine", "lax_4c"),
        ("lax cine", None),
        ("", None),
        ("tf2d15_retro_iPAT", None),
    ],
)
def test_view_from_description(description, view):
    assert view_from_description(description) == view


# ------------------------------------------------------------------------------------------------- bad input


def _truncate_one(files):
    victim = files[len(files) // 2]
    victim.write_bytes(victim.read_bytes()[:700])
    return victim


def _rotate_one(files):
    victim = files[-1]
    dataset = pydicom.dcmread(victim)
    dataset.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    dataset.save_as(victim)
    return victim


def _garbage_with_preamble(files):
    victim = files[0].with_name("zz_garbage.dcm")
    victim.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\x7fgarbage")
    return victim


def _nan_rescale(files):
    victim = files[0]
    dataset = pydicom.dcmread(victim)
    dataset["RescaleSlope"] = pydicom.DataElement(0x00281053, "DS", "NaN", validation_mode=0)
    dataset.RescaleIntercept = "0"
    dataset.save_as(victim)
    return victim


@pytest.mark.parametrize(
    ("series", "damage", "message"),
    [
        ({}, _truncate_one, "pixel data|unreadable"),
        ({}, _garbage_with_preamble, "unreadable DICOM"),
        ({}, _rotate_one, "mixed orientations"),
        ({}, _nan_rescale, "not finite"),
        ({"n_phases": 1}, None, "single-phase"),
        ({"pixel_spacing": (0.0, 1.25)}, None, "zero or negative pixel spacing"),
        ({"pixel_spacing": (1.5, -1.25)}, None, "zero or negative pixel spacing"),
        ({"n_slices": 4, "slice_spacing": [8.0, 8.0, 16.0]}, None, "gaps are not uniform"),
        ({"in_plane_offsets": [(0, 0, 0), (0, 0, 0), 4.0 * np.array(SAX_ORIENTATION[:3])]}, None, "straight line"),
    ],
)
def test_bad_series_raise_one_clear_error_naming_a_file(tmp_path, series, damage, message):
    files = write_cine_series(tmp_path, **{"n_phases": 3, **series})
    victim = damage(files) if damage else None
    with pytest.raises(ValueError, match=message) as info:
        read_dicom_study(tmp_path)
    text = str(info.value)
    assert "\n" not in text
    assert str(victim or tmp_path) in text


def test_mixed_orientation_between_sax_series(tmp_path):
    write_cine_series(tmp_path, n_slices=2, n_phases=3, series_number=1)
    write_cine_series(tmp_path, n_slices=2, n_phases=3, series_number=2, orientation=(1, 0, 0, 0, 1, 0))
    with pytest.raises(ValueError, match="mixed orientations inside one sax stack"):
        read_dicom_study(tmp_path)


def test_folder_without_cine(tmp_path):
    (tmp_path / "readme.txt").write_text("nothing here")
    with pytest.raises(ValueError, match="no DICOM files"):
        read_dicom_study(tmp_path)
    with pytest.raises(FileNotFoundError):
        read_dicom_study(tmp_path / "absent")


def test_single_dicom_file_is_not_a_study(tmp_path):
    files = write_cine_series(tmp_path, n_slices=2, n_phases=2)
    with pytest.raises(ValueError, match="single file is not a cine study"):
        read_study(files[0])


def test_unnamed_series_with_several_orientations_is_skipped_not_stacked(tmp_path):
    files = write_cine_series(tmp_path / "exam", n_slices=2, n_phases=3, description="", series_number=3)
    _rotate_one(files)
    with pytest.raises(ValueError, match="mixed orientations"):
        read_dicom_study(tmp_path / "exam")  # nothing else to read: the reason is reported
    write_cine_series(tmp_path / "exam", n_slices=3, n_phases=3, series_number=1)
    study = read_dicom_study(tmp_path / "exam")
    assert study.sax.image.shape[2:] == (3, 3)
    assert any("several orientations" in s for s in study.metadata["skipped"])
