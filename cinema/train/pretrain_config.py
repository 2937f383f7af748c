"""The pre-training config: YAML + ``key=value`` overrides → plain dataclasses, checked before anything runs.

Same machinery as fine-tuning (`cinema.train.config.build_dataclass`: unknown keys with a did-you-mean hint, missing
keys, wrong types), same names where they mean the same thing (``lr``, ``min_lr``, ``n_warmup_epochs``,
``batch_size``, ``batch_size_per_device``, ``data.sax`` / ``data.lax`` geometry). Defaults are the reference recipe
(reference §6): AdamW (0.9, 0.95), weight decay 0.05 without norms and biases, lr 1e-3 → 1e-6 with 10 warm-up epochs
and a cosine, clip 5, mask ratio 0.75, effective batch 64 (``batch_size`` is global: ranks × per-device batch ×
accumulation steps).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cinema.train.config import (
    VIEWS,
    VIT_SIZES,
    ViewDataConfig,
    _check,
    _lax_data,
    _sax_data,
    build_dataclass,
    read_yaml_mapping,
    required,
)

PRECISIONS = ("bf16", "fp16", "fp32")
STRATEGIES = ("auto", "ddp", "fsdp")


@dataclass
class PretrainDataConfig:
    """Where the studies come from: a ``cinema shard`` folder (any size) or a ``cinema index`` file (small data,
    read and brought into model space in memory at start-up)."""

    shards: str | None = None
    index: str | None = None
    sax: ViewDataConfig = field(default_factory=_sax_data)
    lax: ViewDataConfig = field(default_factory=_lax_data)
    max_studies: int = -1  # the first N studies of the index / shards; -1 = all
    crop_center: str = "heart"  # SAX in-plane crop: "heart" (label-free localisation) or "image"
    z_spacing: str = "auto"  # as for fine-tuning: "auto", "native" or "fixed" (data.sax.spacing[2])
    intensity: str = "frame"  # percentile scaling per "frame" (reference) or over the whole "cine"


@dataclass
class PretrainTrainConfig:
    lr: float = 1e-3
    min_lr: float = 1e-6
    n_warmup_epochs: float = 10.0
    n_epochs: int = 800
    batch_size: int = 64  # global effective batch = world size x batch_size_per_device x accumulation steps
    batch_size_per_device: int = 16
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    clip_grad: float = 5.0  # <= 0 disables clipping
    mask_ratio: float = 0.75
    precision: str = "bf16"  # bf16 / fp16 autocast (fp16 with a gradient scaler) or fp32
    strategy: str = "auto"  # ddp, fsdp, or auto: FSDP for large / huge when there are several ranks, else DDP
    device: str = "auto"  # auto, cpu, cuda (each rank takes cuda:LOCAL_RANK)
    n_workers: int = 0  # DataLoader workers per rank
    checkpoint_every: int = 500  # optimiser steps between resumable checkpoints (and at every epoch end)
    save_model_every: int = 100  # epochs between official-format model snapshots (and at the end)
    max_steps: int | None = None  # stop after this many optimiser steps in total (benchmarks, smoke tests)
    progress_bar: bool = True


@dataclass
class PretrainModelConfig:
    size: str = "base"
    views: list[str] = field(default_factory=lambda: list(VIEWS))
    patch_size: list[int] = field(default_factory=lambda: [4, 4, 1])
    scale_factor: list[int] = field(default_factory=lambda: [2, 2, 1])
    enc_conv_chans: list[int] = field(default_factory=lambda: [64, 128])
    enc_conv_n_blocks: int = 2
    grad_ckpt: bool = False  # per-block activation checkpointing (conv blocks and transformer blocks)
    weights: str | None = None  # continue pre-training from MAE weights (official cinema.safetensors or a model/)


@dataclass
class PretrainConfig:
    output_dir: str = required()
    seed: int = 0
    data: PretrainDataConfig = field(default_factory=PretrainDataConfig)
    train: PretrainTrainConfig = field(default_factory=PretrainTrainConfig)
    model: PretrainModelConfig = field(default_factory=PretrainModelConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def view_data(self, view: str) -> ViewDataConfig:
        return self.data.sax if view == "sax" else self.data.lax

    def image_size(self) -> dict[str, list[int]]:
        return {view: list(self.view_data(view).patch_size) for view in self.model.views}

    def geometry(self) -> dict[str, Any]:
        """What shards must have been written with to be usable by this config."""
        return {
            "sax": {"patch_size": list(self.data.sax.patch_size), "spacing": list(self.data.sax.spacing)},
            "lax": {"patch_size": list(self.data.lax.patch_size), "spacing": list(self.data.lax.spacing)},
            "crop_center": self.data.crop_center,
            "z_spacing": self.data.z_spacing,
            "intensity": self.data.intensity,
        }

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `cinema.models.CineMA`."""
        m = self.model
        return {
            "image_size": self.image_size(),
            "size": m.size,
            "patch_size": m.patch_size,
            "scale_factor": m.scale_factor,
            "conv_chans": m.enc_conv_chans,
            "conv_n_blocks": m.enc_conv_n_blocks,
            "grad_ckpt": m.grad_ckpt,
        }


