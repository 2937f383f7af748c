"""Survival: a Cox proportional-hazards head on pooled CineMA (or ResNet) features.

The network's single output is a log-hazard (risk score; higher = earlier event). Training minimises the negative
Cox partial log-likelihood (Breslow ties) of each optimiser batch, `cinema.metrics.cox_partial_likelihood_loss`; the
likelihood couples the samples of a batch, so larger batches estimate it better and a batch without any event adds
no gradient. Validation scores the whole validation split at once: Harrell's concordance index (early-stopping
metric) and the Cox loss.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from cinema.metrics import concordance_index, cox_partial_likelihood_loss
from cinema.models.inference import global_forward, to_device, windowed_outputs
from cinema.tasks.base import Batch, Task


class SurvivalTask(Task):
    name = "survival"
    default_metric = "c_index"
    metric_modes = {"c_index": "max", "cox_loss": "min"}

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        risk = global_forward(model, batch["image"], self.config.model.reduce).float()[:, 0]
        loss = cox_partial_likelihood_loss(risk, batch["time"].float(), batch["event"].float())
        return loss, {"cox_loss": loss.detach()}

    def evaluate(
        self, model: nn.Module, batches: Iterable[Batch], device: torch.device, autocast: Callable[[], Any]
    ) -> dict[str, float]:
        risks, times, events = [], [], []
        patch = {view: self.config.patch_size(view) for view in self.views}
        for batch in batches:
            batch = self.prepare_eval(to_device(batch, device))
            risks.append(windowed_outputs(model, batch["image"], patch, self.config.model.reduce, autocast)[:, 0])
            times.append(batch["time"].float())
            events.append(batch["event"].float())
        risk, time, event = torch.cat(risks).cpu(), torch.cat(times).cpu(), torch.cat(events).cpu()
        return {
            "c_index": float(concordance_index(time.numpy(), event.numpy(), risk.numpy())),
            "cox_loss": float(cox_partial_likelihood_loss(risk, time, event)),
        }
