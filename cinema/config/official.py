"""The official ``config.yaml`` of each model family, as one typed dataclass per family.

======================  ==============  ===========================================================
class                   ``model_kind``  network
======================  ==============  ===========================================================
`MAEModelConfig`        ``mae``         pre-training :class:`~cinema.models.mae.CineMA`
`ConvUNetRModelConfig`  ``convunetr``   :class:`~cinema.models.convunetr.ConvUNetR` (dense outputs)
`ConvViTModelConfig`    ``convvit``     :class:`~cinema.models.convvit.ConvViT` (pooled head)
`UNetModelConfig`       ``unet``        the U-Net baseline :class:`~cinema.models.unet.UNet`
`ResNetModelConfig`     ``resnet``      the ResNet baseline :class:`~cinema.models.resnet.ResNet`
======================  ==============  ===========================================================

Each has ``from_dict(mapping)`` (reads an official config, filling the released defaults; a ValueError names the
offending key), ``to_dict()`` (the config.yaml layout the model is saved with) and ``model_kwargs()`` (the model
constructor's arguments). The model classes build their ``config`` with ``to_dict()``, `FinetuneConfig.model_config`
writes one, and `cinema.models.checkpoint` reads every config.yaml through `model_config_from_dict`.

Which family a config describes (`model_kind`, the rules of the released files): ``model.name`` if set; else
``task: segmentation`` / ``landmark_heatmap`` → convunetr, ``classification`` / ``regression`` /
``landmark_coordinate`` → convvit; no ``task`` and no ``model.name`` → the pre-training MAE (all four views;
``model.name: mae`` opts into ``model.views``).

Required fields: the transformer ``size`` and ``data.<sax|lax>.patch_size`` of the views used (plus ``model.views``
and the output size for fine-tuned models). Everything else defaults to the released configuration (in_chans 1,
patch size [4,4,1], scale factor [2,2,1], conv channels [64,128] × 2 blocks, decoder [32..512] with [2,2,1] factors).
The ConvViT / ResNet output size is ``len(data[data.class_column])``, else 1 when ``data.regression_column`` is set,
else ``model.out_chans``.

Unknown fields are kept: a config read by ``from_dict`` remembers its ``source`` mapping, and ``to_dict()`` writes
the typed fields over it (recursively), so class lists, regression mean/std and other sections survive a save/load
round trip. The CNN baselines write a config they were read from back as it was, unless a field was changed.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from cinema.io.errors import InputError

__all__ = [
    "DENSE_TASKS",
    "MODEL_CONFIGS",
    "POOLED_TASKS",
    "VIEWS",
    "VIT_SIZES",
    "ConvUNetRModelConfig",
    "ConvViTModelConfig",
    "MAEModelConfig",
    "ModelConfigType",
    "ResNetModelConfig",
    "UNetModelConfig",
    "model_config_from_dict",
    "model_kind",
]

VIEWS = ("sax", "lax_2c", "lax_3c", "lax_4c")
VIT_SIZES = ("tiny", "small", "base", "large", "huge")
DENSE_TASKS = ("segmentation", "landmark_heatmap")  # ConvUNetR / UNet
POOLED_TASKS = ("classification", "regression", "landmark_coordinate", "survival")  # ConvViT / ResNet
_TASK_KINDS = {
    "segmentation": "convunetr",
    "landmark_heatmap": "convunetr",
    "classification": "convvit",
    "regression": "convvit",
    "landmark_coordinate": "convvit",
}
_MODEL_NAMES = ("mae", "convunetr", "convvit", "unet", "resnet")
_REQUIRED = object()


# ---------------------------------------------------------------------------------------------------------- reading


def _field(config: Mapping[str, Any], dotted: str, default: Any = _REQUIRED) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node or node[part] is None:
            if default is _REQUIRED:
                raise InputError(f"config is missing required field {dotted!r}")
            return default
        node = node[part]
    return node


def _int(value: Any, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InputError(f"config field {name!r} must be an integer, got {value!r}") from None


def _float(value: Any, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InputError(f"config field {name!r} must be a number, got {value!r}") from None


def _ints(value: Any, name: str) -> list[int]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise InputError(f"config field {name!r} must be a list of integers, got {value!r}")
    return [_int(v, name) for v in value]


def _int_list(value: Any, name: str) -> list[int]:
    try:
        out = [int(v) for v in value]
    except (TypeError, ValueError):
        raise InputError(f"config field {name!r} must be a list of integers, got {value!r}") from None
    if not out or any(v <= 0 for v in out):
        raise InputError(f"config field {name!r} must be a non-empty list of positive integers, got {value!r}")
    return out


def _number(value: Any, name: str) -> int | float:
    """A real number, returned as it was (an int stays an int, so it is written back unchanged)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"config field {name!r} must be a number, got {value!r}")
    return value


def _numbers(value: Any, name: str) -> list[int | float]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence) or not value:
        raise InputError(f"config field {name!r} must be a non-empty list of numbers, got {value!r}")
    return [_number(v, name) for v in value]