def validate_pretrain(config: PretrainConfig) -> None:
    data, train, model = config.data, config.train, config.model
    _check(
        (data.shards is None) != (data.index is None),
        "config key 'data.shards' or 'data.index': give exactly one (a `cinema shard` folder or a `cinema index` file)",
    )
    _check(data.max_studies == -1 or data.max_studies > 0, "config key 'data.max_studies' must be -1 or > 0")
    _check(data.crop_center in ("heart", "image"), "config key 'data.crop_center' must be heart or image")
    _check(data.z_spacing in ("auto", "native", "fixed"), "config key 'data.z_spacing' must be auto, native or fixed")
    _check(data.intensity in ("frame", "cine"), "config key 'data.intensity' must be frame or cine")
    for key, view_cfg, n in (("data.sax", data.sax, 3), ("data.lax", data.lax, 2)):
        _check(len(view_cfg.patch_size) == n, f"config key '{key}.patch_size' needs {n} values")
        _check(len(view_cfg.spacing) == n, f"config key '{key}.spacing' needs {n} values")
        _check(all(p > 0 for p in view_cfg.patch_size), f"config key '{key}.patch_size' must be positive")
        _check(all(s > 0 for s in view_cfg.spacing), f"config key '{key}.spacing' must be positive")
        _check(view_cfg.in_chans == 1, f"config key '{key}.in_chans' must be 1: one channel per cine frame")
    _check(model.size in VIT_SIZES, f"config key 'model.size': {model.size!r} is not one of {', '.join(VIT_SIZES)}")
    _check(len(model.views) > 0, "config key 'model.views' must name at least one view")
    for view in model.views:
        _check(view in VIEWS, f"config key 'model.views': unknown view {view!r}; expected one of {', '.join(VIEWS)}")
    _check(len(set(model.views)) == len(model.views), "config key 'model.views' lists a view twice")
    _check(len(model.patch_size) == 3 and len(model.scale_factor) == 3, "model.patch_size / scale_factor need 3 values")
    _check(len(model.enc_conv_chans) == 2, "config key 'model.enc_conv_chans' needs 2 values (two conv stages)")
    _check(model.enc_conv_n_blocks >= 1, "config key 'model.enc_conv_n_blocks' must be >= 1")
    _check(train.n_epochs >= 1, "config key 'train.n_epochs' must be >= 1")
    _check(train.lr > 0 and train.min_lr >= 0, "config keys 'train.lr' / 'train.min_lr' must be positive")
    _check(0 <= train.n_warmup_epochs < train.n_epochs, "config key 'train.n_warmup_epochs' must be < n_epochs")
    _check(train.batch_size_per_device >= 1, "config key 'train.batch_size_per_device' must be >= 1")
    _check(
        train.batch_size % train.batch_size_per_device == 0,
        "config key 'train.batch_size' must be a multiple of train.batch_size_per_device",
    )
    _check(len(train.betas) == 2, "config key 'train.betas' needs two values")
    _check(0.0 < train.mask_ratio < 1.0, "config key 'train.mask_ratio' must be in (0, 1)")
    _check(train.precision in PRECISIONS, f"config key 'train.precision' must be one of {', '.join(PRECISIONS)}")
    _check(train.strategy in STRATEGIES, f"config key 'train.strategy' must be one of {', '.join(STRATEGIES)}")
    _check(train.n_workers >= 0, "config key 'train.n_workers' must be >= 0")
    _check(train.checkpoint_every >= 1, "config key 'train.checkpoint_every' must be >= 1")
    _check(train.save_model_every >= 1, "config key 'train.save_model_every' must be >= 1")
    _check(train.max_steps is None or train.max_steps >= 1, "config key 'train.max_steps' must be >= 1")


def pretrain_config_from_dict(values: dict[str, Any], overrides: list[str] | None = None) -> PretrainConfig:
    """Parse and validate a pre-training config dict (plus dotted overrides)."""
    config = build_dataclass(PretrainConfig, values, overrides)
    validate_pretrain(config)
    return config


def load_pretrain_config(path: str | Path, overrides: list[str] | None = None) -> PretrainConfig:
    """Read a YAML pre-training config, apply overrides, validate; errors name the file and the key.

    Relative data paths in the file are taken from the working directory, as for fine-tuning.
    """
    try:
        return pretrain_config_from_dict(read_yaml_mapping(path), overrides)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
