"""What every fine-tuning task shares: the `Task` interface the trainer drives, batch augmentation, soft Dice.

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

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from cinema.config import FinetuneConfig
from cinema.io.errors import InputError
from cinema.preprocess.augment import augment_view, scale_intensity

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

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Scalar loss to minimise plus loggable parts: detached tensors, 0-dim or one value per view (the log shows
        their mean). The trainer reads them from the device only when it logs, so a step never waits for the GPU."""
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
            raise InputError(f"task {self.name} has no validation metric {metric!r} (available: {known})")
        return self.metric_modes[metric]


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
