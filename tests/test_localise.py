"""Label-free heart localisation: synthetic beating hearts, LAX plane geometry, and crop coverage on real data."""

from __future__ import annotations

import numpy as np
import pytest

from cinema.io import CineView, Study, read_acdc_patient, read_dicom_study, read_sunnybrook_contours
from cinema.preprocess import (
    crop_coverage,
    from_model_space,
    lax_plane_center,
    locate_heart,
    locate_study_heart,
    model_space_transform,
    view_to_model_space,
)


def beating_phantom(center_index=(150.0, 70.0), n_frames=2, shape=(220, 200, 8), seed=0) -> np.ndarray:
    """Static anatomy and noise, plus a bright ventricle whose radius changes over the cycle at ``center_index``."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    body = ((x - shape[0] / 2) / (0.45 * shape[0])) ** 2 + ((y - shape[1] / 2) / (0.45 * shape[1])) ** 2 < 1
    static = 300.0 * body + 200.0 * (np.hypot(x - 40, y - 150) < 15)  # a bright static structure, not the heart
    radius = 14 + 6 * np.cos(2 * np.pi * np.arange(n_frames) / n_frames)
    distance = np.hypot(x - center_index[0], y - center_index[1])
    cine = np.empty(shape + (n_frames,), np.float32)
    for t in range(n_frames):
        frame = static + 600.0 * (distance < radius[t])
        cine[..., t] = frame[:, :, None] + rng.normal(0, 40, size=shape)
    return cine


@pytest.mark.parametrize("n_frames", [2, 20])
def test_finds_an_off_centre_beating_ventricle(n_frames):
    affine = np.diag([1.5, 1.5, 10.0, 1.0])
    affine[:3, 3] = [-120.0, 30.0, 5.0]
    cine = beating_phantom(n_frames=n_frames)
    location = locate_heart(cine, affine)
    assert not location.fallback and location.method == "motion" and location.confidence > 2.0
    error_mm = np.linalg.norm((location.center_index[:2] - [150.0, 70.0]) * 1.5)
    assert error_mm < 10.0
    np.testing.assert_allclose(location.center_mm, affine[:3, :3] @ location.center_index + affine[:3, 3])
    # A list of frames is the same input.
    listed = locate_heart([cine[..., t] for t in range(n_frames)], affine)
    np.testing.assert_allclose(listed.center_mm, location.center_mm)


def test_without_motion_falls_back_to_the_image_centre():
    affine = np.diag([1.5, 1.5, 10.0, 1.0])
    rng = np.random.default_rng(1)
    static = np.repeat(beating_phantom(n_frames=2)[..., :1], 2, axis=-1) + rng.normal(0, 40, (220, 200, 8, 2))
    for cine in (static, static[..., 0]):  # pure noise changes only, then a single frame
        location = locate_heart(cine, affine)
        assert location.fallback and location.method == "image_centre" and location.confidence < 2.0
        np.testing.assert_allclose(location.center_index, [109.5, 99.5, 3.5])


def test_bad_localisation_input_is_rejected():
    with pytest.raises(ValueError, match="cine"):
        locate_heart(np.zeros((10, 10)), np.eye(4))
    with pytest.raises(ValueError, match="different shapes"):
        locate_heart([np.zeros((10, 10, 2)), np.zeros((10, 9, 2))], np.eye(4))
    with pytest.raises(ValueError, match="finite"):
        locate_heart(np.full((10, 10, 2, 2), np.nan), np.eye(4))
    with pytest.raises(ValueError, match="4x4"):
        locate_heart(np.zeros((10, 10, 2, 2)), np.eye(3))


def plane_affine(origin, u, v, spacing=1.5, thickness=6.0) -> np.ndarray:
    u, v = np.asarray(u, float) / np.linalg.norm(u), np.asarray(v, float) / np.linalg.norm(v)
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1] = spacing * u, spacing * v
    affine[:3, 2] = thickness * np.cross(u, v)
    affine[:3, 3] = origin
    return affine


def long_axis_geometry():
    """Two LAX planes through a long axis (point p, direction d), and an oblique SAX stack across it."""
    p, d = np.array([10.0, -20.0, 35.0]), np.array([0.3, -0.4, 0.866])
    d /= np.linalg.norm(d)
    a = np.cross(d, [1.0, 0.0, 0.0])
    b = np.cross(d, a)
    lax_4c = plane_affine(p - 80 * d + 5 * a, d, a)
    lax_2c = plane_affine(p + 30 * d - 7 * b, b, d)
    sax = np.eye(4)
    sax[:3, 0], sax[:3, 1] = 1.4 * a / np.linalg.norm(a), 1.4 * b / np.linalg.norm(b)
    sax[:3, 2] = 10.0 * d
    sax[:3, 3] = p - sax[:3, :3] @ np.array([100.0, 90.0, 4.0])  # mid-slice index 4 passes through p
    return p, sax, lax_2c, lax_4c


def test_lax_plane_intersection_crosses_the_mid_sax_slice_on_the_long_axis():
    p, sax, lax_2c, lax_4c = long_axis_geometry()
    center = lax_plane_center((200, 180, 9), sax, [lax_2c, lax_4c])
    np.testing.assert_allclose(center, p, atol=1e-6)
    assert lax_plane_center((200, 180, 9), sax, [lax_4c]) is None
    assert lax_plane_center((200, 180, 9), sax, [lax_4c, lax_4c]) is None


def test_study_falls_back_to_lax_planes_when_the_sax_cine_is_static():
    p, sax_affine, lax_2c, lax_4c = long_axis_geometry()
    rng = np.random.default_rng(2)
    still = np.repeat(rng.normal(100, 5, size=(200, 180, 9, 1)).astype(np.float32), 3, axis=-1)
    views = {"sax": CineView(image=still, affine=sax_affine, name="sax")}
    study = Study(views=dict(views))
    assert locate_study_heart(study).method == "image_centre"
    for name, affine in (("lax_2c", lax_2c), ("lax_4c", lax_4c)):
        views[name] = CineView(image=np.ones((64, 64, 3), np.float32), affine=affine, name=name)
    location = locate_study_heart(Study(views=views))
    assert location.method == "lax_planes" and not location.fallback
    np.testing.assert_allclose(location.center_mm, p, atol=1e-6)


@pytest.mark.slow
def test_acdc_crop_keeps_every_heart_voxel(acdc_dir):
    """Every shared ACDC patient, ED and ES: >= 99.5 % of RV+MYO+LV voxels inside the label-free 192 x 192 mm crop."""
    patients = sorted(acdc_dir.glob("patient*"))
    assert len(patients) == 80
    worst = 1.0
    for folder in patients:
        study = read_acdc_patient(folder)
        sax = study.sax
        location = locate_heart(sax.image, sax.affine)
        assert not location.fallback, folder.name
        transform = model_space_transform(sax.spatial_shape, sax.affine, "sax", center_mm=location.center_mm)
        assert len(sax.labels) == 2
        for labels in sax.labels.values():
            coverage = crop_coverage(labels > 0, transform)
            assert coverage >= 0.995, (folder.name, coverage)
            worst = min(worst, coverage)
    assert worst >= 0.995


def test_sunnybrook_crop_keeps_the_contoured_lv(sunnybrook_dir):
    """Both Sunnybrook cines (20 phases): every contoured LV voxel (endo and epi, all contoured phases) in the crop."""
    for exam in ("SCD0000301", "SCD0000401"):
        study = read_dicom_study(sunnybrook_dir / exam)
        contours = read_sunnybrook_contours(sunnybrook_dir / exam, study)
        sax = study.sax
        location = locate_heart(sax.image, sax.affine)
        assert not location.fallback, exam
        transform = model_space_transform(sax.spatial_shape, sax.affine, "sax", center_mm=location.center_mm)
        lv = np.zeros(sax.image.shape, bool)
        for (slice_index, frame), masks in contours.items():
            lv[:, :, slice_index, frame] |= masks["endo"] | masks.get("epi", masks["endo"])
        assert lv.sum() > 10_000
        assert crop_coverage(lv, transform) >= 0.995, exam


def test_study_view_to_model_space_and_back_on_acdc(acdc_dir):
    study = read_acdc_patient(acdc_dir / "patient001")
    prepared = view_to_model_space(study)
    assert prepared.image.shape == (192, 192, 16, 2) and prepared.image.dtype == np.float32
    assert prepared.location is not None and prepared.location.method == "motion"
    assert prepared.frames == [0, 1] and set(prepared.labels) == {0, 1}
    for frame, model_labels in prepared.labels.items():
        native = study.sax.labels[frame]
        back = from_model_space(model_labels, prepared.transform)
        assert back.shape == native.shape
        for value in (1, 2, 3):
            both = ((back == value) & (native == value)).sum()
            assert 2 * both / ((back == value).sum() + (native == value).sum()) >= 0.97
    es_only = view_to_model_space(study, frames=[study.es_frame], center_mm=None, intensity="cine")
    assert es_only.image.shape == (192, 192, 16, 1) and es_only.location is None
    with pytest.raises(ValueError, match="stored frames"):
        view_to_model_space(study, frames=[5])