def _size(config: Mapping[str, Any], name: str) -> str:
    size = str(_field(config, name))
    if size not in VIT_SIZES:
        raise InputError(f"config field {name!r} is {size!r}; expected one of {list(VIT_SIZES)}")
    return size


def _views(config: Mapping[str, Any]) -> list[str]:
    views = _field(config, "model.views")
    if not isinstance(views, str | Sequence):
        raise InputError(f"config field 'model.views' must be a view or a list of views, got {views!r}")
    views = [views] if isinstance(views, str) else list(views)
    if not views:
        raise InputError("config field 'model.views' is empty")
    for view in views:
        if view not in VIEWS:
            raise InputError(f"config field 'model.views' has unknown view {view!r}; expected some of {list(VIEWS)}")
    return views


def _task(config: Mapping[str, Any], allowed: tuple[str, ...], default: str | None) -> str | None:
    task = config.get("task")
    if task is None:
        return default
    if task not in allowed:
        raise InputError(f"config field 'task' is {task!r}; this model does {' or '.join(allowed)}")
    return str(task)


@dataclass
class _ViewData:
    """What ``data.<sax|lax>`` says about the views of a CineMA-family model."""

    image_size: dict[str, list[int]]
    in_chans: dict[str, int]
    spacing: dict[str, list[int | float]] | None


def _view_data(config: Mapping[str, Any], views: list[str]) -> _ViewData:
    """Image size, channels and spacing per view from data.sax / data.lax (LAX falls back to data.<view>)."""
    out = _ViewData({}, {}, {})
    for view in views:
        key = "sax" if view == "sax" else "lax"
        if view != "sax" and not isinstance(_field(config, "data.lax", None), Mapping):
            key = view if isinstance(_field(config, f"data.{view}", None), Mapping) else "lax"
        size = _int_list(_field(config, f"data.{key}.patch_size"), f"data.{key}.patch_size")
        n_dims = 3 if view == "sax" else 2
        if len(size) != n_dims:
            raise InputError(f"config field 'data.{key}.patch_size' must have {n_dims} values for {view}")
        out.image_size[view] = size
        out.in_chans[view] = _int(_field(config, f"data.{key}.in_chans", 1), f"data.{key}.in_chans")
        spacing = _field(config, f"data.{key}.spacing", None)
        if spacing is not None:
            out.spacing[view] = _numbers(spacing, f"data.{key}.spacing")
    out.spacing = out.spacing or None
    return out


def _context_slices(config: Mapping[str, Any], key: str) -> int | None:
    value = _field(config, f"data.{key}.context_slices", None)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise InputError(f"config field 'data.{key}.context_slices' must be a whole number >= 0, got {value!r}")
    return value


@dataclass
class _Head:
    """Output size and the targets behind it (``data.class_column`` / ``data.regression_column``)."""

    out_chans: int | None
    class_column: str | None = None
    classes: list[Any] | None = None
    regression_column: str | None = None
    regression_mean: int | float | None = None
    regression_std: int | float | None = None


def _head(config: Mapping[str, Any], require_out: bool = True) -> _Head:
    class_column = _field(config, "data.class_column", None)
    if class_column is not None:
        classes = _field(config, f"data.{class_column}")
        if isinstance(classes, str | bytes) or not isinstance(classes, Sequence) or len(classes) == 0:
            raise InputError(f"config field 'data.{class_column}' must be the non-empty list of class names")
        return _Head(len(classes), class_column=str(class_column), classes=list(classes))
    column = _field(config, "data.regression_column", None)
    if column is not None:
        head = _Head(1, regression_column=str(column))
        stats = _field(config, f"data.{column}", None)
        if isinstance(stats, Mapping):
            if stats.get("mean") is not None:
                head.regression_mean = _number(stats["mean"], f"data.{column}.mean")
            if stats.get("std") is not None:
                head.regression_std = _number(stats["std"], f"data.{column}.std")
        return head
    if not require_out and _field(config, "model.out_chans", None) is None:
        return _Head(None)
    return _Head(_int(_field(config, "model.out_chans"), "model.out_chans"))


# ---------------------------------------------------------------------------------------------------------- writing


def _merge(original: Mapping[str, Any], resolved: Mapping[str, Any]) -> dict[str, Any]:
    """``original`` with ``resolved`` written over it, recursively; fields only in ``original`` are kept."""
    out = copy.deepcopy(dict(original))
    for key, value in resolved.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _views_value(views: list[str]) -> str | list[str]:
    return views[0] if len(views) == 1 else list(views)


def _data_section(
    image_size: Mapping[str, list[int]],
    in_chans: Mapping[str, int],
    spacing: Mapping[str, list[int | float]] | None,
) -> dict[str, Any]:
    """``data.sax`` and one shared ``data.lax`` entry (per-view LAX entries when they differ)."""
    entries: dict[str, dict[str, Any]] = {}
    for view, size in image_size.items():
        entry: dict[str, Any] = {}
        if spacing is not None and view in spacing:
            entry["spacing"] = list(spacing[view])
        entry["patch_size"] = list(size)
        entry["in_chans"] = int(in_chans[view])
        entries[view] = entry
    data: dict[str, Any] = {}
    if "sax" in entries:
        data["sax"] = entries["sax"]
    lax = {v: e for v, e in entries.items() if v != "sax"}
    if lax and all(entry == next(iter(lax.values())) for entry in lax.values()):
        data["lax"] = next(iter(lax.values()))
    else:
        data.update(lax)
    return data


