"""Segmentation (SAX volumes, SAX slices or LAX images): Dice + cross-entropy, validated by per-class Dice.

Loss as the reference: soft Dice on softmax probabilities without the background class plus cross-entropy.
Validation predicts each whole study (sliding windows with probability averaging where it is larger than the patch;
slice by slice for a 2-D network trained on SAX slices), crops the end padding off and scores the arg-max labels with
`cinema.metrics.dice_per_class` (1.0 for a class absent from both).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cinema.config import FinetuneConfig
from cinema.metrics import ACDC_CLASSES, dice_per_class
from cinema.models.inference import average_windows, to_device
from cinema.preprocess.augment import random_acquisition_shift, scale_intensity
from cinema.preprocess.slices import neighbour_slices
from cinema.tasks.base import Batch, Task, soft_dice_loss

# Validation slices of a 2-D network are predicted this many at a time.
_SLICE_CHUNK = 32


def class_names(n_classes: int) -> dict[int, str]:
    """Foreground class names used in metric keys: rv/myo/lv for the 4-class cardiac convention, else numbers."""
    if n_classes == 4:
        return dict(ACDC_CLASSES)
    return {k: str(k) for k in range(1, n_classes)}


def segmentation_loss(
    logits: torch.Tensor, labels: torch.Tensor, batch_dice: bool = False
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Soft Dice (softmax, background excluded) + cross-entropy; ``labels`` (B, 1, *spatial) integers.

    ``batch_dice``: the Dice over the whole batch rather than per sample (`soft_dice_loss`).
    """
    logits = logits.float()
    target = labels[:, 0].long()
    ce = F.cross_entropy(logits, target)
    one_hot = F.one_hot(target, logits.shape[1]).movedim(-1, 1).to(logits.dtype)
    dice = soft_dice_loss(torch.softmax(logits, dim=1)[:, 1:], one_hot[:, 1:], batch=batch_dice)
    return dice + ce, {"dice_loss": dice.detach(), "cross_entropy": ce.detach()}


class SegmentationTask(Task):
    name = "segmentation"
    default_metric = "mean_dice"
    dense_key = "label"
    dense_mode = "nearest"

    def __init__(self, config: FinetuneConfig) -> None:
        super().__init__(config)
        self.n_classes = config.out_chans
        self.names = class_names(self.n_classes)
        self.metric_modes = {"mean_dice": "max", **{f"dice_{n}": "max" for n in self.names.values()}}

    def augment(self, batch: Batch, generator: torch.Generator) -> Batch:
        """Acquisition shifts (``transform.shift``, off by default) first, then the reference augmentation."""
        cfg = self.config.transform
        if not cfg.enabled or cfg.shift.prob <= 0:
            return super().augment(batch, generator)
        shift = cfg.shift
        context = self.config.data.context_slices if self.config.data.slice_2d else 0
        images = {
            view: random_acquisition_shift(
                scale_intensity(image),
                generator=generator,
                prob=shift.prob,
                bias_field=shift.bias_field,
                rician_std=shift.rician_std,
                blur_sigma=shift.blur_sigma,
                low_res=shift.low_res,
                slice_blend=shift.slice_blend,
                context_drop=shift.context_drop,
                context=context,
            )
            for view, image in batch["image"].items()
        }
        return super().augment({**batch, "image": images}, generator)

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = model(batch["image"])
        losses, parts = [], {}
        for view in self.views:
            loss, view_parts = segmentation_loss(logits[view], batch["label"][view], self.config.train.batch_dice)
            losses.append(loss)
            for key, value in view_parts.items():
                parts.setdefault(key, []).append(value)
        # one value per view: the log shows their mean
        return torch.stack(losses).mean(), {key: torch.stack(values) for key, values in parts.items()}

    def predict_probs(self, model: nn.Module, images: dict[str, torch.Tensor], autocast: Callable[[], Any]) -> dict:
        """Softmax probabilities {view: (B, C, *spatial)} of whole (padded) studies."""
        if self.config.data.slice_2d:
            return {view: self._predict_slices(model, view, x, autocast) for view, x in images.items()}
        patch = {view: self.config.patch_size(view) for view in images}
        return average_windows(images, patch, lambda window: _softmax_views(model, window, autocast))

    def _predict_slices(
        self, model: nn.Module, view: str, volume: torch.Tensor, autocast: Callable[[], Any]
    ) -> torch.Tensor:
        batch, chans, *plane, depth = volume.shape
        context = self.config.data.context_slices
        # (B, chans, X, Y, Z, 1 + 2k) -> (B * Z, chans * (1 + 2k), X, Y), frame-major as the training samples
        stacked = neighbour_slices(volume, context)
        slices = stacked.permute(0, 4, 1, 5, 2, 3).reshape(batch * depth, chans * (1 + 2 * context), *plane)
        patch = {view: self.config.patch_size(view)}
        outputs = []
        for start in range(0, slices.shape[0], _SLICE_CHUNK):
            chunk = {view: slices[start : start + _SLICE_CHUNK]}
            outputs.append(average_windows(chunk, patch, lambda w: _softmax_views(model, w, autocast))[view])
        probs = torch.cat(outputs)
        return probs.reshape(batch, depth, -1, *plane).permute(0, 2, 3, 4, 1)

    def evaluate(
        self, model: nn.Module, batches: Iterable[Batch], device: torch.device, autocast: Callable[[], Any]
    ) -> dict[str, float]:
        scores: dict[str, list[float]] = {f"dice_{n}": [] for n in self.names.values()}
        for batch in batches:
            batch = self.prepare_eval(to_device(batch, device))
            probs = self.predict_probs(model, batch["image"], autocast)
            for view in self.views:
                pred = probs[view].argmax(dim=1).cpu().numpy()
                true = batch["label"][view][:, 0].cpu().numpy()
                sizes = batch["size"][view].cpu().numpy()
                for i in range(pred.shape[0]):
                    crop = tuple(slice(0, int(s)) for s in sizes[i])
                    dice = dice_per_class(pred[i][crop], true[i][crop], labels=list(self.names))
                    for label, name in self.names.items():
                        scores[f"dice_{name}"].append(dice[label])
        metrics = {key: float(np.mean(values)) if values else float("nan") for key, values in scores.items()}
        metrics["mean_dice"] = float(np.mean([metrics[f"dice_{n}"] for n in self.names.values()]))
        return metrics


def _softmax_views(
    model: nn.Module, images: dict[str, torch.Tensor], autocast: Callable[[], Any]
) -> dict[str, torch.Tensor]:
    with autocast():
        logits = model(images)
    return {view: torch.softmax(x.float(), dim=1) for view, x in logits.items()}
