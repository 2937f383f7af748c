"""Batched torch augmentation: geometry is right, labels stay labels, points follow the image, draws are seeded."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cinema.preprocess.augment import (
    augment_view,
    crop_or_pad,
    random_affine,
    random_coarse_dropout,
    random_gamma,
    random_gaussian_noise,
    render_heatmaps,
    sample_affine,
    scale_intensity,
    transform_points,
)


def test_affine_quarter_turn_is_exact_and_identity_is_a_no_op() -> None:
    image = torch.rand(1, 2, 8, 8, 3)
    quarter = torch.tensor([[[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]], dtype=torch.float64)
    zero = torch.zeros(1, 3, dtype=torch.float64)
    turned = random_affine(image, torch.tensor([True]), quarter, zero, mode="nearest")
    # rotation about the slice normal only: every slice is turned, slices stay where they are
    assert torch.equal(turned, torch.rot90(image, -1, dims=(2, 3)))
    identity = torch.eye(3, dtype=torch.float64)[None]
    assert torch.equal(random_affine(image, torch.tensor([True]), identity, zero), image)
    assert torch.equal(random_affine(image, torch.tensor([False]), quarter, zero), image)


def test_translation_moves_content_by_whole_voxels() -> None:
    image = torch.zeros(1, 1, 10, 12)
    image[0, 0, 4, 5] = 1.0
    identity = torch.eye(2, dtype=torch.float64)[None]
    # an output voxel samples the input at (position + offset): content moves by -offset
    moved = random_affine(image, torch.tensor([True]), identity, torch.tensor([[2.0, -3.0]], dtype=torch.float64))
    assert moved[0, 0, 2, 8] == 1.0 and float(moved.sum()) == pytest.approx(1.0, abs=1e-5)


def test_points_follow_the_image() -> None:
    generator = torch.Generator().manual_seed(0)
    points = torch.tensor([[[20.0, 30.0], [40.0, 12.0], [33.0, 45.0]]]).repeat(6, 1, 1)
    heatmaps = render_heatmaps(points, (64, 56), sigma=2.0)
    apply, matrix, offset = sample_affine(6, 2, 1.0, 180.0, [10.0, 10.0], 0.0, generator)
    warped = random_affine(heatmaps, apply, matrix, offset)
    moved = transform_points(points, matrix, offset, (64, 56))
    peaks = torch.stack(
        [torch.stack(torch.unravel_index(warped[b, k].argmax(), (64, 56))) for b in range(6) for k in range(3)]
    ).reshape(6, 3, 2)
    inside = ((moved > 2) & (moved < torch.tensor([61.0, 53.0]))).all(-1)
    assert inside.sum() > 10
    assert (peaks.float() - moved).abs()[inside].max() <= 1.0  # the warped peak is the moved point's voxel


def test_labels_stay_in_the_label_set_and_match_the_image() -> None:
    generator = torch.Generator().manual_seed(1)
    label = torch.randint(0, 4, (4, 1, 16, 16, 4)).float()
    image = label.clone()  # an image equal to its label map: nearest and bilinear must agree where exact
    out, moved, _ = augment_view(
        image,
        generator=generator,
        prob=1.0,
        gamma=[1.0, 1.0],
        noise_std=0.0,
        scale_range=0.2,
        rotate_deg=180.0,
        translate=[3.0, 3.0, 0.0],
        label=label,
    )
    assert set(torch.unique(moved).tolist()) <= {0.0, 1.0, 2.0, 3.0}
    assert not torch.equal(moved, label)
    assert out.min() >= 0 and out.max() <= 1


def test_intensity_transforms() -> None:
    generator = torch.Generator().manual_seed(2)
    images = torch.rand(8, 2, 6, 6, 3) * 5 + 2
    scaled = scale_intensity(images)
    assert torch.allclose(scaled.flatten(1).amin(1), torch.zeros(8))
    assert torch.allclose(scaled.flatten(1).amax(1), torch.ones(8))
    gamma = random_gamma(images, 1.0, [0.5, 1.5], generator)
    # gamma keeps each sample's min and max and its ordering of voxels
    assert torch.allclose(gamma.flatten(1).amin(1), images.flatten(1).amin(1), atol=1e-4)
    assert torch.allclose(gamma.flatten(1).amax(1), images.flatten(1).amax(1), atol=1e-4)
    assert torch.equal(gamma[0].flatten().argsort(), images[0].flatten().argsort())
    assert torch.equal(random_gamma(images, 0.0, [0.5, 1.5], generator), images)
    noisy = random_gaussian_noise(images, 1.0, 0.1, generator)
    assert 0 < (noisy - images).std() < 0.1
    holed = random_coarse_dropout(torch.ones(5, 1, 10, 10, 4), 1.0, [4, 3, 2], generator)
    assert ((holed == 0).flatten(1).sum(1) == 4 * 3 * 2).all()


def test_draws_are_reproducible_from_the_generator() -> None:
    def run(seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        images = torch.linspace(0, 1, 2 * 16 * 16).reshape(2, 1, 16, 16)
        out, _, _ = augment_view(
            images,
            generator=generator,
            prob=0.5,
            gamma=[0.5, 1.5],
            noise_std=0.1,
            scale_range=0.2,
            rotate_deg=180.0,
            translate=[4.0, 4.0],
            dropout_size=[4, 4],
        )
        return out

    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))


def test_crop_or_pad() -> None:
    array = np.arange(2 * 5 * 3, dtype=np.float32).reshape(2, 5, 3)
    padded, starts = crop_or_pad(array, (4, 6))
    assert padded.shape == (2, 4, 6) and starts == (0, 0)
    assert np.array_equal(padded[:, :4, :3], array[:, :4]) and not padded[:, :, 3:].any()
    rng = np.random.default_rng(0)
    crops = {crop_or_pad(array, (2, 3), rng)[1] for _ in range(30)}
    assert crops == {(s, 0) for s in range(4)}
    again, _ = crop_or_pad(array, (2, 3), starts=(3, 0))
    assert np.array_equal(again, array[:, 3:5])
    with pytest.raises(ValueError):
        crop_or_pad(array, (2, 3, 4, 5))


def test_flip_mirrors_exactly_and_only_when_asked() -> None:
    image = torch.rand(64, 1, 12, 10)
    plain = sample_affine(64, 2, 0.0, 0.0, [0.0, 0.0], 0.0, torch.Generator().manual_seed(3))
    assert not plain[0].any()  # flip_prob 0 draws nothing extra
    apply, matrix, offset = sample_affine(64, 2, 0.0, 0.0, [0.0, 0.0], 0.0, torch.Generator().manual_seed(3), 0.5)
    assert 16 < int(apply.sum()) < 48  # about half mirrored, independently of prob (0 here)
    out = random_affine(image, apply, matrix, offset, mode="nearest")
    torch.testing.assert_close(out[apply], image[apply].flip(2))  # voxel i -> n - 1 - i along the first axis
    torch.testing.assert_close(out[~apply], image[~apply])
