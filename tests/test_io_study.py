"""The Study / CineView model: validation on construction and geometry helpers."""

from __future__ import annotations

import numpy as np
import pytest

from cinema.io import CineView, Study, view_name_for


def _affine(spacing=(1.5, 1.25, 8.0)) -> np.ndarray:
    rotation = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rotation * np.asarray(spacing)
    affine[:3, 3] = [10.0, -20.0, 30.0]
    return affine


def test_sax_view_properties_and_geometry():
    image = np.arange(4 * 5 * 3 * 6, dtype=np.int16).reshape(4, 5, 3, 6)
    view = CineView(image=image, affine=_affine(), frame_times_ms=[0, 40, 80, 120, 160, 200])
    assert view.image.dtype == np.float32
    assert view.spatial_shape == (4, 5, 3)
    assert view.n_frames == 6
    assert view.spacing == pytest.approx((1.5, 1.25, 8.0))
    assert view.as_4d().shape == (4, 5, 3, 6)
    np.testing.assert_array_equal(view.frame(2), image[..., 2])
    ijk = np.array([[0, 0, 0], [3, 4, 2], [1.5, 2.5, 0.5]])
    world = view.voxel_to_world(ijk)
    np.testing.assert_allclose(world[0], [10.0, -20.0, 30.0])
    np.testing.assert_allclose(world[1], [10.0 - 4 * 1.25, -20.0 + 3 * 1.5, 30.0 + 16.0])
    np.testing.assert_allclose(view.world_to_voxel(world), ijk, atol=1e-12)


def test_lax_view_is_single_slice_with_time_last():
    view = CineView(image=np.zeros((6, 7, 3)), affine=_affine((1.0, 1.0, 6.0)), name="lax_4c")
    assert view.spatial_shape == (6, 7)
    assert view.n_frames == 3
    assert view.as_4d().shape == (6, 7, 1, 3)
    assert view.spacing[2] == pytest.approx(6.0)


def test_labels_are_uint8_and_checked():
    label = np.zeros((4, 5, 3))
    label[1, 1, 1] = 3
    view = CineView(image=np.zeros((4, 5, 3, 2)), affine=_affine(), labels={1: label})
    assert view.labels[1].dtype == np.uint8 and view.labels[1][1, 1, 1] == 3
    with pytest.raises(ValueError, match="shape"):
        CineView(image=np.zeros((4, 5, 3, 2)), affine=_affine(), labels={0: np.zeros((4, 5, 2))})
    with pytest.raises(ValueError, match="frame 2"):
        CineView(image=np.zeros((4, 5, 3, 2)), affine=_affine(), labels={2: label})
    with pytest.raises(ValueError, match="integers"):
        CineView(image=np.zeros((4, 5, 3, 2)), affine=_affine(), labels={0: label + 0.5})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"image": np.zeros((4, 5, 3))}, "4-D"),
        ({"image": np.zeros((4, 5, 3, 2)), "name": "lax_2c"}, "3-D"),
        ({"image": np.full((4, 5, 3, 2), np.nan)}, "NaN"),
        ({"affine": _affine((1.0, 0.0, 8.0))}, "spacing must be positive"),
        ({"affine": np.full((4, 4), np.nan)}, "finite 4x4"),
        ({"frame_times_ms": [0.0]}, "1 frame times for 2 frames"),
        ({"frame_indices": [3, 3]}, "distinct"),
        ({"name": "lax_5c"}, "unknown view"),
        ({"image": np.zeros((4, 0, 3, 2))}, "empty axis"),
    ],
)
def test_invalid_views_raise_clear_errors(kwargs, message):
    arguments = {"image": np.zeros((4, 5, 3, 2)), "affine": _affine(), "source": "case.nii.gz"}
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message) as info:
        CineView(**arguments)
    assert "case.nii.gz" in str(info.value)


def test_study_checks_views_and_ed_es():
    sax = CineView(image=np.zeros((4, 5, 3, 2)), affine=_affine())
    study = Study(views={"sax": sax}, ed_frame=0, es_frame=1)
    assert study.sax is sax and study.view_names == ["sax"]
    with pytest.raises(ValueError, match="ES frame 2"):
        Study(views={"sax": sax}, ed_frame=0, es_frame=2)
    with pytest.raises(ValueError, match="named 'sax'"):
        Study(views={"lax_4c": sax})
    with pytest.raises(ValueError, match="at least one view"):
        Study(views={})
    with pytest.raises(ValueError, match="no lax_4c view"):
        study.view("lax_4c")


def test_view_name_aliases():
    assert view_name_for("4CH") == "lax_4c"
    assert view_name_for("sa") == "sax"
    assert view_name_for("lax-2c") == "lax_2c"
    with pytest.raises(ValueError, match="unknown view"):
        view_name_for("axial")
