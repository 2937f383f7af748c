"""Task building blocks: sliding windows, losses and read-outs, checked against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from cinema.models.inference import average_windows, sliding_window, soft_argmax, window_starts
from cinema.preprocess.augment import render_heatmaps
from cinema.tasks.base import soft_dice_loss
from cinema.tasks.landmark import wing_loss
from cinema.tasks.segmentation import segmentation_loss


def test_window_starts_cover_the_axis() -> None:
    assert window_starts(16, 16) == [0]
    assert window_starts(10, 16) == [0]  # smaller than the patch: the caller pads
    assert window_starts(20, 16) == [0, 4]  # step 8 would overrun: the last window is flush with the end
    assert window_starts(40, 16) == [0, 8, 16, 24]
    for size in range(16, 60):
        starts = window_starts(size, 16)
        covered = set().union(*(range(s, s + 16) for s in starts))
        assert covered == set(range(size)) and starts[-1] == size - 16


def test_windows_average_back_to_the_image() -> None:
    image = torch.rand(1, 2, 24, 16, 20)
    calls = []

    def identity(window: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        calls.append(tuple(window["sax"].shape[2:]))
        return {"sax": window["sax"] * 1.0}

    out = average_windows({"sax": image}, {"sax": (16, 16, 8)}, identity)["sax"]
    assert torch.allclose(out, image)
    assert set(calls) == {(16, 16, 8)} and len(calls) == 2 * 1 * 4  # x: 0, 8; y: 0; z: 0, 4, 8, 12
    with pytest.raises(ValueError, match="smaller than patch"):
        sliding_window({"sax": torch.rand(1, 1, 8, 8, 8)}, {"sax": (16, 16, 8)}, identity)
    two_large = {"sax": torch.rand(1, 1, 20, 16, 8), "lax_4c": torch.rand(1, 1, 40, 32)}
    with pytest.raises(ValueError, match="one view at a time"):
        sliding_window(two_large, {"sax": (16, 16, 8), "lax_4c": (32, 32)}, identity)


def test_soft_dice_loss() -> None:
    target = torch.zeros(1, 1, 4, 4)
    target[..., :2, :] = 1.0
    assert soft_dice_loss(target, target).item() == pytest.approx(0.0, abs=1e-6)
    half = torch.full_like(target, 0.5)
    # 2 * (0.5 * 8) / (0.5 * 16 + 8) = 0.5
    assert soft_dice_loss(half, target).item() == pytest.approx(0.5, abs=1e-5)


def test_batch_dice_pools_the_batch() -> None:
    # sample 0 holds the structure and is predicted exactly; sample 1 has none and one false-positive voxel
    target = torch.zeros(2, 1, 4, 4)
    target[0, 0, :2] = 1.0
    probs = target.clone()
    probs[1, 0, 0, 0] = 1.0
    # per sample: sample 1 scores Dice ~0 for one voxel, so the mean loss is ~0.5
    assert soft_dice_loss(probs, target).item() == pytest.approx(0.5, abs=1e-4)
    # pooled: 2 * 8 / (9 + 8)
    assert soft_dice_loss(probs, target, batch=True).item() == pytest.approx(1 - 16 / 17, abs=1e-5)


def test_segmentation_loss_prefers_the_right_labels() -> None:
    labels = torch.randint(0, 4, (2, 1, 6, 6, 3))
    right = torch.nn.functional.one_hot(labels[:, 0], 4).movedim(-1, 1).float() * 20.0
    wrong = torch.roll(right, 1, dims=1)
    good, parts = segmentation_loss(right, labels)
    bad, _ = segmentation_loss(wrong, labels)
    assert good.item() < 0.01 and bad.item() > 1.0 and set(parts) == {"dice_loss", "cross_entropy"}


def test_wing_loss_values() -> None:
    # |e| < w: w * ln(1 + |e| / eps); beyond: |e| - (w - w ln(1 + w / eps)) (continuous at w)
    assert wing_loss(torch.tensor([1.0]), torch.tensor([0.0])).item() == pytest.approx(10 * math.log(1.5))
    c = 10 - 10 * math.log(6.0)
    assert wing_loss(torch.tensor([25.0]), torch.tensor([0.0])).item() == pytest.approx(25 - c, rel=1e-6)
    assert wing_loss(torch.tensor([10.0 - 1e-4]), torch.tensor([0.0])).item() == pytest.approx(10 - c, rel=1e-4)


def test_soft_argmax_reads_back_rendered_points() -> None:
    points = torch.tensor([[[10.0, 20.0], [30.0, 5.0], [17.0, 17.0]]])
    heatmaps = render_heatmaps(points, (40, 32), sigma=3.0)
    assert torch.allclose(soft_argmax(heatmaps), points, atol=0.05)
