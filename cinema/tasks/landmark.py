"""Long-axis landmarks (two mitral-valve hinge points and the apex): heatmaps or direct coordinates.

Targets are the landmark points themselves, moved by the same random affine as the image, so augmentation never
blurs or quantises them:

- heatmap (ConvUNetR / UNet, one output channel per landmark): unnormalised Gaussians (peak 1, sigma 3 px as in the
  reference) rendered at the augmented points; loss soft Dice on sigmoid probabilities (all channels) + BCE.
  Points are read back by a soft arg-max (no integer truncation, unlike the reference).
- coordinates (ConvViT / ResNet, 6 outputs): (x1, y1, x2, y2, x3, y3) divided by the input size (W, H), the raw
  network output compared in pixels with the Wing loss (w 10, eps 2) on the points plus on each point's offset from
  the midpoint of the other two (reference recipe). The reference derives this target from the arg-max of an
  augmented heatmap; here it is the exact transformed point.

Validation: per-landmark Euclidean distance in mm (model-space spacing) and their mean (early-stopping metric).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cinema.config import FinetuneConfig
from cinema.config.schema import N_LANDMARKS
from cinema.metrics import landmark_distance_mm
from cinema.models.inference import average_windows, global_forward, sliding_window, soft_argmax, to_device
from cinema.preprocess.augment import render_heatmaps
from cinema.tasks.base import Batch, Task, soft_dice_loss

# Midpoint offsets: each point minus the mean of the other two, as a (6, 6) map on (x1, y1, ..., x3, y3).
_RELATIVE = torch.tensor(
    [
        [1.0, 0.0, -0.5, 0.0, -0.5, 0.0],
        [0.0, 1.0, 0.0, -0.5, 0.0, -0.5],
        [-0.5, 0.0, 1.0, 0.0, -0.5, 0.0],
        [0.0, -0.5, 0.0, 1.0, 0.0, -0.5],
        [-0.5, 0.0, -0.5, 0.0, 1.0, 0.0],
        [0.0, -0.5, 0.0, -0.5, 0.0, 1.0],
    ]
)


def wing_loss(pred: torch.Tensor, true: torch.Tensor, w: float = 10.0, epsilon: float = 2.0) -> torch.Tensor:
    """Wing loss (Feng et al. 2018): logarithmic for small errors, linear (continuous) beyond ``w``."""
    error = (pred - true).abs()
    c = w - w * math.log(1.0 + w / epsilon)
    return torch.where(error < w, w * torch.log1p(error / epsilon), error - c).mean()


class _LandmarkTask(Task):
    default_metric = "mean_distance"
    metric_modes = {
        "mean_distance": "min",
        **{f"distance_{i}": "min" for i in range(1, N_LANDMARKS + 1)},
    }

    def __init__(self, config: FinetuneConfig) -> None:
        super().__init__(config)
        self.view = self.views[0]

    def _distances(self, pred: list[torch.Tensor], true: list[torch.Tensor]) -> dict[str, float]:
        pred_xy = torch.cat(pred).cpu().numpy()
        true_xy = torch.cat(true).cpu().numpy()
        distance = np.asarray(landmark_distance_mm(pred_xy, true_xy, self.config.spacing(self.view)))
        metrics = {f"distance_{i + 1}": float(distance[:, i].mean()) for i in range(N_LANDMARKS)}
        metrics["mean_distance"] = float(distance.mean())
        return metrics


class LandmarkHeatmapTask(_LandmarkTask):
    name = "landmark_heatmap"

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image = batch["image"][self.view]
        logits = model({self.view: image})[self.view].float()
        target = render_heatmaps(batch["points"][self.view], image.shape[2:], self.config.data.heatmap_sigma)
        dice = soft_dice_loss(torch.sigmoid(logits), target)
        bce = F.binary_cross_entropy_with_logits(logits, target)
        return dice + bce, {"dice_loss": dice.detach(), "bce": bce.detach()}

    def evaluate(
        self, model: nn.Module, batches: Iterable[Batch], device: torch.device, autocast: Callable[[], Any]
    ) -> dict[str, float]:
        pred, true = [], []
        patch = {self.view: self.config.patch_size(self.view)}

        def sigmoid(window: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            with autocast():
                logits = model(window)
            return {v: torch.sigmoid(x.float()) for v, x in logits.items()}

        for batch in batches:
            batch = self.prepare_eval(to_device(batch, device))
            probs = average_windows({self.view: batch["image"][self.view]}, patch, sigmoid)[self.view]
            pred.append(soft_argmax(probs))
            true.append(batch["points"][self.view].float())
        return self._distances(pred, true)


class LandmarkCoordinateTask(_LandmarkTask):
    name = "landmark_coordinate"

    def _scale(self, image: torch.Tensor) -> torch.Tensor:
        nx, ny = image.shape[2:4]
        return torch.tensor([nx, ny] * N_LANDMARKS, dtype=torch.float32, device=image.device)

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image = batch["image"][self.view]
        scale = self._scale(image)
        pred = global_forward(model, {self.view: image}, self.config.model.reduce).float() * scale
        true = batch["points"][self.view].float().reshape(image.shape[0], -1)
        relative = _RELATIVE.to(pred.device)
        point_loss = wing_loss(pred, true)
        relative_loss = wing_loss(pred @ relative, true @ relative)
        return point_loss + relative_loss, {
            "landmark_wing": point_loss.detach(),
            "relative_wing": relative_loss.detach(),
            "landmark_mae": (pred.detach() - true).abs().mean(),
        }

    def evaluate(
        self, model: nn.Module, batches: Iterable[Batch], device: torch.device, autocast: Callable[[], Any]
    ) -> dict[str, float]:
        pred, true = [], []
        patch = {self.view: self.config.patch_size(self.view)}
        for batch in batches:
            batch = self.prepare_eval(to_device(batch, device))
            image = batch["image"][self.view]

            def predict(window: dict[str, torch.Tensor]) -> torch.Tensor:
                with autocast():
                    out = global_forward(model, window, self.config.model.reduce)
                return out.float() * self._scale(window[self.view])

            windows = sliding_window({self.view: image}, patch, predict)
            # a window's coordinates are relative to its origin
            points = [
                out.reshape(-1, N_LANDMARKS, 2)
                + torch.tensor([where[self.view][0].start or 0, where[self.view][1].start or 0], device=out.device)
                for where, out in windows
            ]
            pred.append(torch.stack(points).mean(dim=0))
            true.append(batch["points"][self.view].float())
        return self._distances(pred, true)