def _write_head(data: dict[str, Any], head: Any) -> None:
    """``data.class_column`` + class list, or ``data.regression_column`` + {mean, std}, after the view entries."""
    if head.class_column is not None:
        data["class_column"] = head.class_column
        data[head.class_column] = list(head.classes or [])
    elif head.regression_column is not None:
        data["regression_column"] = head.regression_column
        stats = {k: v for k, v in (("mean", head.regression_mean), ("std", head.regression_std)) if v is not None}
        if stats:
            data[head.regression_column] = stats


def _per_view(value: int | Mapping[str, int], views: Sequence[str]) -> dict[str, int]:
    if isinstance(value, int):
        return {v: value for v in views}
    missing = [v for v in views if v not in value]
    if missing:
        raise InputError(f"in_chans {dict(value)} has no entry for {missing}")
    return {v: value[v] for v in views}


def _check_head(cfg: Any) -> None:
    if cfg.class_column is not None:
        if not cfg.classes:
            raise InputError(f"{type(cfg).__name__}: class_column {cfg.class_column!r} needs its class list")
        if cfg.out_chans != len(cfg.classes):
            raise InputError(f"{type(cfg).__name__}: out_chans {cfg.out_chans} != {len(cfg.classes)} classes")
    elif cfg.regression_column is not None and cfg.out_chans != 1:
        raise InputError(f"{type(cfg).__name__}: a regression model has 1 output, not {cfg.out_chans}")


