"""On-the-fly acquisition-shift augmentation: each shift does what it says, geometry and stack ends are untouched,
draws are seeded, and configs without it train exactly as before."""

from __future__ import annotations

from pathlib import Path

import torch

from cinema.config import load_config
from cinema.config.schema import TransformConfig
from cinema.preprocess.augment import random_acquisition_shift, scale_intensity
from cinema.tasks.base import Task
from cinema.tasks.segmentation import SegmentationTask

REPO = Path(__file__).resolve().parents[1]
NONE = {"bias_field": 0.0, "rician_std": 0.0, "blur_sigma": 0.0, "low_res": 1.0, "slice_blend": 0.0}


def _phantom(batch: int = 4, chans: int = 3) -> torch.Tensor:
    """Bright discs on a dark field, a different radius per channel (adjacent slices differ), in [0, 1]."""
    x = torch.arange(64, dtype=torch.float32).reshape(-1, 1) - 31.5
    y = torch.arange(64, dtype=torch.float32).reshape(1, -1) - 31.5
    discs = [((x**2 + y**2) < (10 + 4 * c) ** 2).float() * 0.8 + 0.1 for c in range(chans)]
    return torch.stack(discs).unsqueeze(0).repeat(batch, 1, 1, 1)


def _shift(images: torch.Tensor, seed: int = 0, **strengths: float) -> torch.Tensor:
    params = {**NONE, **strengths}
    context = int(params.pop("context", 1))
    prob = float(params.pop("prob", 1.0))
    drop = float(params.pop("context_drop", 0.0))
    generator = torch.Generator().manual_seed(seed)
    return random_acquisition_shift(
        images, generator=generator, prob=prob, context=context, context_drop=drop, **params
    )


def _gradient(images: torch.Tensor) -> float:
    # edge energy: blur keeps the total variation of an edge but spreads it, lowering the squared gradient
    return float(((images[..., 1:, :] - images[..., :-1, :]) ** 2).mean())


def test_no_shift_is_the_identity_and_seeds_reproduce() -> None:
    images = _phantom()
    rescaled = scale_intensity(images)  # the output is rescaled to [0, 1] per sample
    assert torch.allclose(_shift(images), rescaled, atol=1e-6)
    full = {"bias_field": 0.5, "rician_std": 0.06, "blur_sigma": 1.2, "low_res": 1.8, "slice_blend": 0.35}
    first, again, other = _shift(images, 3, **full), _shift(images, 3, **full), _shift(images, 4, **full)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert float(first.min()) >= 0.0 and float(first.max()) == 1.0
    # prob 0: nothing applied, whatever the strengths
    assert torch.allclose(_shift(images, prob=0.0, **full), rescaled, atol=1e-6)


def test_each_shift_changes_what_it_should() -> None:
    images = scale_intensity(_phantom())
    disc = images[0, 1] > 0.5
    # bias field: a smooth gain, so the flat disc is no longer flat
    biased = _shift(images, bias_field=0.5)
    assert float(biased[0, 1][disc].std()) > 0.02
    # coarser acquisition and blur soften the disc edges
    assert _gradient(_shift(images, low_res=1.8)) < 0.95 * _gradient(images)
    assert _gradient(_shift(images, blur_sigma=1.2)) < 0.95 * _gradient(images)
    # Rician noise lifts the dark background
    noisy = _shift(images, rician_std=0.06)
    assert float(noisy[:, 1][~disc.expand(4, -1, -1)].mean()) > float(images[:, 1][~disc.expand(4, -1, -1)].mean())
    # thicker slices: the channels (adjacent slices) move towards each other
    blended = _shift(images, slice_blend=0.35)
    assert float((blended[:, 0] - blended[:, 2]).abs().mean()) < float((images[:, 0] - images[:, 2]).abs().mean())


def test_stack_ends_stay_and_partial_coverage_makes_new_ones() -> None:
    images = scale_intensity(_phantom(batch=8))
    images[:, 2] = 0.0  # past the end of the stack: the network's stack-end cue
    full = {"bias_field": 0.5, "rician_std": 0.06, "blur_sigma": 1.2, "low_res": 1.8, "slice_blend": 0.35}
    shifted = _shift(images, **full)
    assert float(shifted[:, 2].abs().max()) == 0.0 and float(shifted[:, 1].abs().max()) > 0
    # the neighbour mixing ignores the missing channel: the centre keeps its disc contrast
    assert float(shifted[:, 1].std()) > 0.2
    dropped = _shift(_phantom(batch=16), context_drop=1.0)
    zeroed = dropped.flatten(2).abs().amax(2) == 0  # (B, C)
    assert (zeroed[:, 0] ^ zeroed[:, 2]).all() and not zeroed[:, 1].any()


def test_volumes_are_shifted_slice_by_slice() -> None:
    volume = _phantom(batch=2, chans=4).permute(0, 2, 3, 1).unsqueeze(1)  # (B, 1, X, Y, Z)
    out = _shift(volume, context=0, blur_sigma=1.0, bias_field=0.3)
    assert out.shape == volume.shape and not torch.equal(out, volume)


def _batch(seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    label = torch.zeros(4, 1, 64, 64, dtype=torch.long)
    label[:, :, 20:40, 24:44] = 3
    image = _phantom() * 400  # raw model-space intensities before the rescale
    return {"image": {"sax": image}, "label": {"sax": label}, "_g": generator}


def test_segmentation_task_without_shift_augments_exactly_as_before() -> None:
    config = load_config(REPO / "configs" / "default_sax_segmentation.yaml", ["data.context_slices=1"])
    assert config.transform.shift.prob == 0.0 and TransformConfig().shift.prob == 0.0
    batch = _batch(0)
    ours = SegmentationTask(config).augment(batch, torch.Generator().manual_seed(5))
    base = Task.augment(SegmentationTask(config), batch, torch.Generator().manual_seed(5))
    assert torch.equal(ours["image"]["sax"], base["image"]["sax"])
    assert torch.equal(ours["label"]["sax"], base["label"]["sax"])


def test_segmentation_task_with_shift_keeps_labels_and_range() -> None:
    config = load_config(REPO / "configs" / "sax_segmentation_shift_finetune.yaml")
    assert config.transform.shift.prob == 0.3 and config.transform.flip == 0.5
    task = SegmentationTask(config)
    batch = _batch(0)
    first = task.augment(batch, torch.Generator().manual_seed(5))
    again = task.augment(batch, torch.Generator().manual_seed(5))
    assert torch.equal(first["image"]["sax"], again["image"]["sax"])
    image, label = first["image"]["sax"], first["label"]["sax"]
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    assert set(label.unique().tolist()) <= {0, 3}
