"""The one fine-tuning loop every task and every model family goes through.

`Trainer(config).fit()` does, in order: every check that can fail (output folder, early-stopping metric, weights
files, the whole dataset with its labels and geometry) *before* the first step; then epochs of AdamW steps with
gradient accumulation, per-iteration warm-up + cosine learning rate, bf16 autocast, gradient clipping, batched
augmentation; validation every ``eval_interval`` epochs with early stopping; an atomic resumable checkpoint and the
selected model in the official format (``<output_dir>/model``: config.yaml + model.safetensors, loadable with
`cinema.load_model`).

Reproducible and exactly resumable: the initial weights come from ``seed``, and every random stream is re-seeded at
the start of each epoch from (seed, epoch) — the sample order and per-sample crops (`EpochSampler`), the batch
augmentation generator and torch's global generator (dropout, drop path). A checkpoint taken after epoch e therefore
restarts epoch e + 1 exactly as the uninterrupted run would (bit-identical in fp32 on the CPU), with the optimiser
state, step count and early-stopping state restored.

Output folder::

    config.yaml        resolved config of the run
    splits.json        train / validation ids
    checkpoint.pt      latest resumable state (model, optimiser, epoch, step, early stopping)
    model/             selected weights, official format (best validation metric; last epoch without validation)
    train_log.csv      one row per optimiser step: epoch, step, lr, loss, grad_norm, loss parts
    val_log.csv        one row per validation: epoch, step, metrics
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from cinema.config import FinetuneConfig
from cinema.config.parse import resolve_path, save_config
from cinema.io.atomic import check_apart_from_inputs, write_text_atomic
from cinema.io.errors import InputError
from cinema.models.inference import to_device
from cinema.tasks import make_task
from cinema.train.datasets import build_datasets, derive_seed
from cinema.train.optim import EarlyStopping, lr_at, param_groups
from cinema.train.runlog import CsvLog, TensorBoard
from cinema.train.runtime import (
    CHECKPOINT,
    MODEL_DIR,
    autocast_context,
    check_resumable,
    load_checkpoint,
    resolve_device,
    save_checkpoint,
    to_host,
)

logger = logging.getLogger(__name__)


@dataclass
class FitResult:
    """What a finished `Trainer.fit` reports."""

    output_dir: Path
    epochs_completed: int
    global_step: int
    stopped_early: bool
    best_metric: float | None
    best_epoch: int
    metric: str | None
    train_losses: list[float] = field(default_factory=list)  # per optimiser step, this call only
    val_metrics: list[dict[str, float]] = field(default_factory=list)


def widen_to_context(
    state: dict[str, torch.Tensor], target: dict[str, torch.Tensor], context: int, source_context: int = 0
) -> dict[str, torch.Tensor]:
    """A slice model's weights for a 2.5-D twin with more context: input convs get zero weights for the new slices.

    Each input-conv weight with ``c * (1 + 2 * source_context)`` input channels where the wider model has
    ``c * (1 + 2 * context)`` keeps its weights on every frame's central slices, so the widened network starts out
    computing exactly what the narrower model did and fine-tuning learns what the extra neighbours add. Other tensors
    are returned unchanged.
    """
    width, source_width = 1 + 2 * context, 1 + 2 * source_context
    if source_context < 0 or context < source_context:
        raise ValueError(f"cannot widen a model with {source_context} context slices to {context}")
    out = dict(state)
    for key, value in state.items():
        want = target.get(key)
        if want is None or want.shape == value.shape or value.ndim < 3 or value.shape[1] % source_width:
            continue
        groups = value.shape[1] // source_width  # frames (or other channel groups), each a stack of slices
        if want.shape[:1] + want.shape[2:] != value.shape[:1] + value.shape[2:] or want.shape[1] != groups * width:
            continue
        widened = value.new_zeros(want.shape)
        for group in range(groups):
            start = group * width + context - source_context
            widened[:, start : start + source_width] = value[:, group * source_width : (group + 1) * source_width]
        out[key] = widened
        logger.info(
            "model.weights: %s widened from %d to %d input channels (zeros for the added context slices)",
            key,
            value.shape[1],
            want.shape[1],
        )
    return out


class Trainer:
    """Fine-tune one model on one task as the config says; see the module docstring.

    Args:
        config: a validated `FinetuneConfig`.
        resume: continue from ``<output_dir>/checkpoint.pt``; without it an existing checkpoint is an error, so a
            finished run is never overwritten by accident.
    """

    def __init__(self, config: FinetuneConfig, resume: bool = False) -> None:
        self.config = config
        self.resume = resume
        self.output_dir = resolve_path(config.output_dir)
        self.device = resolve_device(config.train.device)
        self.task = make_task(config)
        self.precision = "bf16" if config.train.amp else "fp32"
        self.model: nn.Module | None = None
        self._ready = False

    # ------------------------------------------------------------------------------------------------------------
    # Set-up: everything that can fail happens here, before the first step.
    # ------------------------------------------------------------------------------------------------------------

    def setup(self) -> None:
        cfg = self.config
        checkpoint = self.output_dir / CHECKPOINT
        if checkpoint.exists() and not self.resume:
            raise InputError(
                f"{self.output_dir} already holds a run ({CHECKPOINT}); resume it or choose another output_dir"
            )
        if self.resume and not checkpoint.exists():
            raise FileNotFoundError(f"cannot resume: {checkpoint} does not exist")
        inputs = [resolve_path(cfg.data.dir)] + ([resolve_path(cfg.model.weights)] if cfg.model.weights else [])
        check_apart_from_inputs(self.output_dir, inputs, folder=True)
        stopping = cfg.train.early_stopping
        self.metric = (stopping.metric or self.task.default_metric).removeprefix("val_")
        mode = self.task.metric_mode(self.metric)  # raises for a metric the task does not produce
        self.early_stopping = EarlyStopping(stopping.mode or mode, stopping.patience, stopping.min_delta)
        if cfg.model.init != "scratch":
            weights = resolve_path(cfg.model.weights)
            if not weights.exists():
                raise FileNotFoundError(f"config key 'model.weights': {weights} does not exist")

        self.train_set, self.val_set = build_datasets(cfg)
        self._plan_batches(len(self.train_set))
        torch.manual_seed(derive_seed(cfg.seed, 0, 3))  # the initial weights are a function of the seed
        self.model = self._build_model().to(self.device)
        groups = param_groups(
            self.model,
            cfg.train.weight_decay,
            cfg.train.layer_decay if cfg.model.init != "scratch" else None,
        )
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.train.lr, betas=tuple(cfg.train.betas))
        self.global_step = 0
        self.start_epoch = 0
        self.stopped = False
        if self.resume:
            self._load_checkpoint(checkpoint)
        self._ready = True
        n_params = sum(p.numel() for p in self.model.parameters())
        n_trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        logger.info(
            "%s: %d training samples, %d validation studies; %s with %d parameters (%d trainable) on %s",
            cfg.task,
            len(self.train_set),
            len(self.val_set) if self.val_set else 0,
            cfg.model.name,
            n_params,
            n_trainable,
            self.device,
        )

    def _prepare_output(self) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        save_config(self.config, self.output_dir / "config.yaml")
        splits = {"train": self.train_set.subject_ids, "val": self.val_set.subject_ids if self.val_set else []}
        write_text_atomic(self.output_dir / "splits.json", json.dumps(splits, indent=1))
        if not self.resume:  # logs of an earlier attempt that never reached a checkpoint
            for name in ("train_log.csv", "val_log.csv"):
                (self.output_dir / name).unlink(missing_ok=True)
        self.train_log = CsvLog(self.output_dir / "train_log.csv")
        self.val_log = CsvLog(self.output_dir / "val_log.csv")
        # an interrupted stretch after the last checkpoint is dropped, so the logs read as one run
        self.train_log.truncate_after(self.global_step)
        self.val_log.truncate_after(self.global_step)

    def _plan_batches(self, n_samples: int) -> None:
        """Effective batch, micro-batch and accumulation; a dataset smaller than the batch halves it (reference)."""
        train = self.config.train
        if n_samples < 1:
            raise ValueError("the training split is empty")
        batch_size, per_device = train.batch_size, train.batch_size_per_device
        while batch_size > n_samples:
            batch_size //= 2
        if batch_size != train.batch_size:
            logger.warning(
                "only %d training samples: batch size %d instead of %d", n_samples, batch_size, train.batch_size
            )
        per_device = min(per_device, batch_size)
        while batch_size % per_device:
            per_device -= 1
        self.batch_size, self.micro_batch = batch_size, per_device
        self.n_accum = batch_size // per_device
        micro_batches = n_samples // per_device
        self.steps_per_epoch = micro_batches // self.n_accum

    def _build_model(self) -> nn.Module:
        from cinema.models.checkpoint import build_model, load_model, load_pretrained_encoder

        cfg = self.config
        model = build_model(cfg.model_config())
        if cfg.model.init == "pretrained":
            load_pretrained_encoder(model, resolve_path(cfg.model.weights), freeze=cfg.model.freeze_pretrained)
        elif cfg.model.init == "finetuned":
            source = load_model(resolve_path(cfg.model.weights))
            state = source.state_dict()
            target = model.state_dict()
            if cfg.data.context_slices:
                # the source's own config.yaml (kept on the loaded model) says how many neighbours it was trained with
                source_context = int(source.config.get("data", {}).get("sax", {}).get("context_slices", 0))
                state = widen_to_context(state, target, cfg.data.context_slices, source_context)
            mismatched = [k for k in target if k not in state or state[k].shape != target[k].shape]
            extra = [k for k in state if k not in target]
            if mismatched or extra:
                raise ValueError(
                    f"config key 'model.weights': {cfg.model.weights} does not fit the configured model "
                    f"(missing or reshaped: {mismatched[:5]}, unexpected: {extra[:5]})"
                )
            model.load_state_dict(state)
            if cfg.model.freeze_pretrained:
                for name, param in model.named_parameters():
                    if name.startswith(("enc_", "encoder.")):
                        param.requires_grad_(False)
        return model

    def _load_checkpoint(self, path: Path) -> None:
        state = load_checkpoint(path)
        check_resumable(state["config"], self.config.to_dict(), path)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.early_stopping.load_state_dict(state["early_stopping"])
        self.start_epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])
        self.stopped = bool(state["stopped"])
        logger.info("resumed %s at epoch %d (step %d)", path, self.start_epoch, self.global_step)

    def _save_checkpoint(self, next_epoch: int, stopped: bool = False) -> None:
        state = {
            "stopped": stopped,
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "early_stopping": self.early_stopping.state_dict(),
            "epoch": next_epoch,
            "global_step": self.global_step,
        }
        save_checkpoint(state, self.output_dir / CHECKPOINT)

    def _save_model(self) -> None:
        from cinema.models.checkpoint import save_model

        save_model(self.model, self.output_dir / MODEL_DIR)

    # ------------------------------------------------------------------------------------------------------------
    # Training
    # ------------------------------------------------------------------------------------------------------------

    def _loader(self, dataset: Any, train: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.micro_batch if train else 1,
            sampler=dataset.sampler(self.config.seed) if train else None,
            shuffle=False,
            drop_last=train,
            num_workers=self.config.train.n_workers,
            pin_memory=self.device.type == "cuda",
        )

    def fit(self, max_epochs: int | None = None) -> FitResult:
        """Train until ``train.n_epochs``, early stopping, or ``max_epochs`` epochs in this call (to split a run)."""
        if not self._ready:
            self.setup()
        cfg = self.config
        self._prepare_output()
        autocast = autocast_context(self.device, self.precision)
        train_loader = self._loader(self.train_set, train=True)
        val_loader = self._loader(self.val_set, train=False) if self.val_set else None
        self.tensorboard = TensorBoard(self.output_dir / "tensorboard", cfg.train.tensorboard)
        result = FitResult(self.output_dir, self.start_epoch, self.global_step, False, None, -1, self.metric)
        last_epoch = cfg.train.n_epochs
        if max_epochs is not None:
            last_epoch = min(last_epoch, self.start_epoch + max_epochs)
        self._saved_model = (self.output_dir / MODEL_DIR).exists()
        if self.stopped:  # resuming a run that early stopping ended: nothing left to do
            last_epoch = self.start_epoch
            result.stopped_early = True
        for epoch in range(self.start_epoch, last_epoch):
            started = time.perf_counter()
            result.train_losses += self.train_one_epoch(epoch, train_loader, autocast)
            result.epochs_completed, result.global_step = epoch + 1, self.global_step
            if self._end_epoch(epoch, last_epoch, val_loader, autocast, result, started):
                result.stopped_early = self.stopped = True
                break
        if val_loader is None and result.epochs_completed == cfg.train.n_epochs:
            self._save_model()  # without validation the selected model is the last one
        self.tensorboard.close()
        self.start_epoch = result.epochs_completed
        result.best_metric = self.early_stopping.best
        result.best_epoch = self.early_stopping.best_epoch
        return result

    def train_one_epoch(self, epoch: int, loader: DataLoader, autocast: Callable[[], Any]) -> list[float]:
        """One epoch of optimiser steps (gradient accumulation over micro-batches); returns each step's loss.

        Every random stream is re-seeded from (seed, epoch) first, so the epoch is the same whether or not the run
        was interrupted and resumed before it.
        """
        cfg = self.config
        torch.manual_seed(derive_seed(cfg.seed, epoch, 0))
        loader.sampler.set_epoch(epoch)
        generator = torch.Generator().manual_seed(derive_seed(cfg.seed, epoch, 1))
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        self._trainable = [p for p in self.model.parameters() if p.requires_grad]
        n_micro = self.steps_per_epoch * self.n_accum
        bar = tqdm(
            total=self.steps_per_epoch,
            desc=f"epoch {epoch + 1}/{cfg.train.n_epochs}",
            disable=None if cfg.train.progress_bar else True,
            leave=False,
        )
        losses: list[float] = []
        window: list[tuple[torch.Tensor, dict[str, torch.Tensor], list[str]]] = []  # (loss, parts, ids)
        for i, batch in enumerate(loader):
            if i >= n_micro:
                break
            batch = self.task.augment(to_device(batch, self.device), generator)
            with autocast():
                loss, parts = self.task.loss(self.model, batch)
            (loss / self.n_accum).backward()
            window.append((loss.detach(), parts, batch["id"]))
            if (i + 1) % self.n_accum:
                continue
            row = self._optimizer_step(epoch, (i + 1) // self.n_accum - 1, window)
            losses.append(row["loss"])
            window = []
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}")
        bar.close()
        return losses

    def _optimizer_step(
        self, epoch: int, step_in_epoch: int, window: list[tuple[torch.Tensor, dict[str, torch.Tensor], list[str]]]
    ) -> dict[str, Any]:
        """Learning rate, clipping and the AdamW step after one accumulation window, then its log row.

        The window's losses, loss parts and the gradient norm are read from the device in one copy, the step's
        only wait for the GPU; a non-finite loss stops the run before the weights change.
        """
        train = self.config.train
        lr = lr_at(
            epoch + step_in_epoch / self.steps_per_epoch, train.lr, train.min_lr, train.n_warmup_epochs, train.n_epochs
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        clip = train.clip_grad if train.clip_grad > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self._trainable, clip)
        parts = [(key, value) for _, step_parts, _ in window for key, value in step_parts.items()]
        host = to_host([loss for loss, _, _ in window] + [value for _, value in parts] + [grad_norm])
        window_losses = [values[0] for values in host[: len(window)]]
        for loss, (_, _, ids) in zip(window_losses, window, strict=True):
            if not math.isfinite(loss):
                raise FloatingPointError(
                    f"non-finite training loss at epoch {epoch + 1}, step {self.global_step + 1} "
                    f"(samples {ids}); lower train.lr or check the data"
                )
        window_parts: dict[str, float] = {}
        for (key, _), values in zip(parts, host[len(window) : -1], strict=True):
            mean = 0.0  # of a part's per-view values
            for value in values:
                mean += value / len(values)
            window_parts[key] = window_parts.get(key, 0.0) + mean / self.n_accum
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1
        row = {"epoch": epoch + 1, "step": self.global_step, "lr": lr, "loss": float(np.mean(window_losses))}
        row.update({"grad_norm": host[-1][0], **window_parts})
        self.train_log.write(row)
        self.tensorboard.scalars("train", row, self.global_step)
        return row

    def _end_epoch(
        self,
        epoch: int,
        last_epoch: int,
        val_loader: DataLoader | None,
        autocast: Callable[[], Any],
        result: FitResult,
        started: float,
    ) -> bool:
        """Validation when due (model selection, early stopping) and the checkpoint; True when the run should stop."""
        train = self.config.train
        # not at a max_epochs split point: an extra evaluation would change early stopping, hence the run
        due = (epoch + 1) % train.eval_interval == 0 or epoch + 1 == train.n_epochs
        evaluate = val_loader is not None and due
        if evaluate:
            metrics = self.validate(val_loader, autocast)
            self.val_log.write({"epoch": epoch + 1, "step": self.global_step, **metrics})
            self.tensorboard.scalars("val", metrics, self.global_step)
            result.val_metrics.append(metrics)
            self.early_stopping.update(metrics[self.metric], epoch + 1)
            if self.early_stopping.improved or not self._saved_model:
                self._save_model()
                self._saved_model = True
            logger.info(
                "epoch %d: %s = %.4f (best %.4f at epoch %d) in %.1f s",
                epoch + 1,
                self.metric,
                metrics[self.metric],
                self.early_stopping.best if self.early_stopping.best is not None else math.nan,
                self.early_stopping.best_epoch,
                time.perf_counter() - started,
            )
        stop = evaluate and self.early_stopping.should_stop
        interval = train.checkpoint_interval
        if evaluate or epoch + 1 == last_epoch or (interval is not None and (epoch + 1) % interval == 0):
            self._save_checkpoint(epoch + 1, stopped=stop)
        if stop:
            message = "early stopping after epoch %d: no %s improvement in %d evaluations"
            logger.info(message, epoch + 1, self.metric, self.early_stopping.patience)
        return stop

    @torch.no_grad()
    def validate(self, loader: DataLoader, autocast: Any = None) -> dict[str, float]:
        """Validation metrics of the current model (eval mode; restores train mode afterwards)."""
        autocast = autocast or autocast_context(self.device, self.precision)
        was_training = self.model.training
        self.model.eval()
        try:
            return self.task.evaluate(self.model, loader, self.device, autocast)
        finally:
            self.model.train(was_training)


def finetune(config: FinetuneConfig, resume: bool = False) -> FitResult:
    """Run a whole fine-tuning job (what ``cinema finetune`` calls)."""
    return Trainer(config, resume=resume).fit()
