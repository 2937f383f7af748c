"""Study-level prediction from pooled features: classification, regression (and the shared forward for survival).

Classification: cross-entropy with label smoothing (0.1 in the reference), validated by MCC, accuracy, AUROC,
sensitivity and specificity from `cinema.metrics.classification_metrics`. Regression: MSE on a z-scored target
(mean and std from the config or the training split), validated by MAE in z-units (the reference's early-stopping
metric) and in the target's own units (``restored_*``). Studies larger than the patch are predicted by sliding
windows, averaging probabilities (classification) or values (regression).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cinema.config import FinetuneConfig
from cinema.metrics import classification_metrics, regression_metrics
from cinema.models.inference import global_forward, to_device, windowed_outputs
from cinema.tasks.base import Batch, Task


class ClassificationTask(Task):
    name = "classification"
    default_metric = "mcc"
    metric_modes = {"mcc": "max", "accuracy": "max", "auroc": "max", "sensitivity": "max", "specificity": "max"}

    def __init__(self, config: FinetuneConfig) -> None:
        super().__init__(config)
        self.classes = list(config.data.classes or [])

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = global_forward(model, batch["image"], self.config.model.reduce).float()
        loss = F.cross_entropy(logits, batch["target"].long(), label_smoothing=self.config.train.label_smoothing)
        return loss, {"cross_entropy": loss.detach()}

    def evaluate(
        self, model: nn.Module, batches: Iterable[Batch], device: torch.device, autocast: Callable[[], Any]
    ) -> dict[str, float]:
        probs, truth = [], []
        patch = {view: self.config.patch_size(view) for view in self.views}
        for batch in batches:
            batch = self.prepare_eval(to_device(batch, device))
            softmax = lambda x: torch.softmax(x, dim=1)  # noqa: E731
            probs.append(windowed_outputs(model, batch["image"], patch, self.config.model.reduce, autocast, softmax))
            truth.append(batch["target"])
        proba = torch.cat(probs).cpu().numpy()
        true = torch.cat(truth).cpu().numpy().astype(int)
        metrics = classification_metrics(true, proba)
        return {key: metrics[key] for key in self.metric_modes}


class RegressionTask(Task):
    name = "regression"
    default_metric = "mae"
    metric_modes = {"mae": "min", "rmse": "min", "restored_mae": "min", "restored_rmse": "min"}

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        preds = global_forward(model, batch["image"], self.config.model.reduce).float()[:, 0]
        target = batch["target"].to(preds.dtype)
        mse = F.mse_loss(preds, target)
        return mse, {"mse": mse.detach(), "mae": F.l1_loss(preds.detach(), target)}

    def evaluate(
        self, model: nn.Module, batches: Iterable[Batch], device: torch.device, autocast: Callable[[], Any]
    ) -> dict[str, float]:
        preds, truth = [], []
        patch = {view: self.config.patch_size(view) for view in self.views}
        for batch in batches:
            batch = self.prepare_eval(to_device(batch, device))
            preds.append(windowed_outputs(model, batch["image"], patch, self.config.model.reduce, autocast)[:, 0])
            truth.append(batch["target"].float())
        pred = torch.cat(preds).cpu().numpy().astype(np.float64)
        true = torch.cat(truth).cpu().numpy().astype(np.float64)
        mean, std = self.config.data.regression_mean or 0.0, self.config.data.regression_std or 1.0
        z = regression_metrics(pred, true)
        restored = regression_metrics(pred * std + mean, true * std + mean)
        return {"mae": z["mae"], "rmse": z["rmse"], "restored_mae": restored["mae"], "restored_rmse": restored["rmse"]}
