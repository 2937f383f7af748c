"""Intensity clipping and scaling: the reference's per-frame recipe and the consistent-across-frames option."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from cinema.preprocess import normalise_intensity, to_model_space, to_uint8


def reference_recipe(volume: np.ndarray) -> np.ndarray:
    """The reference's three steps, written out: clip to [p0.95, p99.5], z-score, min-max rescale to [0, 1]."""
    lo, hi = np.percentile(volume, [0.95, 99.5])
    clipped = np.clip(volume.astype(np.float64), lo, hi)
    z = (clipped - clipped.mean()) / clipped.std()
    return (z - z.min()) / (z.max() - z.min())


@pytest.fixture(scope="module")
def acdc_frames(acdc_dir):
    frames = sorted((acdc_dir / "patient001").glob("patient001_frame??.nii.gz"))
    return np.stack([np.asarray(nib.load(path).dataobj).astype(np.float32) for path in frames], axis=-1)


def test_per_frame_scaling_matches_the_reference_recipe(acdc_frames):
    out = normalise_intensity(acdc_frames, scope="frame")
    assert out.dtype == np.float32 and out.shape == acdc_frames.shape
    for t in range(acdc_frames.shape[-1]):
        np.testing.assert_allclose(out[..., t], reference_recipe(acdc_frames[..., t]), atol=1e-5)
        assert out[..., t].min() == 0.0 and out[..., t].max() == 1.0
        # At least the 0.5 % of voxels above the 99.5th percentile are clipped to 1 (more where values tie).
        assert (out[..., t] == 1.0).mean() >= 0.005


def test_per_frame_scaling_ignores_each_frames_own_gain_but_cine_scope_keeps_it():
    rng = np.random.default_rng(0)
    frame = rng.gamma(2.0, 50.0, size=(40, 40, 6)).astype(np.float32)
    cine = np.stack([frame, 3.0 * frame + 10.0], axis=-1)
    per_frame = normalise_intensity(cine, scope="frame")
    np.testing.assert_allclose(per_frame[..., 0], per_frame[..., 1], atol=1e-5)
    per_cine = normalise_intensity(cine, scope="cine")
    assert per_cine[..., 1].mean() > 2.0 * per_cine[..., 0].mean()  # the brighter frame stays brighter
    lo, hi = np.percentile(cine, [0.95, 99.5])
    np.testing.assert_allclose(per_cine, np.clip((cine - lo) / (hi - lo), 0, 1), atol=1e-6)


def test_cine_scope_in_model_space_gives_one_scale_for_the_acdc_ed_es_pair(acdc_dir):
    frames = sorted((acdc_dir / "patient001").glob("patient001_frame??.nii.gz"))
    volumes = [nib.load(path) for path in frames]
    cine = np.stack([np.asarray(v.dataobj).astype(np.float32) for v in volumes], axis=-1)
    per_cine, transform = to_model_space(cine, volumes[0].affine, "sax", intensity="cine")
    raw, _ = to_model_space(cine, volumes[0].affine, "sax", intensity=None)
    valid = transform.valid_mask()
    # One scale for both frames, from percentiles over the real (unpadded) voxels of the whole cine.
    lo, hi = np.percentile(raw[valid], [0.95, 99.5])
    np.testing.assert_allclose(per_cine[valid], np.clip((raw[valid] - lo) / (hi - lo), 0, 1), atol=1e-5)
    assert np.all(per_cine[~valid] == 0)
    per_frame, _ = to_model_space(cine, volumes[0].affine, "sax", intensity="frame")
    for t in range(2):
        assert per_frame[..., t][valid].max() == 1.0 and per_frame[..., t][valid].min() == 0.0


def test_valid_mask_excludes_padding_from_percentiles_and_zeroes_it():
    rng = np.random.default_rng(1)
    image = rng.uniform(100, 200, size=(20, 20, 4)).astype(np.float32)
    valid = np.zeros(image.shape, bool)
    valid[:10] = True
    image[10:] = -1000.0  # padding must not pull the lower percentile down
    out = normalise_intensity(image, valid=valid)
    assert np.all(out[~valid] == 0)
    np.testing.assert_allclose(out[valid], reference_recipe(image[valid]).ravel(), atol=1e-5)


def test_constant_image_gives_zeros_and_bad_input_is_rejected():
    assert not normalise_intensity(np.full((5, 5, 5), 7.0)).any()
    with pytest.raises(ValueError, match="scope"):
        normalise_intensity(np.zeros((5, 5, 5)), scope="slice")
    with pytest.raises(ValueError, match="NaN"):
        normalise_intensity(np.full((5, 5, 5), np.nan))
    with pytest.raises(ValueError, match="percentiles"):
        normalise_intensity(np.zeros((5, 5, 5)), lower_percentile=99.0, upper_percentile=1.0)
    with pytest.raises(ValueError, match="valid mask"):
        normalise_intensity(np.zeros((5, 5, 5)), valid=np.ones((5, 5), bool))


def test_to_uint8_truncates_like_the_reference():
    values = np.array([0.0, 0.5, 0.999, 1.0, -0.1, 1.2], np.float32)
    assert to_uint8(values).tolist() == [0, 127, 254, 255, 0, 255]
