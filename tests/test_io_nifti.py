"""NIfTI reading/writing: real preprocessed examples, label writer, round trips and bad files."""

from __future__ import annotations

import gzip
import io

import nibabel as nib
import numpy as np
import pytest

from cinema.io import CineView, read_label_nifti, read_nifti_cine, read_study, write_cine_nifti, write_label_nifti
from cinema.io.nifti import LABEL_MAP_DESCRIPTION, guess_view_name, is_cinema_label_nifti, write_nifti


def _oblique_affine() -> np.ndarray:
    angle = 0.3
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([1.37, 1.37, 8.0])
    affine[:3, 3] = [-61.25, 120.5, -33.125]
    return affine


def test_preprocessed_examples_read_as_views(preprocessed_dir):
    paths = sorted(preprocessed_dir.glob("*/*.nii.gz"))
    assert len(paths) == 8
    for path in paths:
        view = read_nifti_cine(path)
        reference = nib.load(str(path))
        data = np.asanyarray(reference.dataobj)
        assert view.n_frames == 1
        np.testing.assert_allclose(view.affine, reference.affine)
        if path.name.startswith("lax_4c"):
            assert view.name == "lax_4c" and view.spatial_shape == (256, 256)
            np.testing.assert_array_equal(view.image[..., 0], data[:, :, 0])
        else:
            assert view.name == "sax" and view.spatial_shape[:2] == (192, 192)
            assert view.spacing == pytest.approx((1.0, 1.0, 10.0))
            np.testing.assert_array_equal(view.image[..., 0], data)
        assert 0 <= view.image.min() and view.image.max() <= 255
        study = read_study(path)
        assert study.view_names == [view.name]


def test_cine_round_trip_keeps_data_geometry_and_frame_step(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(-100, 900, size=(9, 7, 4, 5)).astype(np.float32)
    view = CineView(image=image, affine=_oblique_affine(), frame_times_ms=[0, 45, 90, 135, 180])
    path = write_cine_nifti(view, tmp_path / "sax.nii.gz")
    stored = nib.load(str(path))
    assert stored.get_data_dtype() == np.int16  # integer intensities are stored losslessly and compactly
    back = read_nifti_cine(path)
    np.testing.assert_array_equal(back.image, image)
    np.testing.assert_allclose(back.affine, view.affine, atol=1e-4)
    assert back.frame_times_ms == pytest.approx([0, 45, 90, 135, 180])
    assert list(tmp_path.iterdir()) == [path]  # no temporary files left behind


def test_float_images_are_stored_as_float32(tmp_path):
    image = np.linspace(0, 1, 2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)
    path = write_nifti(image, np.eye(4), tmp_path / "f.nii.gz")
    assert nib.load(str(path)).get_data_dtype() == np.float32
    np.testing.assert_array_equal(read_nifti_cine(path, view="sax").image, image)


def test_write_label_nifti_is_uint8_with_exact_geometry(tmp_path):
    labels = np.zeros((9, 7, 4), dtype=np.int64)
    labels[2:5, 1:4, 1] = 3
    labels[0, 0, 0] = 1
    affine = _oblique_affine()
    path = write_label_nifti(labels, affine, tmp_path / "mask.nii.gz")
    stored = nib.load(str(path))
    assert stored.get_data_dtype() == np.uint8
    assert stored.shape == labels.shape
    np.testing.assert_allclose(stored.affine, affine, atol=1e-4)
    np.testing.assert_array_equal(np.asanyarray(stored.dataobj), labels)
    np.testing.assert_array_equal(read_label_nifti(path, labels.shape), labels)
    header = stored.header
    assert header["descrip"].item() == LABEL_MAP_DESCRIPTION and header["db_name"].item() == b""
    assert is_cinema_label_nifti(path)


def test_write_label_nifti_2d_gets_single_slice_axis(tmp_path):
    path = write_label_nifti(np.eye(5, dtype=bool), np.eye(4), tmp_path / "lax.nii.gz")
    assert nib.load(str(path)).shape == (5, 5, 1)


@pytest.mark.parametrize("bad", [np.full((3, 3, 2), -1), np.full((3, 3, 2), 300), np.full((3, 3, 2), 0.5)])
def test_write_label_nifti_rejects_non_labels_and_writes_nothing(tmp_path, bad):
    with pytest.raises(ValueError, match="mask.nii.gz.*integers"):
        write_label_nifti(bad, np.eye(4), tmp_path / "mask.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_identical_inputs_give_identical_bytes(tmp_path):
    labels = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    a = write_label_nifti(labels, np.eye(4), tmp_path / "a.nii.gz").read_bytes()
    b = write_label_nifti(labels, np.eye(4), tmp_path / "b.nii.gz").read_bytes()
    assert a == b


def test_bad_nifti_files_name_the_file(tmp_path):
    good = write_nifti(np.ones((4, 4, 3, 2)), np.eye(4), tmp_path / "good.nii.gz")
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(good.read_bytes()[:60])
    with pytest.raises(ValueError, match="truncated.nii.gz: unreadable NIfTI"):
        read_nifti_cine(truncated)

    flat = write_nifti(np.ones((4, 4)), np.eye(4), tmp_path / "flat.nii.gz")
    with pytest.raises(ValueError, match="flat.nii.gz: 2-D image"):
        read_nifti_cine(flat)
    assert read_nifti_cine(flat, view="lax_4c").spatial_shape == (4, 4)

    nan = write_nifti(np.full((4, 4, 3), np.nan, dtype=np.float32), np.eye(4), tmp_path / "nan.nii.gz")
    with pytest.raises(ValueError, match="nan.nii.gz.*NaN"):
        read_nifti_cine(nan)

    flat_affine = np.diag([1.0, 0.0, 8.0, 1.0])
    zero = tmp_path / "zero.nii.gz"
    encoded = bytearray(nib.Nifti1Image(np.ones((4, 4, 3), np.int16), np.eye(4)).to_bytes())
    header = nib.Nifti1Header.from_fileobj(io.BytesIO(encoded))
    header.set_sform(flat_affine, code=1)  # patched after encoding: nibabel would refuse to build this image
    header["qform_code"] = 0
    encoded[: header.sizeof_hdr] = header.binaryblock
    zero.write_bytes(gzip.compress(bytes(encoded)))
    with pytest.raises(ValueError, match="zero.nii.gz.*spacing"):
        read_nifti_cine(zero)

    single = write_nifti(np.ones((4, 4, 1, 3)), np.eye(4), tmp_path / "frame01.nii.gz")
    with pytest.raises(ValueError, match="frame01.nii.gz: single-slice"):
        read_nifti_cine(single)
    with pytest.raises(ValueError, match="one slice"):
        read_nifti_cine(good, view="lax_2c")
    with pytest.raises(FileNotFoundError):
        read_nifti_cine(tmp_path / "missing.nii.gz")


@pytest.mark.parametrize(
    ("name", "view"),
    [
        ("lax_4c_ed.nii.gz", "lax_4c"),
        ("sub01_2CH.nii.gz", "lax_2c"),
        ("cine_3ch.nii", "lax_3c"),
        ("sax_es.nii.gz", "sax"),
        ("P001_SA_ED.nii.gz", "sax"),
        ("patient001_frame01.nii.gz", None),
    ],
)
def test_guess_view_name(name, view):
    assert guess_view_name(name) == view
