"""Every key of the two run formats, as plain dataclasses: fine-tuning (`FinetuneConfig`) and pre-training
(`PretrainConfig`). Parsing is `cinema.config.parse`, the cross-field checks are `cinema.config.checks`.

Fine-tuning follows the reference recipes' layout (``task``, ``seed``, ``data``, ``transform``, ``train``,
``model``), so a reference user finds the same names (``lr``, ``min_lr``, ``n_warmup_epochs``,
``batch_size_per_device``, ``early_stopping.metric`` ...). `FinetuneConfig.model_config` writes the official
``config.yaml`` dict that `cinema.models.checkpoint.build_model` reads and `save_model` stores next to the weights.

Pre-training uses the same names where they mean the same thing (``lr``, ``min_lr``, ``n_warmup_epochs``,
``batch_size``, ``batch_size_per_device``, ``data.sax`` / ``data.lax`` geometry). Its defaults are the reference
recipe (reference §6): AdamW (0.9, 0.95), weight decay 0.05 without norms and biases, lr 1e-3 → 1e-6 with 10 warm-up
epochs and a cosine, clip 5, mask ratio 0.75, effective batch 64 (``batch_size`` is global: ranks × per-device batch
× accumulation steps).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from cinema.config.official import (
    VIEWS,
    VIT_SIZES,  # noqa: F401  (checks.py reads it from here)
    ConvUNetRModelConfig,
    ConvViTModelConfig,
    ModelConfigType,
    ResNetModelConfig,
    UNetModelConfig,
)
from cinema.config.parse import required

TASKS = (
    "segmentation",
    "classification",
    "regression",
    "landmark_heatmap",
    "landmark_coordinate",
    "survival",
)
# Which model families can do which task: dense outputs need a decoder, the others a pooled head.
TASK_MODELS = {
    "segmentation": ("convunetr", "unet"),
    "landmark_heatmap": ("convunetr", "unet"),
    "classification": ("convvit", "resnet"),
    "regression": ("convvit", "resnet"),
    "landmark_coordinate": ("convvit", "resnet"),
    "survival": ("convvit", "resnet"),
}
DATA_FORMATS = ("acdc", "mnms", "manifest", "cinema", "kaggle", "landmark")
INITS = ("scratch", "pretrained", "finetuned")
UNLISTED_CLASSES = ("error", "drop")
N_LANDMARKS = 3
PRECISIONS = ("bf16", "fp16", "fp32")
STRATEGIES = ("auto", "ddp", "fsdp")


# ---------------------------------------------------------------------------------------------------------------------
# Fine-tuning
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class ViewDataConfig:
    """Model-space geometry of one kind of view (``data.sax`` or ``data.lax``)."""

    spacing: list[float]
    patch_size: list[int]
    in_chans: int = 1


def _sax_data() -> ViewDataConfig:
    return ViewDataConfig(spacing=[1.0, 1.0, 10.0], patch_size=[192, 192, 16])


def _lax_data() -> ViewDataConfig:
    return ViewDataConfig(spacing=[1.0, 1.0], patch_size=[256, 256])


@dataclass
class DataConfig:
    """Where the studies come from and which targets to learn.

    ``format``: ``acdc`` (patient folders with Info.cfg), ``mnms`` (M&Ms-style folders plus a CSV of ED/ES frames),
    ``manifest`` (a generic CSV with one row per study: paths per view, labels and target columns), ``cinema``
    (CineMA's preprocessed layout: ``<split>_metadata.csv`` + ``<split>/<pid>/<pid>_sax_ed.nii.gz`` ...), ``kaggle``
    (the Data Science Bowl's DICOM studies + its volumes CSV as ``manifest``: evaluation of volumes and EF only),
    ``landmark`` (CineMA's landmark set: ``<view>/images/<uid>.png`` + ``<view>_<split>.csv`` as ``manifest``).
    """

    format: str = required()
    dir: str = required()
    manifest: str | None = None  # CSV for ``mnms`` / ``manifest``; relative paths are taken from ``dir``
    sax: ViewDataConfig = field(default_factory=_sax_data)
    lax: ViewDataConfig = field(default_factory=_lax_data)
    slice_2d: bool = False  # SAX segmentation on 2-D slices: every slice of every labelled frame is a sample
    # 2.5-D: with slice_2d, also this many neighbouring slices on each side as input channels (1 + 2k channels)
    context_slices: int = 0
    max_subjects: int = -1  # use only the first N studies (sorted by id); -1 = all
    proportion: float = 1.0  # fraction of the training studies kept (label-efficiency experiments)
    val_fraction: float = 0.2  # held out for validation when neither val_ids nor split_column is given
    val_ids: list[str] | None = None
    split_column: str | None = None  # manifest column holding "train" / "val"
    stratify: bool = True  # classification: keep class proportions in the validation split
    class_column: str | None = None
    classes: list[str] | None = None
    # classification: a study whose class is not in ``classes`` is an "error" (naming it), or "drop": left out of
    # every split, counted per split in the log (the official M&Ms / M&Ms-2 val and test splits hold such classes)
    unlisted_classes: str = "error"
    regression_column: str | None = None
    regression_mean: float | None = None  # None: from the training split
    regression_std: float | None = None
    time_column: str | None = None
    event_column: str | None = None
    landmark_columns: list[str] | None = None  # x1, y1, x2, y2, x3, y3 in voxel indices of the view's image
    heatmap_sigma: float = 3.0
    crop_center: str = "heart"  # in-plane crop centre: "heart" (label-free localisation) or "image"
    z_spacing: str = "auto"  # SAX slices: "auto" (10 mm unless thinner slices would merge), "native", "fixed"
    intensity: str = "frame"  # percentile scaling per "frame" (reference) or over the whole "cine"


@dataclass
class ViewTransformConfig:
    """Spatial augmentation ranges of one kind of view, in model-space voxels."""

    rotate_range: float  # degrees about the slice normal, drawn uniformly in [-r, r]
    translate_range: list[float]
    dropout_size: list[int]


def _sax_transform() -> ViewTransformConfig:
    return ViewTransformConfig(rotate_range=180.0, translate_range=[60.0, 60.0, 0.0], dropout_size=[40, 40, 2])


def _lax_transform() -> ViewTransformConfig:
    return ViewTransformConfig(rotate_range=180.0, translate_range=[80.0, 80.0], dropout_size=[50, 50])


@dataclass
class AcquisitionShiftConfig:
    """On-the-fly acquisition shifts (`cinema.preprocess.augment.random_acquisition_shift`), for segmentation models
    that must hold on other scanners and protocols. ``prob`` 0 (the default) leaves training exactly as before, random
    stream included; otherwise each shift is applied to a sample with probability ``prob``, its strength drawn
    uniformly between none and the maximum below."""

    prob: float = 0.0
    bias_field: float = 0.5  # max |log gain| of a smooth multiplicative field (coil sensitivity)
    rician_std: float = 0.06  # max Rician noise sigma, as a fraction of the sample's [0, 1] range (magnitude images)
    blur_sigma: float = 1.2  # max Gaussian blur sigma in model-space voxels (reconstruction filters)
    low_res: float = 1.8  # max in-plane down-sampling factor before sampling back up (coarser acquisition)
    slice_blend: float = 0.35  # max weight of the adjacent 2.5-D channels mixed into each (thicker slices)
    context_drop: float = 0.0  # probability of zeroing one neighbour channel (a stack end: partial coverage)


@dataclass
class TransformConfig:
    """Training augmentation (reference §3.3): gamma, noise, rescale, random affine, coarse dropout, crop/pad."""

    enabled: bool = True
    prob: float = 0.5
    gamma: list[float] = field(default_factory=lambda: [0.5, 1.5])
    noise_std: float = 0.1
    scale_range: float = 0.2
    coarse_dropout: bool | None = None  # None: segmentation only, as in the reference
    # 2.5-D slices (data.context_slices): probability of reversing the neighbours' order, so the network does not
    # learn the training data's stack direction (ACDC runs base -> apex; DICOM stacks sorted along the slice normal
    # can run either way)
    context_flip: float = 0.5
    # probability of an in-plane mirror image per sample (0 in the reference). For segmentation: exams stored with the
    # other in-plane handedness (a reader's or vendor's axis convention the affine does not undo) are then no longer
    # out of distribution. Not for landmarks or other outputs whose meaning has a side.
    flip: float = 0.0
    shift: AcquisitionShiftConfig = field(default_factory=AcquisitionShiftConfig)
    sax: ViewTransformConfig = field(default_factory=_sax_transform)
    lax: ViewTransformConfig = field(default_factory=_lax_transform)


@dataclass
class EarlyStoppingConfig:
    metric: str | None = None  # None: the task's default (val mean Dice, MCC, MAE, mean distance, C-index)
    mode: str | None = None  # "max" or "min"; None: the task's default for that metric
    patience: int = 5  # evaluations without an improvement of at least min_delta
    min_delta: float = 1e-4


@dataclass
class TrainConfig:
    lr: float = 1e-3
    min_lr: float = 1e-5
    n_warmup_epochs: float = 10.0
    n_epochs: int = 100
    batch_size: int = 64  # effective batch: batch_size_per_device x gradient-accumulation steps
    batch_size_per_device: int = 4
    weight_decay: float = 0.05
    layer_decay: float = 0.75  # BEiT/MAE layer-wise lr decay, used when starting from CineMA weights
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    clip_grad: float = 5.0  # <= 0 disables clipping
    label_smoothing: float = 0.1
    batch_dice: bool = False  # segmentation: Dice over the whole batch, not per sample (see tasks.base.soft_dice_loss)
    eval_interval: int = 1  # epochs between validations
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    amp: bool = True  # bf16 autocast
    device: str = "auto"  # auto, cpu, cuda, cuda:1, ...
    n_workers: int = 0
    checkpoint_interval: int | None = None  # extra resumable checkpoints every N epochs; always at validations
    progress_bar: bool = True
    tensorboard: bool = False  # only if the tensorboard package is installed


@dataclass
class ConvUNetRConfig:
    size: str = "base"
    enc_patch_size: list[int] = field(default_factory=lambda: [4, 4, 1])
    enc_scale_factor: list[int] = field(default_factory=lambda: [2, 2, 1])
    enc_conv_chans: list[int] = field(default_factory=lambda: [64, 128])
    enc_conv_n_blocks: int = 2
    dec_chans: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 512])
    dec_patch_size: list[int] = field(default_factory=lambda: [2, 2, 1])
    dec_scale_factor: list[int] = field(default_factory=lambda: [2, 2, 1])
    dropout: float = 0.1
    drop_path: float = 0.1


@dataclass
class ConvViTConfig:
    size: str = "base"
    enc_patch_size: list[int] = field(default_factory=lambda: [4, 4, 1])
    enc_scale_factor: list[int] = field(default_factory=lambda: [2, 2, 1])
    enc_conv_chans: list[int] = field(default_factory=lambda: [64, 128])
    enc_conv_n_blocks: int = 2
    dropout: float = 0.1  # kept for the official format; ConvViT itself has no dropout
    drop_path: float = 0.1


@dataclass
class UNetConfig:
    chans: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 512])
    dropout: float = 0.1
    patch_size: list[int] = field(default_factory=lambda: [2, 2, 1])
    scale_factor: list[int] = field(default_factory=lambda: [2, 2, 1])
    n_blocks: int = 2
    norm: str = "instance"
    kernel_size: int = 3


@dataclass
class ResNetConfig:
    depth: int = 50
    layer_inplanes: list[int] = field(default_factory=lambda: [64, 128, 256, 512])


@dataclass
class ModelConfig:
    """The network and how it is initialised.

    ``init``: ``scratch``; ``pretrained`` = the encoder from a CineMA MAE (the official ``cinema.safetensors`` or our
    own pre-training, a weights file or a saved model folder) via `load_pretrained_encoder`; ``finetuned`` = every
    weight from a fine-tuned checkpoint of the same architecture (official folder or our own `save_model` output).
    """

    name: str = required()
    views: list[str] = required()
    out_chans: int | None = None  # None: 4 classes (segmentation), 3 heatmaps, 6 coordinates, else from the data
    n_frames: int | None = None  # None: 2 (ED and ES as channels) for study-level tasks, else 1
    init: str = "scratch"
    weights: str | None = None
    freeze_pretrained: bool = False
    grad_ckpt: bool = False
    reduce: str = "all"  # ConvViT pooling: all, cls, patch
    convunetr: ConvUNetRConfig = field(default_factory=ConvUNetRConfig)
    convvit: ConvViTConfig = field(default_factory=ConvViTConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    resnet: ResNetConfig = field(default_factory=ResNetConfig)


@dataclass
class FinetuneConfig:
    task: str = required()
    output_dir: str = required()
    seed: int = 0
    data: DataConfig = required()
    transform: TransformConfig = field(default_factory=TransformConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    model: ModelConfig = required()

    # ---- derived values -----------------------------------------------------------------------------------------

    @property
    def views(self) -> list[str]:
        return list(self.model.views)

    @property
    def n_frames(self) -> int:
        if self.model.n_frames is not None:
            return self.model.n_frames
        return 2 if self.task in ("classification", "regression", "survival") else 1

    @property
    def out_chans(self) -> int:
        if self.task == "classification":
            return len(self.data.classes or [])
        if self.task in ("regression", "survival"):
            return 1
        if self.model.out_chans is not None:
            return self.model.out_chans
        return {"segmentation": 4, "landmark_heatmap": N_LANDMARKS, "landmark_coordinate": 2 * N_LANDMARKS}[self.task]

    def view_data(self, view: str) -> ViewDataConfig:
        return self.data.sax if view == "sax" else self.data.lax

    def view_transform(self, view: str) -> ViewTransformConfig:
        return self.transform.sax if view == "sax" else self.transform.lax

    def spatial_dims(self, view: str) -> int:
        """Dimensions the network sees for a view: 3 for SAX volumes, 2 for LAX and for SAX slices."""
        return 2 if (view != "sax" or self.data.slice_2d) else 3

    def network_in_chans(self, view: str) -> int:
        """Input channels of the network for a view: one per frame, times 1 + 2k for k context slices (2.5-D)."""
        context = self.data.context_slices if view == "sax" and self.data.slice_2d else 0
        return self.view_data(view).in_chans * (1 + 2 * context)

    def patch_size(self, view: str) -> tuple[int, ...]:
        return tuple(self.view_data(view).patch_size[: self.spatial_dims(view)])

    def spacing(self, view: str) -> tuple[float, ...]:
        return tuple(self.view_data(view).spacing[: self.spatial_dims(view)])

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def model_config(self) -> dict[str, Any]:
        """The official-format ``config.yaml`` dict of the network (what `build_model` / `save_model` use)."""
        return self.official_model_config().to_dict()

    def official_model_config(self) -> ModelConfigType:
        """The network as its typed official config (`cinema.config.official`): geometry, outputs, class list."""
        name, views = self.model.name, self.views
        common: dict[str, Any] = {"out_chans": self.out_chans, "grad_ckpt": self.model.grad_ckpt, "task": self.task}
        head: dict[str, Any] = {}
        if self.task == "classification":
            head = {"class_column": self.data.class_column, "classes": list(self.data.classes)}
        elif self.task == "regression":
            head = {"regression_column": self.data.regression_column}
            if self.data.regression_mean is not None and self.data.regression_std is not None:
                head.update(regression_mean=self.data.regression_mean, regression_std=self.data.regression_std)
        if name in ("convunetr", "convvit"):
            geometry = {
                "image_size": {v: list(self.patch_size(v)) for v in views},
                "in_chans": {v: self.network_in_chans(v) for v in views},
                "spacing": {v: list(self.spacing(v)) for v in views},
            }
            section = dataclasses.asdict(getattr(self.model, name))
            if name == "convunetr":
                return ConvUNetRModelConfig(**geometry, **common, **section)
            return ConvViTModelConfig(**geometry, **common, **section, **head, n_frames=self.n_frames)
        (view,) = views
        key = "sax" if view == "sax" else "lax"
        geometry = {
            "view": view,
            "data_key": key,
            "spacing": list(self.spacing(view)),
            "image_size": list(self.patch_size(view)),
            "in_chans": self.network_in_chans(view),
        }
        if name == "unet":
            dims = self.spatial_dims(view)  # the 2-D U-Net of SAX slices keeps the in-plane factors only
            unet = dataclasses.asdict(self.model.unet)
            unet.update(patch_size=unet["patch_size"][:dims], scale_factor=unet["scale_factor"][:dims], n_dims=dims)
            context = self.data.context_slices if key == "sax" and self.data.context_slices else None
            return UNetModelConfig(**geometry, **common, **unet, context_slices=context)
        resnet = dataclasses.asdict(self.model.resnet)
        return ResNetModelConfig(**geometry, **common, **resnet, **head, n_frames=self.n_frames)


# ---------------------------------------------------------------------------------------------------------------------
# Pre-training
# ---------------------------------------------------------------------------------------------------------------------


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
