"""One configuration format for every fine-tuning task: a YAML file plus ``key=value`` dotted overrides.

The file is parsed into plain dataclasses. Everything is checked before any data is read or any model is built:
unknown keys (with a did-you-mean hint), missing required keys, wrong types and inconsistent choices (a model that
cannot do the task, a classification without a class list, ...) raise one `ValueError` naming the key.

The layout follows the reference recipes (``task``, ``seed``, ``data``, ``transform``, ``train``, ``model``), so a
reference user finds the same names (``lr``, ``min_lr``, ``n_warmup_epochs``, ``batch_size_per_device``,
``early_stopping.metric`` ...). `FinetuneConfig.model_config` writes the official ``config.yaml`` dict that
`cinema.models.checkpoint.build_model` reads and `save_model` stores next to the weights.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

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
VIEWS = ("sax", "lax_2c", "lax_3c", "lax_4c")
DATA_FORMATS = ("acdc", "mnms", "manifest")
INITS = ("scratch", "pretrained", "finetuned")
VIT_SIZES = ("tiny", "base", "large", "huge")
N_LANDMARKS = 3

_MISSING = object()


def _required() -> Any:
    """Field default meaning "the user must give this key"."""
    return field(default=_MISSING)


required = _required  # for other config formats built with `build_dataclass`


# ---------------------------------------------------------------------------------------------------------------------
# Sections
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
    ``manifest`` (a generic CSV with one row per study: paths per view, labels and target columns).
    """

    format: str = _required()
    dir: str = _required()
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

    name: str = _required()
    views: list[str] = _required()
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
    task: str = _required()
    output_dir: str = _required()
    seed: int = 0
    data: DataConfig = _required()
    transform: TransformConfig = field(default_factory=TransformConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    model: ModelConfig = _required()

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
        data: dict[str, Any] = {}
        for view in self.views:
            key = "sax" if view == "sax" else "lax"
            data[key] = {
                "spacing": list(self.spacing(view)),
                "patch_size": list(self.patch_size(view)),
                "in_chans": self.network_in_chans(view),
            }
            if key == "sax" and self.data.context_slices:
                data[key]["context_slices"] = self.data.context_slices
        if self.task == "classification":
            data["class_column"] = self.data.class_column
            data[self.data.class_column] = list(self.data.classes)
        elif self.task == "regression":
            column = self.data.regression_column
            data["regression_column"] = column
            if self.data.regression_mean is not None and self.data.regression_std is not None:
                data[column] = {"mean": self.data.regression_mean, "std": self.data.regression_std}
        model: dict[str, Any] = {
            "name": self.model.name,
            "views": self.views[0] if len(self.views) == 1 else list(self.views),
            "out_chans": self.out_chans,
        }
        if self.model.name in ("convvit", "resnet"):
            model["n_frames"] = self.n_frames
        sub = getattr(self.model, self.model.name)
        model[self.model.name] = dataclasses.asdict(sub)
        if self.model.name == "unet":
            # The 2-D U-Net of SAX slices keeps the in-plane factors only.
            dims = self.spatial_dims(self.views[0])
            model["unet"]["n_dims"] = dims
            model["unet"]["patch_size"] = model["unet"]["patch_size"][:dims]
            model["unet"]["scale_factor"] = model["unet"]["scale_factor"][:dims]
        return {"task": self.task, "grad_ckpt": self.model.grad_ckpt, "data": data, "model": model}


# ---------------------------------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " or null"
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert it (YAML reads ``1e-3`` as a string)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(value, inner, key)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"config key '{key}': expected a mapping, got {value!r}")
        return _build(tp, value, key)
    if origin is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ValueError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
        (inner,) = typing.get_args(tp)
        return [_convert(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
            return value.lower() in ("true", "yes")
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # ids such as 1 or 2024 written without quotes
    raise ValueError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")


def _build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in names:
            full = f"{prefix}.{key}" if prefix else str(key)
            hint = difflib.get_close_matches(str(key), names, n=1)
            suggestion = f" (did you mean '{hint[0]}'?)" if hint else f" (valid keys: {', '.join(names)})"
            raise ValueError(f"unknown config key '{full}'{suggestion}")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        full = f"{prefix}.{f.name}" if prefix else f.name
        if f.name in values:
            kwargs[f.name] = _convert(values[f.name], hints[f.name], full)
        elif f.default is _MISSING:
            raise ValueError(f"missing required config key '{full}'")
    return cls(**kwargs)


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["train.lr=1e-4", "model.views=[sax]"]`` -> nested dict; values are read as YAML scalars or lists."""
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value (e.g. train.lr=1e-4)")
        key, text = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ValueError(f"override {item!r} has an empty key")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as err:
            raise ValueError(f"override {item!r}: value is not valid YAML ({err})") from err
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"override {item!r} conflicts with an earlier override of '{part}'")
            node = child
        node[parts[-1]] = value
    return nested


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def build_dataclass(cls: type, values: dict[str, Any], overrides: list[str] | None = None) -> Any:
    """Any config dataclass from a dict plus dotted overrides; unknown, missing and mistyped keys raise ValueError.

    The shared machinery of every config format (fine-tuning here, pre-training in `cinema.train.pretrain_config`).
    """
    if not isinstance(values, dict):
        raise ValueError(f"a config must be a mapping at the top level, got {type(values).__name__}")
    if overrides:
        values = _merge(values, parse_overrides(overrides))
    return _build(cls, values)


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """The YAML mapping of a config file (errors name the file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({err})") from err
    return values or {}


def config_from_dict(values: dict[str, Any], overrides: list[str] | None = None) -> FinetuneConfig:
    """Parse and validate a config dict (plus dotted overrides)."""
    if not isinstance(values, dict):
        raise ValueError(f"a config must be a mapping at the top level, got {type(values).__name__}")
    if overrides:
        values = _merge(values, parse_overrides(overrides))
    if isinstance(values.get("model"), dict) and isinstance(values["model"].get("views"), str):
        values = _merge(values, {"model": {"views": [values["model"]["views"]]}})  # "views: sax" as in the reference
    config = _build(FinetuneConfig, values)
    validate(config)
    return config


def load_config(path: str | Path, overrides: list[str] | None = None) -> FinetuneConfig:
    """Read a YAML config file, apply ``key=value`` overrides, validate; errors name the file and the key."""
    path = Path(path)
    values = read_yaml_mapping(path)
    try:
        return config_from_dict(values, overrides)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err


def save_config(config: Any, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    os.replace(tmp, path)


def resolve_path(text: str) -> Path:
    """User paths in configs: ``~`` and ``$VARS`` expanded, relative to the working directory."""
    return Path(os.path.expandvars(os.path.expanduser(text)))


# ---------------------------------------------------------------------------------------------------------------------
# Semantic validation
# ---------------------------------------------------------------------------------------------------------------------


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def validate(config: FinetuneConfig) -> None:  # noqa: C901 - a flat list of independent checks reads best
    """Cross-field checks, so that a bad combination fails before any data is read."""
    task, data, model, train, transform = config.task, config.data, config.model, config.train, config.transform
    _check(task in TASKS, f"config key 'task': {task!r} is not one of {', '.join(TASKS)}")
    _check(data.format in DATA_FORMATS, f"config key 'data.format': {data.format!r} is not one of {DATA_FORMATS}")
    _check(
        data.format == "acdc" or data.manifest is not None,
        f"config key 'data.manifest' is required for data.format {data.format!r}",
    )
    _check(
        model.name in TASK_MODELS[task],
        f"config key 'model.name': {model.name!r} cannot do {task}; use one of {', '.join(TASK_MODELS[task])}",
    )
    _check(len(model.views) > 0, "config key 'model.views' must name at least one view")
    for view in model.views:
        _check(view in VIEWS, f"config key 'model.views': unknown view {view!r}; expected one of {', '.join(VIEWS)}")
    _check(len(set(model.views)) == len(model.views), "config key 'model.views' lists a view twice")
    if model.name in ("unet", "resnet"):
        _check(len(model.views) == 1, f"config key 'model.views': {model.name} takes exactly one view")
    if task in ("landmark_heatmap", "landmark_coordinate"):
        _check(model.views[0] != "sax" and len(model.views) == 1, "landmark tasks take exactly one long-axis view")
    for key, view_cfg, n in (("data.sax", data.sax, 3), ("data.lax", data.lax, 2)):
        _check(len(view_cfg.patch_size) == n, f"config key '{key}.patch_size' needs {n} values")
        _check(len(view_cfg.spacing) == n, f"config key '{key}.spacing' needs {n} values")
        _check(all(p > 0 for p in view_cfg.patch_size), f"config key '{key}.patch_size' must be positive")
        _check(all(s > 0 for s in view_cfg.spacing), f"config key '{key}.spacing' must be positive")
        _check(view_cfg.in_chans >= 1, f"config key '{key}.in_chans' must be >= 1")
    if data.slice_2d:
        _check(task == "segmentation" and model.views == ["sax"], "data.slice_2d is for SAX segmentation only")
        _check(model.name == "unet", "data.slice_2d needs model.name unet (CineMA's SAX encoder is 3-D)")
    _check(data.context_slices >= 0, "config key 'data.context_slices' must be >= 0")
    _check(data.context_slices == 0 or data.slice_2d, "config key 'data.context_slices' needs data.slice_2d: true")
    _check(data.crop_center in ("heart", "image"), "config key 'data.crop_center' must be heart or image")
    _check(data.z_spacing in ("auto", "native", "fixed"), "config key 'data.z_spacing' must be auto, native or fixed")
    _check(data.intensity in ("frame", "cine"), "config key 'data.intensity' must be frame or cine")
    _check(data.sax.in_chans == 1 and data.lax.in_chans == 1, "in_chans must be 1: one channel per cine frame")
    _check(0.0 < data.proportion <= 1.0, "config key 'data.proportion' must be in (0, 1]")
    _check(0.0 <= data.val_fraction < 1.0, "config key 'data.val_fraction' must be in [0, 1)")
    _check(data.max_subjects == -1 or data.max_subjects > 0, "config key 'data.max_subjects' must be -1 or > 0")
    if task == "classification":
        _check(data.class_column is not None, "config key 'data.class_column' is required for classification")
        _check(bool(data.classes) and len(data.classes) >= 2, "config key 'data.classes' needs at least two classes")
        _check(len(set(data.classes)) == len(data.classes), "config key 'data.classes' lists a class twice")
    if task == "regression":
        _check(data.regression_column is not None, "config key 'data.regression_column' is required for regression")
        _check(
            (data.regression_mean is None) == (data.regression_std is None),
            "config keys 'data.regression_mean' and 'data.regression_std' go together",
        )
        _check(data.regression_std is None or data.regression_std > 0, "config key 'data.regression_std' must be > 0")
    if task == "survival":
        _check(data.time_column is not None, "config key 'data.time_column' is required for survival")
        _check(data.event_column is not None, "config key 'data.event_column' is required for survival")
    if task in ("landmark_heatmap", "landmark_coordinate"):
        _check(
            data.landmark_columns is not None and len(data.landmark_columns) == 2 * N_LANDMARKS,
            f"config key 'data.landmark_columns' needs {2 * N_LANDMARKS} columns (x1, y1, ..., x3, y3)",
        )
        _check(data.heatmap_sigma > 0, "config key 'data.heatmap_sigma' must be > 0")
        expected_out = N_LANDMARKS if task == "landmark_heatmap" else 2 * N_LANDMARKS
        _check(
            model.out_chans in (None, expected_out),
            f"config key 'model.out_chans' must be {expected_out} for {task}",
        )
    if task == "segmentation":
        _check(model.out_chans is None or model.out_chans >= 2, "config key 'model.out_chans' must be >= 2")
    _check(model.n_frames is None or model.n_frames >= 1, "config key 'model.n_frames' must be >= 1")
    _check(model.init in INITS, f"config key 'model.init': {model.init!r} is not one of {', '.join(INITS)}")
    _check(
        model.init == "scratch" or model.weights is not None,
        f"config key 'model.weights' is required when model.init is {model.init!r}",
    )
    _check(
        model.init != "pretrained" or model.name in ("convunetr", "convvit"),
        f"config key 'model.init': a CineMA MAE encoder cannot initialise {model.name}; use scratch or finetuned",
    )
    _check(
        not model.freeze_pretrained or model.init != "scratch",
        "config key 'model.freeze_pretrained' needs model.init pretrained or finetuned",
    )
    _check(model.reduce in ("all", "cls", "patch"), "config key 'model.reduce' must be all, cls or patch")
    for name in ("convunetr", "convvit"):
        size = getattr(model, name).size
        _check(size in VIT_SIZES, f"config key 'model.{name}.size': {size!r} is not one of {', '.join(VIT_SIZES)}")
    _check(train.n_epochs >= 1, "config key 'train.n_epochs' must be >= 1")
    _check(train.lr > 0 and train.min_lr >= 0, "config keys 'train.lr' / 'train.min_lr' must be positive")
    _check(0 <= train.n_warmup_epochs < train.n_epochs, "config key 'train.n_warmup_epochs' must be < n_epochs")
    _check(train.batch_size_per_device >= 1, "config key 'train.batch_size_per_device' must be >= 1")
    _check(
        train.batch_size >= train.batch_size_per_device and train.batch_size % train.batch_size_per_device == 0,
        "config key 'train.batch_size' must be a multiple of train.batch_size_per_device",
    )
    _check(0.0 < train.layer_decay <= 1.0, "config key 'train.layer_decay' must be in (0, 1]")
    _check(len(train.betas) == 2, "config key 'train.betas' needs two values")
    _check(0.0 <= train.label_smoothing < 1.0, "config key 'train.label_smoothing' must be in [0, 1)")
    _check(train.eval_interval >= 1, "config key 'train.eval_interval' must be >= 1")
    _check(
        train.checkpoint_interval is None or train.checkpoint_interval >= 1,
        "config key 'train.checkpoint_interval' must be >= 1",
    )
    _check(train.n_workers >= 0, "config key 'train.n_workers' must be >= 0")
    _check(train.early_stopping.patience >= 1, "config key 'train.early_stopping.patience' must be >= 1")
    _check(
        train.early_stopping.mode in (None, "max", "min"),
        "config key 'train.early_stopping.mode' must be max or min",
    )
    _check(0.0 <= transform.prob <= 1.0, "config key 'transform.prob' must be in [0, 1]")
    _check(0.0 <= transform.context_flip <= 1.0, "config key 'transform.context_flip' must be in [0, 1]")
    _check(0.0 <= transform.flip <= 1.0, "config key 'transform.flip' must be in [0, 1]")
    _check(len(transform.gamma) == 2 and 0 < transform.gamma[0] <= transform.gamma[1], "bad 'transform.gamma' range")
    _check(transform.noise_std >= 0 and 0 <= transform.scale_range < 1, "bad 'transform.noise_std' / 'scale_range'")
    for key, view_t, n in (("transform.sax", transform.sax, 3), ("transform.lax", transform.lax, 2)):
        _check(len(view_t.translate_range) == n, f"config key '{key}.translate_range' needs {n} values")
        _check(len(view_t.dropout_size) == n, f"config key '{key}.dropout_size' needs {n} values")