class _Official:
    """What the five families share: ``source`` handling and the dict round trip."""

    KIND: ClassVar[str]
    #: True: a config read from a mapping is written back as it was unless a field changed (the CNN baselines);
    #: False: the typed fields are always written over the source (CineMA: resolves e.g. ``out_chans: null``).
    VERBATIM: ClassVar[bool] = False
    source: dict[str, Any]

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> Any:
        """Read an official config.yaml dict: this family's fields, the released defaults filled in. A ValueError
        names the offending key. The mapping is kept as ``source``, so `to_dict` keeps its other keys."""
        if not isinstance(config, Mapping):
            raise InputError(f"an official model config must be a mapping, got {type(config).__name__}")
        if not isinstance(_field(config, "model"), Mapping):
            raise InputError("config field 'model' must be a mapping")
        out = cls._read(config)
        out.source = copy.deepcopy(dict(config))
        return out

    @classmethod
    def _read(cls, config: Mapping[str, Any]) -> Any:
        raise NotImplementedError

    def _layout(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """The official config.yaml dict: the typed fields over ``source`` (see the module docstring)."""
        if not self.source:
            return self._layout()
        if self.VERBATIM:
            try:
                unchanged = type(self)._read(self.source) == self
            except ValueError:
                unchanged = False
            if unchanged:
                return copy.deepcopy(self.source)
        return _merge(self.source, self._layout())


def _source() -> Any:
    return field(default_factory=dict, compare=False, repr=False)


# ---------------------------------------------------------------------------------------------- CineMA families


@dataclass(eq=True)
class MAEModelConfig(_Official):
    """Pre-training CineMA (``model.size``, ``model.patch_size`` ... at the top of ``model``)."""

    KIND: ClassVar[str] = "mae"

    image_size: dict[str, list[int]]  # view -> spatial size (data.<sax|lax>.patch_size); its order is the views'
    in_chans: int | dict[str, int] = 1
    size: str = "base"
    patch_size: list[int] = field(default_factory=lambda: [4, 4, 1])
    scale_factor: list[int] = field(default_factory=lambda: [2, 2, 1])
    enc_conv_chans: list[int] = field(default_factory=lambda: [64, 128])
    enc_conv_n_blocks: int = 2
    grad_ckpt: bool = False
    spacing: dict[str, list[int | float]] | None = None  # data.<sax|lax>.spacing, not used by the network
    source: dict[str, Any] = _source()

    def __post_init__(self) -> None:
        self.image_size = {v: list(s) for v, s in self.image_size.items()}
        self.in_chans = _per_view(self.in_chans, list(self.image_size))
        for name in ("patch_size", "scale_factor", "enc_conv_chans"):
            setattr(self, name, list(getattr(self, name)))

    @property
    def views(self) -> list[str]:
        return list(self.image_size)

    @classmethod
    def _read(cls, config: Mapping[str, Any]) -> MAEModelConfig:
        # The official loader always builds the four views, whatever model.views says; "name: mae" opts into them.
        views = _views(config) if _field(config, "model.name", None) == "mae" else list(VIEWS)
        data = _view_data(config, views)
        return cls(
            image_size=data.image_size,
            in_chans=data.in_chans,
            size=_size(config, "model.size"),
            patch_size=_int_list(_field(config, "model.patch_size", [4, 4, 1]), "model.patch_size"),
            scale_factor=_int_list(_field(config, "model.scale_factor", [2, 2, 1]), "model.scale_factor"),
            enc_conv_chans=_ints(_field(config, "model.enc_conv_chans", [64, 128]), "model.enc_conv_chans"),
            enc_conv_n_blocks=_int(_field(config, "model.enc_conv_n_blocks", 2), "model.enc_conv_n_blocks"),
            grad_ckpt=bool(_field(config, "grad_ckpt", False)),
            spacing=data.spacing,
        )

    def _layout(self) -> dict[str, Any]:
        model: dict[str, Any] = {
            "size": self.size,
            "views": self.views,
            "patch_size": list(self.patch_size),
            "scale_factor": list(self.scale_factor),
            "enc_conv_chans": list(self.enc_conv_chans),
            "enc_conv_n_blocks": self.enc_conv_n_blocks,
        }
        if self.views != list(VIEWS):
            model = {"name": "mae", **model}  # official loaders always build all four views
        data = _data_section(self.image_size, self.in_chans, self.spacing)
        return {"grad_ckpt": bool(self.grad_ckpt), "data": data, "model": model}

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :class:`~cinema.models.mae.CineMA`."""
        return {
            "image_size": {v: list(s) for v, s in self.image_size.items()},
            "in_chans": dict(self.in_chans),
            "size": self.size,
            "patch_size": list(self.patch_size),
            "scale_factor": list(self.scale_factor),
            "conv_chans": list(self.enc_conv_chans),
            "conv_n_blocks": self.enc_conv_n_blocks,
            "grad_ckpt": self.grad_ckpt,
        }


@dataclass(eq=True)
class ConvUNetRModelConfig(_Official):
    """ConvUNetR for segmentation / landmark heatmaps (``model.convunetr.*``)."""

    KIND: ClassVar[str] = "convunetr"

    image_size: dict[str, list[int]]
    out_chans: int
    in_chans: int | dict[str, int] = 1
    size: str = "base"
    enc_patch_size: list[int] = field(default_factory=lambda: [4, 4, 1])
    enc_scale_factor: list[int] = field(default_factory=lambda: [2, 2, 1])
    enc_conv_chans: list[int] = field(default_factory=lambda: [64, 128])
    enc_conv_n_blocks: int = 2
    dec_chans: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 512])
    dec_patch_size: list[int] = field(default_factory=lambda: [2, 2, 1])
    dec_scale_factor: list[int] = field(default_factory=lambda: [2, 2, 1])
    dropout: float = 0.0
    drop_path: float = 0.0
    grad_ckpt: bool = False
    task: str = "segmentation"  # or landmark_heatmap
    spacing: dict[str, list[int | float]] | None = None
    source: dict[str, Any] = _source()

    _LISTS: ClassVar[tuple[str, ...]] = (
        "enc_patch_size",
        "enc_scale_factor",
        "enc_conv_chans",
        "dec_chans",
        "dec_patch_size",
        "dec_scale_factor",
    )

    def __post_init__(self) -> None:
        self.image_size = {v: list(s) for v, s in self.image_size.items()}
        self.in_chans = _per_view(self.in_chans, list(self.image_size))
        for name in self._LISTS:
            setattr(self, name, list(getattr(self, name)))
        if self.task not in DENSE_TASKS:
            raise InputError(f"ConvUNetR does {' or '.join(DENSE_TASKS)}, not {self.task!r}")

    @property
    def views(self) -> list[str]:
        return list(self.image_size)

    @classmethod
    def _read(cls, config: Mapping[str, Any]) -> ConvUNetRModelConfig:
        data = _view_data(config, _views(config))
        s = "model.convunetr"
        return cls(
            image_size=data.image_size,
            in_chans=data.in_chans,
            out_chans=_int(_field(config, "model.out_chans"), "model.out_chans"),
            size=_size(config, f"{s}.size"),
            enc_patch_size=_int_list(_field(config, f"{s}.enc_patch_size", [4, 4, 1]), f"{s}.enc_patch_size"),
            enc_scale_factor=_int_list(_field(config, f"{s}.enc_scale_factor", [2, 2, 1]), f"{s}.enc_scale_factor"),
            enc_conv_chans=_ints(_field(config, f"{s}.enc_conv_chans", [64, 128]), f"{s}.enc_conv_chans"),
            enc_conv_n_blocks=_int(_field(config, f"{s}.enc_conv_n_blocks", 2), f"{s}.enc_conv_n_blocks"),
            dec_chans=_int_list(_field(config, f"{s}.dec_chans", [32, 64, 128, 256, 512]), f"{s}.dec_chans"),
            dec_patch_size=_int_list(_field(config, f"{s}.dec_patch_size", [2, 2, 1]), f"{s}.dec_patch_size"),
            dec_scale_factor=_int_list(_field(config, f"{s}.dec_scale_factor", [2, 2, 1]), f"{s}.dec_scale_factor"),
            dropout=_float(_field(config, f"{s}.dropout", 0.0), f"{s}.dropout"),
            drop_path=_float(_field(config, f"{s}.drop_path", 0.0), f"{s}.drop_path"),
            grad_ckpt=bool(_field(config, "grad_ckpt", False)),
            task=_task(config, DENSE_TASKS, "segmentation"),
            spacing=data.spacing,
        )

    def _layout(self) -> dict[str, Any]:
        section = {
            "size": self.size,
            "enc_patch_size": list(self.enc_patch_size),
            "enc_scale_factor": list(self.enc_scale_factor),
            "enc_conv_chans": list(self.enc_conv_chans),
            "enc_conv_n_blocks": self.enc_conv_n_blocks,
            "dec_chans": list(self.dec_chans),
            "dec_patch_size": list(self.dec_patch_size),
            "dec_scale_factor": list(self.dec_scale_factor),
            "dropout": self.dropout,
            "drop_path": self.drop_path,
        }
        return {
            "grad_ckpt": bool(self.grad_ckpt),
            "task": self.task,
            "data": _data_section(self.image_size, self.in_chans, self.spacing),
            "model": {
                "name": "convunetr",
                "views": _views_value(self.views),
                "out_chans": self.out_chans,
                "convunetr": section,
            },
        }

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :class:`~cinema.models.convunetr.ConvUNetR`."""
        return {
            "image_size": {v: list(s) for v, s in self.image_size.items()},
            "in_chans": dict(self.in_chans),
            "out_chans": self.out_chans,
            "size": self.size,
            **{name: list(getattr(self, name)) for name in self._LISTS},
            "enc_conv_n_blocks": self.enc_conv_n_blocks,
            "dropout": self.dropout,
            "drop_path": self.drop_path,
            "grad_ckpt": self.grad_ckpt,
        }


@dataclass(eq=True)
class ConvViTModelConfig(_Official):
    """ConvViT for classification / regression / landmark coordinates (``model.convvit.*``, ``model.n_frames``)."""

    KIND: ClassVar[str] = "convvit"

    image_size: dict[str, list[int]]
    out_chans: int
    n_frames: int = 1
    in_chans: int | dict[str, int] = 1  # per frame: the first conv takes n_frames · in_chans
    size: str = "base"
    enc_patch_size: list[int] = field(default_factory=lambda: [4, 4, 1])
    enc_scale_factor: list[int] = field(default_factory=lambda: [2, 2, 1])
    enc_conv_chans: list[int] = field(default_factory=lambda: [64, 128])
    enc_conv_n_blocks: int = 2
    drop_path: float = 0.0
    grad_ckpt: bool = False
    dropout: int | float | None = None  # model.convvit.dropout: in the official files, ignored by ConvViT
    task: str | None = None
    spacing: dict[str, list[int | float]] | None = None
    class_column: str | None = None  # data.class_column; the class names are data[class_column]
    classes: list[Any] | None = None
    regression_column: str | None = None  # data.regression_column; data[column] holds {mean, std}
    regression_mean: int | float | None = None
    regression_std: int | float | None = None
    source: dict[str, Any] = _source()

    def __post_init__(self) -> None:
        self.image_size = {v: list(s) for v, s in self.image_size.items()}
        self.in_chans = _per_view(self.in_chans, list(self.image_size))
        self.n_frames = int(self.n_frames)
        for name in ("enc_patch_size", "enc_scale_factor", "enc_conv_chans"):
            setattr(self, name, list(getattr(self, name)))
        if self.classes is not None:
            self.classes = list(self.classes)
        if self.task is not None and self.task not in POOLED_TASKS:
            raise InputError(f"ConvViT does {', '.join(POOLED_TASKS)}, not {self.task!r}")
        _check_head(self)

    @property
    def views(self) -> list[str]:
        return list(self.image_size)

    @classmethod
    def _read(cls, config: Mapping[str, Any]) -> ConvViTModelConfig:
        data = _view_data(config, _views(config))
        head = _head(config)
        s = "model.convvit"
        dropout = _field(config, f"{s}.dropout", None)
        return cls(
            image_size=data.image_size,
            in_chans=data.in_chans,
            out_chans=head.out_chans,
            n_frames=_int(_field(config, "model.n_frames", 1), "model.n_frames"),
            size=_size(config, f"{s}.size"),
            enc_patch_size=_int_list(_field(config, f"{s}.enc_patch_size", [4, 4, 1]), f"{s}.enc_patch_size"),
            enc_scale_factor=_int_list(_field(config, f"{s}.enc_scale_factor", [2, 2, 1]), f"{s}.enc_scale_factor"),
            enc_conv_chans=_ints(_field(config, f"{s}.enc_conv_chans", [64, 128]), f"{s}.enc_conv_chans"),
            enc_conv_n_blocks=_int(_field(config, f"{s}.enc_conv_n_blocks", 2), f"{s}.enc_conv_n_blocks"),
            drop_path=_float(_field(config, f"{s}.drop_path", 0.0), f"{s}.drop_path"),
            grad_ckpt=bool(_field(config, "grad_ckpt", False)),
            dropout=None if dropout is None else _number(dropout, f"{s}.dropout"),
            task=_task(config, POOLED_TASKS, None),
            spacing=data.spacing,
            **{k: v for k, v in dataclasses.asdict(head).items() if k != "out_chans"},
        )

    def _layout(self) -> dict[str, Any]:
        section: dict[str, Any] = {
            "size": self.size,
            "enc_patch_size": list(self.enc_patch_size),
            "enc_scale_factor": list(self.enc_scale_factor),
            "enc_conv_chans": list(self.enc_conv_chans),
            "enc_conv_n_blocks": self.enc_conv_n_blocks,
        }
        if self.dropout is not None:
            section["dropout"] = self.dropout
        section["drop_path"] = self.drop_path
        data = _data_section(self.image_size, self.in_chans, self.spacing)
        _write_head(data, self)
        out: dict[str, Any] = {"grad_ckpt": bool(self.grad_ckpt)}
        if self.task is not None:
            out["task"] = self.task
        out["data"] = data
        out["model"] = {
            "name": "convvit",
            "views": _views_value(self.views),
            "n_frames": self.n_frames,
            "out_chans": self.out_chans,
            "convvit": section,
        }
        return out

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :class:`~cinema.models.convvit.ConvViT`."""
        return {
            "image_size": {v: list(s) for v, s in self.image_size.items()},
            "in_chans": dict(self.in_chans),
            "out_chans": self.out_chans,
            "n_frames": self.n_frames,
            "size": self.size,
            "enc_patch_size": list(self.enc_patch_size),
            "enc_scale_factor": list(self.enc_scale_factor),
            "enc_conv_chans": list(self.enc_conv_chans),
            "enc_conv_n_blocks": self.enc_conv_n_blocks,
            "drop_path": self.drop_path,
            "grad_ckpt": self.grad_ckpt,
        }


# ------------------------------------------------------------------------------------------------ CNN baselines


def _section(config: Mapping[str, Any], key: str, where: str | None = None) -> Mapping[str, Any]:
    value = config.get(key)
    if not isinstance(value, Mapping):
        raise InputError(f"config is missing the section {where or key!r}")
    return value


def _required(section: Mapping[str, Any], key: str, where: str) -> Any:
    if section.get(key) is None:
        raise InputError(f"config is missing the field {where}.{key}")
    return section[key]


def _single_view(model_cfg: Mapping[str, Any], model_name: str) -> str:
    views = model_cfg.get("views", model_cfg.get("view"))
    if views is None:
        raise InputError("config is missing the field model.views")
    views = [views] if isinstance(views, str) else list(views)
    if len(views) != 1:
        raise InputError(f"{model_name} supports a single view, config model.views lists {views}")
    view = str(views[0])
    if view not in VIEWS:
        raise InputError(f"config field 'model.views' has unknown view {view!r}; expected one of {list(VIEWS)}")
    return view


@dataclass(eq=True)
class UNetModelConfig(_Official):
    """The residual U-Net baseline (``model.unet.*``); one view, 2-D or 3-D."""

    KIND: ClassVar[str] = "unet"
    VERBATIM: ClassVar[bool] = True

    view: str
    in_chans: int
    out_chans: int
    n_dims: int | None = None  # None: 3 for sax, 2 for LAX views
    chans: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 512])
    n_blocks: int = 2
    dropout: float = 0.0
    patch_size: list[int] = field(default_factory=lambda: [2, 2, 1])  # first downsampling (not the image size)
    scale_factor: list[int] = field(default_factory=lambda: [2, 2, 1])
    norm: str = "instance"
    kernel_size: int = 3
    grad_ckpt: bool = False
    task: str = "segmentation"  # or landmark_heatmap
    data_key: str | None = None  # where the view's data sits: data.<view> (the default) or the shared data.lax
    spacing: list[int | float] | None = None  # None: 1 × 1 (× 10) mm
    image_size: list[int] | None = None  # data.<key>.patch_size: the training crop, not needed by the network
    context_slices: int | None = None  # data.sax.context_slices: neighbouring slices as channels (2.5-D)
    source: dict[str, Any] = _source()

    def __post_init__(self) -> None:
        if self.n_dims is None:
            self.n_dims = 3 if self.view == "sax" else 2
        if self.data_key is None:
            self.data_key = self.view
        if self.spacing is None:
            self.spacing = [1.0, 1.0, 10.0] if self.n_dims == 3 else [1.0, 1.0]
        for name in ("chans", "patch_size", "scale_factor", "spacing", "image_size"):
            if getattr(self, name) is not None:
                setattr(self, name, list(getattr(self, name)))
        if self.task not in DENSE_TASKS:
            raise InputError(f"UNet does {' or '.join(DENSE_TASKS)}, not {self.task!r}")

    @classmethod
    def _read(cls, config: Mapping[str, Any]) -> UNetModelConfig:
        model_cfg = _section(config, "model")
        unet_cfg = _section(model_cfg, "unet", "model.unet")
        view = _single_view(model_cfg, "UNet")
        data = _section(config, "data")
        key = "lax" if view != "sax" and view not in data and "lax" in data else view
        if not isinstance(data.get(key), Mapping):
            raise InputError(f"config is missing the section 'data.{key}' for view {view!r}")
        view_cfg = data[key]
        spacing = view_cfg.get("spacing")
        n_dims = unet_cfg.get("n_dims")
        if n_dims is None:
            n_dims = len(spacing) if isinstance(spacing, Sequence) else (3 if view == "sax" else 2)
        n_dims = _int(n_dims, "model.unet.n_dims")
        if n_dims not in (2, 3):
            raise InputError(f"config field 'model.unet.n_dims' must be 2 or 3, got {n_dims}")
        image_size = view_cfg.get("patch_size")

        def factor(name: str) -> list[int]:
            value = unet_cfg.get(name, (2, 2, 1))
            value = [value] * n_dims if isinstance(value, int) else value  # one number for every axis
            return _int_list(value, f"model.unet.{name}")

        return cls(
            view=view,
            in_chans=_int(_required(view_cfg, "in_chans", f"data.{key}"), f"data.{key}.in_chans"),
            out_chans=_int(_required(model_cfg, "out_chans", "model"), "model.out_chans"),
            n_dims=n_dims,
            chans=_ints(_required(unet_cfg, "chans", "model.unet"), "model.unet.chans"),
            n_blocks=_int(unet_cfg.get("n_blocks", 2), "model.unet.n_blocks"),
            dropout=_float(unet_cfg.get("dropout", 0.0), "model.unet.dropout"),
            patch_size=factor("patch_size"),
            scale_factor=factor("scale_factor"),
            norm=str(unet_cfg.get("norm", "instance")),
            kernel_size=_int(unet_cfg.get("kernel_size", 3), "model.unet.kernel_size"),
            grad_ckpt=bool(config.get("grad_ckpt", False)),
            task=_task(config, DENSE_TASKS, "segmentation"),
            data_key=key,
            spacing=None if spacing is None else _numbers(spacing, f"data.{key}.spacing"),
            image_size=None if image_size is None else _int_list(image_size, f"data.{key}.patch_size"),
            context_slices=_context_slices(config, key),
        )

    def _layout(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"spacing": list(self.spacing)}
        if self.image_size is not None:
            entry["patch_size"] = [int(s) for s in self.image_size]
        entry["in_chans"] = int(self.in_chans)
        if self.context_slices is not None:
            entry["context_slices"] = self.context_slices
        return {
            "task": self.task,
            "grad_ckpt": bool(self.grad_ckpt),
            "data": {self.data_key: entry},
            "model": {
                "name": "unet",
                "views": self.view,
                "out_chans": int(self.out_chans),
                "unet": {
                    "n_dims": int(self.n_dims),
                    "chans": [int(c) for c in self.chans],
                    "n_blocks": int(self.n_blocks),
                    "dropout": float(self.dropout),
                    "patch_size": [int(p) for p in self.patch_size],
                    "scale_factor": [int(s) for s in self.scale_factor],
                    "norm": self.norm,
                    "kernel_size": int(self.kernel_size),
                },
            },
        }

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :class:`~cinema.models.unet.UNet`."""
        return {
            "n_dims": self.n_dims,
            "in_chans": self.in_chans,
            "out_chans": self.out_chans,
            "chans": list(self.chans),
            "patch_size": list(self.patch_size),
            "scale_factor": list(self.scale_factor),
            "n_blocks": self.n_blocks,
            "dropout": self.dropout,
            "norm": self.norm,
            "kernel_size": self.kernel_size,
            "grad_ckpt": self.grad_ckpt,
            "view": self.view,
        }


@dataclass(eq=True)
class ResNetModelConfig(_Official):
    """The ResNet baseline (``model.resnet.{depth, layer_inplanes}``): 3-D for SAX, 2-D otherwise."""

    KIND: ClassVar[str] = "resnet"
    VERBATIM: ClassVar[bool] = True

    view: str
    in_chans: int  # per frame
    out_chans: int
    n_frames: int = 1
    depth: int = 50
    layer_inplanes: list[int] = field(default_factory=lambda: [64, 128, 256, 512])
    task: str = "classification"
    grad_ckpt: bool | None = None  # written by fine-tuning runs; the ResNet has no gradient checkpointing
    data_key: str | None = None  # None: sax, or the shared lax entry
    spacing: list[int | float] | None = None
    image_size: list[int] | None = None
    class_column: str | None = None
    classes: list[Any] | None = None
    regression_column: str | None = None
    regression_mean: int | float | None = None
    regression_std: int | float | None = None
    source: dict[str, Any] = _source()

    def __post_init__(self) -> None:
        if self.data_key is None:
            self.data_key = "sax" if self.view == "sax" else "lax"
        for name in ("layer_inplanes", "spacing", "image_size", "classes"):
            if getattr(self, name) is not None:
                setattr(self, name, list(getattr(self, name)))
        if self.task not in POOLED_TASKS:
            raise InputError(f"ResNet does {', '.join(POOLED_TASKS)}, not {self.task!r}")
        _check_head(self)

    @classmethod
    def _read(cls, config: Mapping[str, Any]) -> ResNetModelConfig:
        model_cfg = _section(config, "model")
        resnet_cfg = _section(model_cfg, "resnet", "model.resnet")
        view = _single_view(model_cfg, "ResNet")
        data = config.get("data")
        data = data if isinstance(data, Mapping) else {}
        key = "sax" if view == "sax" else ("lax" if "lax" in data else view)
        view_cfg = data.get(key)
        if not isinstance(view_cfg, Mapping) or view_cfg.get("in_chans") is None:
            raise InputError(f"config is missing the field data.{key}.in_chans")
        if data.get("class_column") is not None:
            classes = data.get(data["class_column"])
            if not isinstance(classes, Sequence) or isinstance(classes, str) or not classes:
                raise InputError(
                    f"config data.class_column is {data['class_column']!r} but data.{data['class_column']} "
                    "is not a non-empty list of classes"
                )
        head = _head(config, require_out=False)
        if head.out_chans is None:
            raise InputError("config sets none of data.class_column, data.regression_column, model.out_chans")
        spacing, image_size = view_cfg.get("spacing"), view_cfg.get("patch_size")
        grad_ckpt = config.get("grad_ckpt")
        return cls(
            view=view,
            in_chans=_int(view_cfg["in_chans"], f"data.{key}.in_chans"),
            out_chans=head.out_chans,
            n_frames=_int(model_cfg.get("n_frames", 1), "model.n_frames"),
            depth=_int(_required(resnet_cfg, "depth", "model.resnet"), "model.resnet.depth"),
            layer_inplanes=_ints(resnet_cfg.get("layer_inplanes", (64, 128, 256, 512)), "model.resnet.layer_inplanes"),
            task=_task(config, POOLED_TASKS, "classification"),
            grad_ckpt=None if grad_ckpt is None else bool(grad_ckpt),
            data_key=key,
            spacing=None if spacing is None else _numbers(spacing, f"data.{key}.spacing"),
            image_size=None if image_size is None else _int_list(image_size, f"data.{key}.patch_size"),
            **{k: v for k, v in dataclasses.asdict(head).items() if k != "out_chans"},
        )

    def _layout(self) -> dict[str, Any]:
        entry: dict[str, Any] = {}
        if self.spacing is not None:
            entry["spacing"] = list(self.spacing)
        if self.image_size is not None:
            entry["patch_size"] = [int(s) for s in self.image_size]
        entry["in_chans"] = int(self.in_chans)
        data: dict[str, Any] = {self.data_key: entry}
        _write_head(data, self)
        out: dict[str, Any] = {"task": self.task}
        if self.grad_ckpt is not None:
            out["grad_ckpt"] = bool(self.grad_ckpt)
        out["data"] = data
        out["model"] = {
            "name": "resnet",
            "views": self.view,
            "n_frames": int(self.n_frames),
            "out_chans": int(self.out_chans),
            "resnet": {"depth": int(self.depth), "layer_inplanes": [int(c) for c in self.layer_inplanes]},
        }
        return out

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :class:`~cinema.models.resnet.ResNet` (frames are stacked as input channels)."""
        return {
            "n_dims": 3 if self.view == "sax" else 2,
            "in_chans": self.in_chans * self.n_frames,
            "out_chans": self.out_chans,
            "depth": self.depth,
            "layer_inplanes": list(self.layer_inplanes),
            "view": self.view,
        }


# -------------------------------------------------------------------------------------------------------- dispatch

ModelConfigType = MAEModelConfig | ConvUNetRModelConfig | ConvViTModelConfig | UNetModelConfig | ResNetModelConfig
MODEL_CONFIGS: dict[str, type] = {
    cls.KIND: cls
    for cls in (MAEModelConfig, ConvUNetRModelConfig, ConvViTModelConfig, UNetModelConfig, ResNetModelConfig)
}


def model_kind(config: Mapping[str, Any]) -> str:
    """ "mae", "convunetr", "convvit", "unet" or "resnet" (see the module docstring)."""
    if not isinstance(config, Mapping):
        raise InputError(f"an official model config must be a mapping, got {type(config).__name__}")
    if not isinstance(_field(config, "model"), Mapping):
        raise InputError("config field 'model' must be a mapping")
    name = _field(config, "model.name", None)
    if name is not None:
        if name not in _MODEL_NAMES:
            raise InputError(f"config field 'model.name' is {name!r}; expected one of {list(_MODEL_NAMES)}")
        return str(name)
    task = config.get("task")
    if task is None:
        return "mae"
    if task not in _TASK_KINDS:
        raise InputError(f"cannot tell the model from task {task!r} without 'model.name'")
    return _TASK_KINDS[task]


def model_config_from_dict(config: Mapping[str, Any]) -> ModelConfigType:
    """The typed config of the family an official config.yaml dict describes (`model_kind`)."""
    return MODEL_CONFIGS[model_kind(config)].from_dict(config)
