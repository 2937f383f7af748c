"""Acquisition shifts of whole exams: world geometry stays true, labels follow the image, seeds reproduce, and each
shift changes what it claims to."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from cinema.io import read_acdc_patient
from cinema.io.study import SAX, Study
from cinema.metrics import ventricular_function
from cinema.preprocess.shifts import (
    SHIFTS,
    bias_field,
    blur,
    flip_grid,
    gamma_contrast,
    in_plane_resolution,
    partial_coverage,
    random_shift,
    rician_noise,
    rotate_grid,
    slice_gaps,
    thick_slices,
)

GRID_SHIFTS = {
    "in_plane_0.7mm": lambda s: in_plane_resolution(s, 0.7),
    "in_plane_2.5mm": lambda s: in_plane_resolution(s, 2.5),
    "rotation": lambda s: rotate_grid(s, 37.0),
    "flip_x": lambda s: flip_grid(s, 0),
    "flip_y": lambda s: flip_grid(s, 1),
}


@pytest.fixture(scope="module")
def study(acdc_dir: Path) -> Study:
    return read_acdc_patient(acdc_dir / "patient003")


@pytest.fixture(scope="module")
def label_image_study(study: Study) -> Study:
    """The exam with its image replaced by its labels x 100: any resampling must keep image and labels together."""
    view = study.sax
    image = np.stack([view.labels[f].astype(np.float32) * 100 for f in (study.ed_frame, study.es_frame)], axis=-1)
    labels = {0: view.labels[study.ed_frame], 1: view.labels[study.es_frame]}
    return dataclasses.replace(study, views={SAX: dataclasses.replace(view, image=image, labels=labels)})


def _world_centroid(study: Study, label: int, frame: int) -> np.ndarray:
    ijk = np.argwhere(study.sax.labels[frame] == label).astype(np.float64)
    return study.sax.voxel_to_world(ijk).mean(axis=0)


def _volumes(study: Study) -> dict[str, float]:
    view = study.sax
    return ventricular_function(view.labels[study.ed_frame], view.labels[study.es_frame], view.spacing)


@pytest.mark.parametrize("name", list(GRID_SHIFTS))
def test_grid_shifts_keep_world_geometry_and_labels_follow_the_image(label_image_study: Study, name: str) -> None:
    shifted = GRID_SHIFTS[name](label_image_study)
    view = shifted.sax
    assert view.image.shape[:3] == view.labels[0].shape
    # the linearly resampled label image and the nearest-neighbour labels agree almost everywhere
    agree = np.rint(view.image[..., 0] / 100) == view.labels[0]
    assert agree.mean() > 0.98
    for label in (1, 2, 3):
        moved = np.linalg.norm(_world_centroid(shifted, label, 0) - _world_centroid(label_image_study, label, 0))
        assert moved < 1.0, f"{name}: class {label} moved {moved:.2f} mm in the world"
    before, after = _volumes(label_image_study), _volumes(shifted)
    for key in ("lv_edv", "rv_edv", "lv_esv"):
        assert after[key] == pytest.approx(before[key], rel=0.03), key


def test_slice_subsets_keep_every_kept_voxel_in_place(study: Study) -> None:
    view = study.sax
    gapped = slice_gaps(study, step=2, start=1).sax
    assert gapped.spatial_shape[2] == (view.spatial_shape[2]) // 2
    assert gapped.spacing[2] == pytest.approx(2 * view.spacing[2])
    np.testing.assert_array_equal(gapped.image[:, :, 1], view.image[:, :, 3])
    np.testing.assert_allclose(gapped.voxel_to_world(np.array([5, 7, 1])), view.voxel_to_world(np.array([5, 7, 3])))
    cut = partial_coverage(study, 2, 1).sax
    assert cut.spatial_shape[2] == view.spatial_shape[2] - 3
    np.testing.assert_array_equal(cut.labels[study.ed_frame][:, :, 0], view.labels[study.ed_frame][:, :, 2])
    np.testing.assert_allclose(cut.voxel_to_world(np.array([3, 4, 0])), view.voxel_to_world(np.array([3, 4, 2])))
    with pytest.raises(ValueError):
        partial_coverage(study, 5, view.spatial_shape[2] - 5)


def test_intensity_shifts_change_the_image_only(study: Study) -> None:
    view = study.sax
    rng = np.random.default_rng(0)
    image = view.image
    heart = view.labels[study.ed_frame] > 0
    for shifted in (
        bias_field(study, 0.5, rng),
        gamma_contrast(study, 1.8),
        rician_noise(study, 0.05, rng),
        blur(study, 1.2),
        thick_slices(study, 0.4),
    ):
        out = shifted.sax
        np.testing.assert_array_equal(out.affine, view.affine)
        assert out.labels.keys() == view.labels.keys()
        assert all(np.array_equal(out.labels[f], view.labels[f]) for f in view.labels)
        assert out.image.shape == image.shape and out.image.dtype == np.float32
        assert not np.allclose(out.image, image)
    # bias field: a smooth, non-constant gain, the same for both frames
    field = bias_field(study, 0.5, np.random.default_rng(1)).sax.image
    ratio = np.log(field[image > 20] / image[image > 20])
    assert ratio.std() > 0.05 and np.abs(ratio).max() <= 0.5 + 1e-4
    # gamma > 1 darkens mid-tones and keeps their order
    darker = gamma_contrast(study, 1.8).sax.image
    assert darker[heart, 0].mean() < image[heart, 0].mean()
    assert np.all(np.diff(darker.ravel()[np.argsort(image.ravel(), kind="stable")]) >= -1e-3)
    # Rician noise lifts the dark background (magnitude noise is never negative)
    noisy = rician_noise(study, 0.05, np.random.default_rng(2)).sax.image
    dark = image < np.percentile(image, 10)
    assert noisy[dark].mean() > image[dark].mean() + 1 and noisy.min() >= 0
    # blur lowers in-plane gradients and leaves the slices apart
    blurred = blur(study, 1.2).sax.image
    assert np.abs(np.diff(blurred, axis=0)).mean() < 0.8 * np.abs(np.diff(image, axis=0)).mean()
    # thick slices mix each slice with its neighbours: adjacent slices become more alike
    thick = thick_slices(study, 0.4).sax.image
    assert np.abs(np.diff(thick, axis=2)).mean() < np.abs(np.diff(image, axis=2)).mean()


def test_grid_shifts_change_the_grid(study: Study) -> None:
    view = study.sax
    rotated = rotate_grid(study, 45.0).sax
    assert rotated.spatial_shape[0] > view.spatial_shape[0] * 1.35  # the whole rotated field of view is kept
    assert np.linalg.det(rotated.affine[:3, :3]) == pytest.approx(np.linalg.det(view.affine[:3, :3]))
    flipped = flip_grid(study, 0).sax
    assert np.linalg.det(flipped.affine[:3, :3]) == pytest.approx(-np.linalg.det(view.affine[:3, :3]))
    np.testing.assert_array_equal(flipped.image[::-1], view.image)
    coarse = in_plane_resolution(study, 2.5).sax
    assert coarse.spacing[:2] == pytest.approx((2.5, 2.5)) and coarse.spacing[2] == pytest.approx(view.spacing[2])


@pytest.mark.parametrize("name", list(SHIFTS))
def test_random_shifts_are_deterministic_per_seed(study: Study, name: str) -> None:
    first = random_shift(study, name, np.random.default_rng(7)).sax
    again = random_shift(study, name, np.random.default_rng(7)).sax
    np.testing.assert_array_equal(first.image, again.image)
    np.testing.assert_array_equal(first.affine, again.affine)
    assert all(np.array_equal(first.labels[f], again.labels[f]) for f in first.labels)
    differs = [
        not np.array_equal(random_shift(study, name, np.random.default_rng(seed)).sax.image, first.image)
        for seed in (8, 9, 10)
    ]
    fixed = {"in_plane_0.7mm", "in_plane_2.5mm"}  # no random parameter
    assert any(differs) == (name not in fixed)


def test_unknown_shift_is_an_error(study: Study) -> None:
    with pytest.raises(ValueError, match="unknown shift"):
        random_shift(study, "vendor_x", np.random.default_rng(0))
