"""CineMA MAE pre-training: one process, or many under ``torchrun`` (env:// rendezvous, so multi-node is unchanged).

    cinema pretrain configs/pretrain_tiny.yaml                               # one process
    torchrun --nproc_per_node 8 -m cinema.cli pretrain configs/pretrain_base.yaml   # one node, 8 GPUs

What one run does, in order (`pretrain`):

1. join the process group if launched by torchrun (NCCL on GPU, gloo on CPU; each rank takes cuda:LOCAL_RANK);
2. open the data (`cinema.train.pretrain_data`): shards or an index, one random time point per study per epoch;
3. build the MAE from the seed (identical on every rank), wrap it in DDP, or FSDP for large / huge;
4. AdamW (0.9, 0.95), weight decay 0.05 except norms and biases, per-step warm-up + cosine lr, bf16 autocast
   (fp16 with a gradient scaler), clip 5, gradient accumulation up to the global ``train.batch_size``;
5. every ``checkpoint_every`` steps and at every epoch end, an atomic checkpoint of everything the next step
   depends on: weights, optimiser, scaler, (epoch, step in epoch) — the lr schedule and the sampler position are
   functions of these — and each rank's RNG states. Killed at any moment, the run resumes from the last
   checkpoint and continues with exactly the losses the uninterrupted run would have had (tested in fp32 on CPU);
6. the model in the official format (``model/``: config.yaml + model.safetensors) every ``save_model_every``
   epochs and at the end, loadable with `cinema.load_model` and as ``model.init: pretrained`` for fine-tuning.

The loss is the reference's MSE on masked tokens of raw [0, 1] pixels, averaged over a sample's views and then over
samples (so it splits exactly over micro-batches and ranks); views a study lacks are left out of its average.

Output folder: ``config.yaml``, ``checkpoint.pt``, ``train_log.csv`` (one row per optimiser step), ``model/``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from cinema.config import PretrainConfig
from cinema.config.parse import resolve_path, save_config
from cinema.io.atomic import check_apart_from_inputs
from cinema.io.errors import InputError
from cinema.models.inference import to_device
from cinema.models.mae import CineMA
from cinema.models.vit import patchify
from cinema.train.datasets import derive_seed
from cinema.train.optim import lr_at, param_groups
from cinema.train.pretrain_data import GlobalBatchSampler, PretrainDataset, open_source
from cinema.train.runlog import CsvLog
from cinema.train.runtime import (
    CHECKPOINT,
    MODEL_DIR,
    autocast_context,
    check_resumable,
    load_checkpoint,
    resolve_device,
    rng_state,
    save_checkpoint,
    set_rng_state,
    to_host,
)

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------------------
# Processes and devices
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    started_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor


def init_distributed(device_name: str = "auto") -> Dist:
    """One process, or the rank torchrun started (its env:// variables: RANK, WORLD_SIZE, MASTER_ADDR, ...)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_name)
    if world_size == 1:
        return Dist(device=device)
    use_cuda = device.type == "cuda"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    started = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", init_method="env://")
        started = True
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank, device, started)


def wrap_model(model: nn.Module, config: PretrainConfig, info: Dist) -> tuple[nn.Module, str]:
    """DDP, or FSDP (per transformer block, then the rest) for large / huge; unwrapped in one process."""
    if info.world_size == 1:
        return model, "single"
    strategy = config.train.strategy
    if strategy == "auto":
        strategy = "fsdp" if config.model.size in ("large", "huge") else "ddp"
    if strategy == "ddp":
        ids = [info.device.index] if info.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids), "ddp"
    from torch.distributed.fsdp import fully_shard

    for block in [*model.encoder.blocks, *model.decoder.blocks]:
        fully_shard(block)
    fully_shard(model)
    return model, "fsdp"


@contextlib.contextmanager
def _gradient_sync(model: nn.Module, strategy: str, sync: bool):
    """Reduce gradients across ranks only on the last micro-batch of an accumulation window."""
    if strategy == "ddp" and not sync:
        with model.no_sync():
            yield
        return
    if strategy == "fsdp":
        model.set_requires_gradient_sync(sync)
    yield


# ---------------------------------------------------------------------------------------------------------------------
# One optimiser step
# ---------------------------------------------------------------------------------------------------------------------


