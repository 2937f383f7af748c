"""What every fine-tuning task shares: the `Task` interface the trainer drives, batch augmentation, sliding windows.

A task turns a batch into a loss (training) and a model plus a validation loader into metrics (model selection).
Batches are dicts built by `cinema.train.datasets`:

- ``id``: list of sample ids;
- ``image``: {view: (B, C, *spatial) float} — C = in_chans x n_frames (ED and ES stacked as channels);
- ``size``: {view: (B, n) int} — the unpadded spatial size, for cropping predictions back;
- task targets: ``label`` {view: (B, 1, *spatial) int} (segmentation), ``target`` (B,) (classification: class index,
  regression: z-scored value), ``time`` / ``event`` (B,) (survival), ``points`` {view: (B, 3, 2)} (landmarks, voxel
  (x, y) indices in model space).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from cinema.train.augment import augment_view, scale_intensity
from cinema.train.config import FinetuneConfig

Batch = dict[str, Any]


class Task:
    """Base class: subclasses set the metric defaults and implement `loss` and `evaluate`."""

    name: str = ""
    #: metric used for early stopping when the config does not name one, and whether larger is better per metric
    default_metric: str = ""
    metric_modes: dict[str, str] = {}
    #: keys of each batch that hold dense maps moved with the image by spatial augmentation, and how they resample
    dense_key: str | None = None
    dense_mode: str = "nearest"

    def __init__(self, config: FinetuneConfig) -> None:
        self.config = config
        self.views = config.views

    # ---- training ---------------------------------------------------------------------------------------------

    def augment(self, batch: Batch, generator: torch.Generator) -> Batch:
        """Reference fine-tuning augmentation, per view, for the whole batch at once."""
        cfg = self.config.transform
        out = dict(batch)
        out["image"] = dict(batch["image"])
        if self.dense_key is not None and self.dense_key in batch:
            out[self.dense_key] = dict(batch[self.dense_key])
        if "points" in batch:
            out["points"] = dict(batch["points"])
        for view in self.views:
            image = batch["image"][view]
            if not cfg.enabled:
                out["image"][view] = scale_intensity(image)
                continue
            dims = image.ndim - 2
            view_cfg = self.config.view_transform(view)
            dense = batch[self.dense_key][view] if self.dense_key in batch else None
            use_dropout = cfg.coarse_dropout if cfg.coarse_dropout is not None else self.name == "segmentation"
            image, dense, points = augment_view(
                image,
                generator=generator,
                prob=cfg.prob,
                gamma=cfg.gamma,
                noise_std=cfg.noise_std,
                scale_range=cfg.scale_range,
                rotate_deg=view_cfg.rotate_range,
                translate=view_cfg.translate_range[:dims],
                dropout_size=view_cfg.dropout_size[:dims] if use_dropout else None,
                flip_prob=cfg.flip,
                label=None if dense is None else dense.float(),
                label_mode=self.dense_mode,
                points=batch["points"][view] if "points" in batch else None,
            )
            out["image"][view] = image
            if dense is not None:
                out[self.dense_key][view] = dense.to(batch[self.dense_key][view].dtype)
            if points is not None:
                out["points"][view] = points
        return out

    def prepare_eval(self, batch: Batch) -> Batch:
        """Validation input: intensity rescale only, as the reference's ScaleIntensityd."""
        out = dict(batch)
        out["image"] = {view: scale_intensity(image) for view, image in batch["image"].items()}
        return out

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar loss to minimise plus loggable parts (floats)."""
        raise NotImplementedError

    # ---- validation -------------------------------------------------------------------------------------------

    def evaluate(
        self, model: nn.Module, batches: Iterable[Batch], device: torch.device, autocast: Callable[[], Any]
    ) -> dict[str, float]:
        """Metrics over a validation loader (the model is already in eval mode, gradients off)."""
        raise NotImplementedError

    def metric_mode(self, metric: str) -> str:
        if metric not in self.metric_modes:
            known = ", ".join(sorted(self.metric_modes))
            raise ValueError(f"task {self.name} has no validation metric {metric!r} (available: {known})")
        return self.metric_modes[metric]


def to_device(batch: Batch, device: torch.device) -> Batch:
    """Move every tensor of a (nested) batch to ``device``."""

    def move(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.to(device, non_blocking=True)
        if isinstance(value, dict):
            return {k: move(v) for k, v in value.items()}
        return value

    return {k: move(v) for k, v in batch.items()}


def soft_dice_loss(
    probs: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5, batch: bool = False
) -> torch.Tensor:
    """1 - Dice per sample and channel, averaged (MONAI DiceLoss: smooth 1e-5 in numerator and denominator).

    ``batch``: one Dice per channel over the whole batch (nnU-Net's batch Dice, MONAI ``batch=True``). For 2-D slices
    this matters: a slice without a structure otherwise scores 0 for the faintest false positive and 1 for none, a
    full-weight all-or-nothing term per slice, and a tiny apical structure weighs as much as a basal one.
    """
    dims = tuple(range(2, probs.ndim))
    if batch:
        dims = (0, *dims)
    intersection = (probs * target).sum(dims)
    total = probs.sum(dims) + target.sum(dims)
    return (1.0 - (2.0 * intersection + smooth) / (total + smooth)).mean()


def window_starts(size: int, patch: int, overlap: float = 0.5) -> list[int]:
    """Window origins covering [0, size) with windows of ``patch``, the last one flush with the end."""
    if size <= patch:
        return [0]
    step = max(1, int(patch * (1.0 - overlap)))
    starts = list(range(0, size - patch + 1, step))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def sliding_window(
    images: dict[str, torch.Tensor],
    patch_size: dict[str, Sequence[int]],
    predict: Callable[[dict[str, torch.Tensor]], Any],
    overlap: float = 0.5,
) -> list[tuple[dict[str, tuple[slice, ...]], Any]]:
    """Run ``predict`` on every window of the (single) view larger than its patch; other views are passed whole.

    Images must already be at least the patch size on every axis (the datasets pad at the end). Returns
    ``[(window slices per view, prediction)]`` for the caller to combine (probability average, mean, ...).
    """
    larger = [v for v, x in images.items() if tuple(x.shape[2:]) != tuple(patch_size[v])]
    for view in larger:
        if any(s < p for s, p in zip(images[view].shape[2:], patch_size[view], strict=True)):
            raise ValueError(f"{view}: image {tuple(images[view].shape[2:])} is smaller than patch {patch_size[view]}")
    if not larger:
        whole = {v: tuple(slice(None) for _ in x.shape[2:]) for v, x in images.items()}
        return [(whole, predict(images))]
    if len(larger) > 1:
        raise ValueError(f"sliding-window inference windows one view at a time, got several larger views: {larger}")
    view = larger[0]
    image = images[view]
    grids = [window_starts(s, p, overlap) for s, p in zip(image.shape[2:], patch_size[view], strict=True)]
    results = []
    for starts in _product(grids):
        slices = tuple(slice(s, s + p) for s, p in zip(starts, patch_size[view], strict=True))
        window = {v: (x[(slice(None), slice(None), *slices)] if v == view else x) for v, x in images.items()}
        where = {v: (slices if v == view else tuple(slice(None) for _ in x.shape[2:])) for v, x in images.items()}
        results.append((where, predict(window)))
    return results


def average_windows(
    images: dict[str, torch.Tensor],
    patch: dict[str, tuple[int, ...]],
    predict: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]],
) -> dict[str, torch.Tensor]:
    """Average dense per-window predictions back onto the full images."""
    results = sliding_window(images, patch, predict)
    if len(results) == 1:
        return results[0][1]
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, torch.Tensor] = {}
    for where, probs in results:
        for view, p in probs.items():
            if view not in sums:
                full = (p.shape[0], p.shape[1], *images[view].shape[2:])
                sums[view] = p.new_zeros(full)
                counts[view] = p.new_zeros((1, 1, *images[view].shape[2:]))
            index = (slice(None), slice(None), *where[view])
            sums[view][index] += p
            counts[view][index] += 1
    return {view: sums[view] / counts[view] for view in sums}


def _product(grids: list[list[int]]) -> list[tuple[int, ...]]:
    combos: list[tuple[int, ...]] = [()]
    for grid in grids:
        combos = [(*c, g) for c in combos for g in grid]
    return combos


def autocast_context(device: torch.device, enabled: bool) -> Callable[[], Any]:
    """A factory of bf16 autocast contexts (a no-op context when disabled)."""

    def factory() -> Any:
        if not enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)

    return factory