def masked_loss(
    model: nn.Module, batch: dict[str, Any], views: list[str], token_sizes: dict[str, tuple[int, ...]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample loss (B,) and per-(sample, view) MSE (B, V) on masked tokens; absent views are left out."""
    _, preds, masks, _ = model(batch["image"], masks=batch["mask"])
    per_view = []
    for view in views:
        target = patchify(batch["image"][view], token_sizes[view])[masks[view]].view(preds[view].shape)
        per_view.append((preds[view].float() - target.float()).pow(2).mean(dim=(1, 2)))
    mse = torch.stack(per_view, dim=1)
    present = batch["present"].to(mse.dtype)
    return (mse * present).sum(1) / present.sum(1).clamp(min=1.0), mse.detach() * present


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    micro_batches: list[dict[str, Any]],
    *,
    views: list[str],
    token_sizes: dict[str, tuple[int, ...]],
    lr: float,
    clip_grad: float,
    precision: str,
    strategy: str,
    info: Dist,
) -> dict[str, float]:
    """Forward/backward over the micro-batches (gradients averaged over the global batch), clip, AdamW step.

    Returns the global batch's mean loss, per-view MSE and the gradient norm before clipping, read from the device
    in one copy (the step's one wait for the GPU).
    """
    n_accum = len(micro_batches)
    autocast = autocast_context(info.device, precision)
    loss_sum = torch.zeros((), device=info.device, dtype=torch.float64)
    view_sum = torch.zeros(len(views), device=info.device, dtype=torch.float64)
    view_count = torch.zeros(len(views), device=info.device, dtype=torch.float64)
    n_samples = torch.zeros((), device=info.device, dtype=torch.float64)
    for j, batch in enumerate(micro_batches):
        batch = to_device(batch, info.device)
        with _gradient_sync(model, strategy, sync=j == n_accum - 1), autocast():
            per_sample, per_view = masked_loss(model, batch, views, token_sizes)
            # mean over this micro-batch / n_accum, then DDP / FSDP average over ranks = mean over the global batch
            scaler.scale(per_sample.mean() / n_accum).backward()
        loss_sum += per_sample.detach().double().sum()
        view_sum += per_view.double().sum(0)
        view_count += batch["present"].double().sum(0)
        n_samples += per_sample.shape[0]
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    scaler.unscale_(optimizer)
    params = [p for p in model.parameters() if p.requires_grad]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, clip_grad if clip_grad > 0 else math.inf)
    if hasattr(grad_norm, "full_tensor"):  # FSDP: a DTensor holding the global norm
        grad_norm = grad_norm.full_tensor()
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    totals = info.sum(torch.cat([loss_sum[None], n_samples[None], view_sum, view_count]))
    (loss,), (norm,), sums = to_host([totals[0] / totals[1], grad_norm, totals])
    if not math.isfinite(loss):
        raise FloatingPointError("non-finite pre-training loss; lower train.lr or check the data")
    metrics = {"loss": loss, "grad_norm": norm}
    k = len(views)
    for i, view in enumerate(views):
        count = sums[2 + k + i]
        metrics[f"loss_{view}"] = sums[2 + i] / count if count else math.nan
    return metrics


# ---------------------------------------------------------------------------------------------------------------------
# Model, optimiser, checkpoints
# ---------------------------------------------------------------------------------------------------------------------


def build_mae(config: PretrainConfig) -> CineMA:
    """The MAE from the seed (so every rank builds the same weights), optionally from earlier MAE weights."""
    torch.manual_seed(derive_seed(config.seed, 0, 3))
    model = CineMA(**config.model_kwargs())
    if config.model.weights is not None:
        from cinema.models.checkpoint import load_model, load_state_dict_file

        path = resolve_path(config.model.weights)
        if not path.exists():
            raise FileNotFoundError(f"config key 'model.weights': {path} does not exist")
        state = load_model(path).state_dict() if path.is_dir() else load_state_dict_file(path)
        missing, unexpected = model.load_state_dict(state, strict=False)
        shaped = [k for k, v in model.state_dict().items() if k in state and state[k].shape != v.shape]
        if missing or unexpected or shaped:
            raise ValueError(
                f"config key 'model.weights': {path} does not fit the configured MAE "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]}, reshaped {shaped[:3]})"
            )
    return model


def _full_state(model: nn.Module, optimizer: torch.optim.Optimizer, strategy: str) -> tuple[dict, dict]:
    """Whole (unsharded) model and optimiser state; a collective call under FSDP."""
    if strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_state_dict(model, optimizer, options=options)
    raw = model.module if strategy == "ddp" else model
    return raw.state_dict(), optimizer.state_dict()


def _load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer, strategy: str, state: dict) -> None:
    if strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        options = StateDictOptions(full_state_dict=True)
        set_state_dict(
            model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"], options=options
        )
        return
    raw = model.module if strategy == "ddp" else model
    raw.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])


def _check_resumable(saved: dict[str, Any], config: PretrainConfig, strategy: str, path: Path) -> None:
    check_resumable(saved["config"], config.to_dict(), path)
    if (saved["strategy"] == "fsdp") != (strategy == "fsdp"):
        raise InputError(f"cannot resume {path}: written with {saved['strategy']}, this run uses {strategy}")


def save_official(model: nn.Module, state: dict[str, torch.Tensor], config: PretrainConfig, folder: Path) -> None:
    """The official format (config.yaml + model.safetensors) from a full state dict."""
    from cinema.models.checkpoint import save_model

    cpu_model = CineMA(**config.model_kwargs())
    cpu_model.load_state_dict({k: v.detach().cpu() for k, v in state.items()})
    save_model(cpu_model, folder)


# ---------------------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class PretrainResult:
    output_dir: Path
    global_step: int
    epoch: int
    losses: list[float]  # per optimiser step, this call only
    model_dir: Path | None


def pretrain(
    config: PretrainConfig,
    resume: bool = False,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> PretrainResult:
    """Run (or, with ``resume`` and a checkpoint in output_dir, continue) pre-training; see the module docstring.

    ``on_step(global_step, metrics)`` is called on every rank after each optimiser step and its checkpoint.
    """
    info = init_distributed(config.train.device)
    try:
        return _pretrain(config, resume, on_step, info)
    finally:
        if info.started_group:
            dist.destroy_process_group()


@dataclass
class _Run:
    """What one pre-training run carries from step to step (made by `_setup`, advanced by `train_one_epoch`)."""

    config: PretrainConfig
    info: Dist
    out: Path
    model: nn.Module
    strategy: str
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    sampler: GlobalBatchSampler
    loader: DataLoader
    views: list[str]
    token_sizes: dict[str, tuple[int, ...]]
    log: CsvLog | None = None  # the main rank's train_log.csv
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0


def _pretrain(
    config: PretrainConfig, resume: bool, on_step: Callable[[int, dict[str, float]], None] | None, info: Dist
) -> PretrainResult:
    run = _setup(config, resume, info)
    train = config.train
    losses: list[float] = []
    model_dir = None
    max_steps = train.max_steps if train.max_steps is not None else math.inf
    run.model.train()
    while run.epoch < train.n_epochs and run.global_step < max_steps:
        model_dir = train_one_epoch(run, losses, max_steps, on_step) or model_dir
    if model_dir is None:  # stopped by max_steps, or resumed a finished run
        model_dir = _save_model_snapshot(run)
    return PretrainResult(run.out, run.global_step, run.epoch, losses, model_dir)


def _setup(config: PretrainConfig, resume: bool, info: Dist) -> _Run:
    """Every check, the data, the model (wrapped for DDP / FSDP), the optimiser and, with ``resume``, the state of
    the last checkpoint; the main rank also prepares the output folder and its log."""
    cfg, train = config, config.train
    out = resolve_path(cfg.output_dir)
    checkpoint_path = out / CHECKPOINT
    if checkpoint_path.exists() and not resume:
        raise InputError(f"{out} already holds a run ({CHECKPOINT}); pass --resume or choose another output_dir")
    resume = resume and checkpoint_path.exists()
    data_paths = [resolve_path(p) for p in (cfg.data.shards, cfg.data.index) if p]
    check_apart_from_inputs(out, data_paths, folder=True)

    # data: every rank opens the same source; the sampler hands each rank its part of every global batch
    source = open_source(cfg)
    model = build_mae(cfg)
    views = list(model.views)
    token_sizes = {v: model.enc_down_dict[v].token_size for v in views}
    n_tokens = {v: math.prod(model.enc_down_dict[v].grid_size) for v in views}
    dataset = PretrainDataset(source, cfg, n_tokens)
    micro = train.batch_size_per_device
    sampler = GlobalBatchSampler(len(dataset), cfg.seed, train.batch_size, micro, info.rank, info.world_size)
    loader = DataLoader(
        dataset, batch_sampler=sampler, num_workers=train.n_workers, pin_memory=info.device.type == "cuda"
    )

    model, strategy = wrap_model(model.to(info.device), cfg, info)
    optimizer = torch.optim.AdamW(param_groups(model, train.weight_decay), lr=train.lr, betas=tuple(train.betas))
    scaler = torch.amp.GradScaler(info.device.type, enabled=train.precision == "fp16")
    run = _Run(cfg, info, out, model, strategy, optimizer, scaler, sampler, loader, views, token_sizes)
    if resume:
        state = load_checkpoint(checkpoint_path)
        _check_resumable(state, cfg, strategy, checkpoint_path)
        _load_full_state(model, optimizer, strategy, state)
        scaler.load_state_dict(state["scaler"])
        run.epoch, run.step_in_epoch, run.global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
        if len(state["rng"]) == info.world_size:  # sample randomness is seeded; this covers anything else
            set_rng_state(state["rng"][info.rank])
        logger.info("resumed %s at epoch %d, step %d", checkpoint_path, run.epoch + 1, run.global_step)

    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        if not resume:
            (out / "train_log.csv").unlink(missing_ok=True)
        run.log = CsvLog(out / "train_log.csv")
        run.log.truncate_after(run.global_step)  # rows after the checkpoint belong to the interrupted attempt
        n_params = sum(p.numel() for p in model.parameters())
        logger.info(
            "%d studies, %d steps/epoch (global batch %d = %d ranks x %d x %d accumulation), %s, "
            "%d parameters, %s on %s",
            len(dataset),
            sampler.steps_per_epoch,
            train.batch_size,
            info.world_size,
            micro,
            sampler.accumulation,
            cfg.model.size,
            n_params,
            strategy,
            info.device,
        )
    return run


def train_one_epoch(
    run: _Run,
    losses: list[float],
    max_steps: float,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> Path | None:
    """Optimiser steps from the run's position to the end of its epoch (or ``max_steps``), each loss appended to
    ``losses``, with checkpoints and model snapshots when due; returns the snapshot's folder if one was written."""
    train, info = run.config.train, run.info
    steps_per_epoch, n_accum = run.sampler.steps_per_epoch, run.sampler.accumulation
    run.sampler.set_epoch(run.epoch, run.step_in_epoch)
    bar = tqdm(
        total=steps_per_epoch,
        initial=run.step_in_epoch,
        desc=f"epoch {run.epoch + 1}/{train.n_epochs}",
        disable=not (info.is_main and train.progress_bar) or None,
        leave=False,
    )
    model_dir = None
    window: list[dict[str, Any]] = []
    started = time.perf_counter()
    for batch in run.loader:
        window.append(batch)
        if len(window) < n_accum:
            continue
        lr = lr_at(
            run.epoch + run.step_in_epoch / steps_per_epoch,
            train.lr,
            train.min_lr,
            train.n_warmup_epochs,
            train.n_epochs,
        )
        metrics = train_step(
            run.model,
            run.optimizer,
            run.scaler,
            window,
            views=run.views,
            token_sizes=run.token_sizes,
            lr=lr,
            clip_grad=train.clip_grad,
            precision=train.precision,
            strategy=run.strategy,
            info=info,
        )
        window = []
        run.step_in_epoch += 1
        run.global_step += 1
        elapsed = time.perf_counter() - started
        metrics["samples_per_s"] = train.batch_size / elapsed if elapsed > 0 else math.nan
        started = time.perf_counter()
        losses.append(metrics["loss"])
        if run.log is not None:
            run.log.write({"epoch": run.epoch + 1, "step": run.global_step, "lr": lr, **metrics})
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['loss']:.4f}")
        end_of_epoch = run.step_in_epoch == steps_per_epoch
        if end_of_epoch:
            run.epoch, run.step_in_epoch = run.epoch + 1, 0
        stop = run.global_step >= max_steps
        if end_of_epoch or stop or run.global_step % train.checkpoint_every == 0:
            _save_checkpoint(run)
        if end_of_epoch and (run.epoch % train.save_model_every == 0 or run.epoch == train.n_epochs):
            model_dir = _save_model_snapshot(run)
        if on_step is not None:
            on_step(run.global_step, metrics)
        if stop:
            break
    bar.close()
    return model_dir


def _save_checkpoint(run: _Run) -> None:
    """Everything the next step depends on, every rank's RNG states included; a collective call."""
    info = run.info
    model_state, optim_state = _full_state(run.model, run.optimizer, run.strategy)
    rngs = [None] * info.world_size
    if info.world_size > 1:
        dist.all_gather_object(rngs, rng_state())
    else:
        rngs = [rng_state()]
    if info.is_main:
        save_checkpoint(
            {
                "config": run.config.to_dict(),
                "strategy": run.strategy,
                "model": model_state,
                "optimizer": optim_state,
                "scaler": run.scaler.state_dict(),
                "epoch": run.epoch,
                "step_in_epoch": run.step_in_epoch,
                "global_step": run.global_step,
                "rng": rngs,
            },
            run.out / CHECKPOINT,
        )
    info.barrier()


def _save_model_snapshot(run: _Run) -> Path:
    """The model in the official format (``model/``); a collective call under FSDP."""
    strategy = run.strategy
    model_state, _ = _full_state(run.model, run.optimizer, strategy) if strategy == "fsdp" else (None, None)
    if run.info.is_main:
        raw = run.model.module if strategy == "ddp" else run.model
        state = model_state if model_state is not None else raw.state_dict()
        save_official(raw, state, run.config, run.out / MODEL_DIR)
    run.info.barrier()
    return run.out / MODEL_DIR
