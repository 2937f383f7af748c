"""Segmentation of whole exams on their own grid: the pipeline behind ``cinema segment``.

A cine (any orientation, spacing and number of frames) goes through the same model space the network was trained
in (`cinema.preprocess`: resampling, in-plane crop around the heart found without labels, per-frame intensity
scaling), is predicted in batches, and comes back as uint8 labels (0 background, 1 RV, 2 MYO, 3 LV) with the input's
exact shape and affine (class probabilities are resampled and arg-maxed on the native grid).

The view is the model's: a short-axis model segments the SAX stack, a long-axis one (the official CineMA
``finetuned/segmentation/mnms2_lax_4c`` ConvUNetR, ``model.views: lax_4c``) the cine of its LAX view, each frame
resampled in-plane to the checkpoint's ``data.lax.spacing`` (1 x 1 mm) and cropped to its patch (256 x 256) around
the heart, then brought back to the (X, Y) grid of the view. The official LAX 4C model predicts the same classes as
the SAX ones, in the four-chamber plane (1 RV, 2 MYO, 3 LV); it has no atrial class. LAX frames are processed as
one-slice stacks through the same code as the 2-D SAX models below.

Two kinds of network are handled alike:

- a 2-D slice U-Net such as the shipped default (``model.unet.n_dims: 2``): every slice of every frame is one sample,
  slices are kept as they are (no interpolation along z), so the round trip along z is exact; a 2.5-D model
  (``data.sax.context_slices: k``, the shipped default has k = 1) also gets the k neighbouring slices on each side;
- a 3-D network (an official CineMA ConvUNetR segmentation checkpoint, or a 3-D U-Net): each frame is resampled to
  the checkpoint's spacing (1 x 1 x 10 mm), zero-padded at the end to the patch depth (16 slices) and predicted with
  sliding windows (softmax average) where the stack is longer. A 3-D network with a one-slice patch (a ConvUNetR
  trained on SAX slices, ``data.sax.patch_size: [X, Y, 1]``) keeps the native slices like the 2-D U-Net.

An ensemble is a folder with ``ensemble.yaml`` (``members: [path, ...]``, relative to it) whose members are model
folders, or .safetensors files with a config.yaml beside them, of the same geometry (spacing, canvas, classes);
their softmax probabilities are averaged, and every member stays an ordinary official-format checkpoint. 2.5-D
members may have different context slices: the ensemble is fed the widest context and each member the central
channels it was trained on.
An official fine-tuned folder with its three seeds becomes one with ``members: [acdc_sax_0.safetensors,
acdc_sax_1.safetensors, acdc_sax_2.safetensors]`` written beside its config.yaml.

When the cine has no usable motion (a single frame, a static series) and no long-axis planes locate the heart, the
network itself finds it: a first pass over the whole field of view with sliding windows, then the heart-centred
crop around the predicted foreground. For a slice-wise model that first pass is a coarse one (the first ensemble
member alone, no test-time transforms, the middle third of the slices, at 2-2.5 times the model's in-plane spacing so
that the field fits one window); the whole ensemble sweeps every slice only when the coarse answer is unsure (no
heart, a component under 20 mL or not reaching every middle slice, a mean heart probability under 0.8), and always
for a 3-D network.

Post-processing keeps the largest connected component (3-D, face connectivity) of the LV cavity only. Measured with
the single v3 model (now a member of the shipped ensemble) on its 15 validation patients (benchmarks/segment.py): no
post-processing gave mean Dice 0.9013, LVEF / RVEF MAE 2.25 / 5.36; the largest component of every structure 0.9009,
2.37 / 5.66 (the RV and the myocardium can be truly split into pieces at the base and apex, so removing pieces cost
Dice and RV volume); the LV cavity alone 0.9016, 2.37 / 5.36, which is the default (the rule: keep what raises
validation Dice). The shipped ensemble: 0.9087 without, 0.9088 with it.
Mirror averaging (``mirror=True``: also predict the mirror image) is off by default. Measured with v3
(benchmarks/segment.py --compare-mirror): it recovers mirror-image input (mean Dice 0.873 -> 0.896 and RVEF MAE
10.7 -> 6.7 on mirrored ACDC validation exams) but costs Dice on exams as they are (ACDC 0.902 -> 0.896, Sunnybrook
DICOM exams LV 0.933 -> 0.927, MYO 0.767 -> 0.752) and doubles the time.
Quarter-turn averaging (``rotate=True``: also predict the slice turned by 90, 180 and 270 degrees in-plane and
average) is off by default too. Measured with the shipped ensemble (benchmarks/segment.py --rotate): mean Dice 0.9088
-> 0.9086, LVEF MAE 2.35 -> 2.69, RVEF MAE 5.15 -> 6.08, Sunnybrook LV 0.933 -> 0.931, at 4x the time; the
networks saw every rotation in training, but ACDC's stored orientation is still the one they segment best.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from cinema.io.errors import InputError
from cinema.io.study import SAX, VIEW_NAMES, CineView, Study
from cinema.models.engines import ENGINES, EXPORTED_ENGINES, resolve_engine, runner_for
from cinema.models.precision import resolve_precision
from cinema.preprocess.model_space import ModelSpaceTransform, from_model_space, to_model_space
from cinema.preprocess.slices import neighbour_slices

logger = logging.getLogger(__name__)

__all__ = [
    "ENSEMBLE_FILE",
    "InferenceOptions",
    "ProbabilityAverage",
    "SegmentationPredictor",
    "SegmentationModel",
    "ensemble_members",
    "heart_confidence",
    "POSTPROCESS_CLASSES",
    "keep_largest_components",
    "load_segmentation_model",
    "segment_study",
    "segment_view",
]

DEFAULT_BATCH_SIZE = 32
ENSEMBLE_FILE = "ensemble.yaml"
# ONNX Runtime for fp32 2-D U-Nets on a CPU where installed, else PyTorch (cinema.models.engines, docs/model-card.md)
DEFAULT_ENGINE = "auto"
MIRROR_DEFAULT = False
ROTATE_DEFAULT = False
FOREGROUND = (1, 2, 3)
POSTPROCESS_CLASSES = (3,)  # the LV cavity: see the module notes for the measurement


@dataclass
class SegmentationModel:
    """A segmentation network plus the model-space geometry it expects.

    Attributes:
        network: the model in eval mode; called as ``network({view: x})[view]`` -> logits.
        n_dims: 2 (slices) or 3 (volumes).
        spacing: model-space voxel size in mm, (x, y) for 2-D, (x, y, z) for 3-D.
        patch_size: network input size, (X, Y) or (X, Y, Z).
        n_classes: number of output classes (background included).
        source: where the weights came from, for messages.
        context_slices: a 2-D model's neighbouring slices on each side given as extra input channels (2.5-D).
        n_members: networks averaged (an ensemble).
        view: the view it segments: ``sax`` or one long-axis view (``lax_4c`` ...), always 2-D.
    """

    network: nn.Module
    n_dims: int
    spacing: tuple[float, ...]
    patch_size: tuple[int, ...]
    n_classes: int
    source: str = ""
    context_slices: int = 0
    n_members: int = 1
    view: str = SAX

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    @property
    def slice_wise(self) -> bool:
        """True when the network sees one slice at a time (a 2-D model, or a 3-D one with a one-slice patch)."""
        return self.n_dims == 2 or self.patch_size[2] == 1

    @property
    def is_sax(self) -> bool:
        return self.view == SAX


class ProbabilityAverage(nn.Module):
    """Several segmentation networks as one: ``{view: x}`` -> ``{view: log(mean of the members' softmax)}``.

    The log of the averaged probabilities is returned in place of logits, so that the softmax every caller applies
    gives back exactly the averaged probabilities.
    """

    def __init__(self, networks: Sequence[nn.Module], input_channels: Sequence[slice | None] | None = None) -> None:
        """``input_channels[i]``: the input channels member ``i`` takes (None: all), so that 2.5-D members with fewer
        context slices than the ensemble take the central channels of its wider input."""
        super().__init__()
        if not networks:
            raise ValueError("an ensemble needs at least one network")
        self.members = nn.ModuleList(networks)
        self.input_channels = list(input_channels) if input_channels is not None else [None] * len(networks)
        if len(self.input_channels) != len(networks):
            raise ValueError("input_channels needs one entry per network")

    def forward(self, views: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        outputs = [  # each member runs once, whatever the views
            member(views if channels is None else {v: x[:, channels] for v, x in views.items()})
            for member, channels in zip(self.members, self.input_channels, strict=True)
        ]
        out = {}
        for view in outputs[0]:
            probs = torch.stack([torch.softmax(o[view].float(), dim=1) for o in outputs]).mean(0)
            out[view] = torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))
        return out


def ensemble_members(folder: Path) -> list[Path]:
    """Members named by ``folder/ensemble.yaml`` (``members: [path, ...]``, relative to ``folder``): model folders, or
    .safetensors files with a config.yaml beside them (an official fine-tuned folder's seeds, ``acdc_sax_0.safetensors``
    ...)."""
    import yaml

    spec_file = folder / ENSEMBLE_FILE
    try:
        spec = yaml.safe_load(spec_file.read_text())
    except yaml.YAMLError as error:
        raise InputError(f"{spec_file}: not valid YAML ({error})") from error
    members = spec.get("members") if isinstance(spec, dict) else None
    if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
        raise InputError(f"{spec_file}: expected 'members: [folder, ...]' naming at least one model folder")
    paths = [(folder / m).resolve() for m in members]
    for path in paths:
        weights_file = path.suffix == ".safetensors" and path.is_file() and (path.parent / "config.yaml").is_file()
        if not weights_file and not (path / "config.yaml").is_file():
            raise FileNotFoundError(
                f"{spec_file}: member {path} is neither a model folder (config.yaml) nor a .safetensors file with a "
                "config.yaml beside it"
            )
    return paths


def resolve_weights(weights: str | Path) -> tuple[Path, Path | None]:
    """(config.yaml or folder, explicit weights file or None) for a folder, a config.yaml or a .safetensors file."""
    path = Path(weights)
    if not path.exists():
        raise FileNotFoundError(f"weights not found: {path}")
    if path.is_dir():
        if not (path / "config.yaml").is_file():
            raise FileNotFoundError(f"{path}: no config.yaml (a model folder holds config.yaml + *.safetensors)")
        return path, None
    if path.suffix in (".yaml", ".yml"):
        return path, None
    if path.suffix in (".safetensors", ".pt", ".pth"):
        config = path.parent / "config.yaml"
        if not config.is_file():
            raise FileNotFoundError(f"{path}: no config.yaml next to the weights file")
        return config, path
    raise InputError(f"{path}: expected a model folder, a config.yaml or a .safetensors file")


def config_views(config: dict[str, Any]) -> list[str]:
    """The views a checkpoint's config.yaml names (``model.views``: one name or a list; older files: ``model.view``)."""
    model_cfg = config.get("model", {})
    views = model_cfg.get("views", model_cfg.get("view"))
    return [views] if isinstance(views, str) else list(views or [])


def inference_device(device: str | torch.device) -> torch.device:
    """The torch device to run on; a clear error for CUDA on a machine without it."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device} requested but CUDA is not available")
    return device


def _segmentation_config(weights: str | Path) -> tuple[Path, Path | None, dict[str, Any], str]:
    """(config.yaml, weights file, config, view) of a one-view segmentation checkpoint, its weights not loaded."""
    from cinema.models.checkpoint import model_kind, read_config

    config_path, weights_file = resolve_weights(weights)
    config, _ = read_config(config_path)
    where = str(weights)
    kind = model_kind(config)
    if kind not in ("unet", "convunetr"):
        raise InputError(f"{where}: a {kind} model cannot segment; expected a segmentation U-Net or ConvUNetR")
    task = config.get("task")
    if task is not None and task != "segmentation":
        raise InputError(f"{where}: a {task} checkpoint, not a segmentation model")
    views = config_views(config)
    if len(views) != 1 or views[0] not in VIEW_NAMES:
        raise InputError(f"{where}: the model segments {views or 'no view'}; expected one view (sax or lax_4c ...)")
    return config_path, weights_file, config, views[0]


def segmentation_view(weights: str | Path | None) -> str:
    """The view a segmentation checkpoint (or ensemble) segments, read from its config.yaml without loading it;
    ``sax`` for the shipped default (None)."""
    if weights is None:
        return SAX
    path = Path(weights)
    if path.is_dir() and (path / ENSEMBLE_FILE).is_file():
        return segmentation_view(ensemble_members(path)[0])
    return _segmentation_config(path)[3]


def _seed_files(folder: Path) -> list[Path]:
    """The numbered seed files (``<name>_<N>.safetensors``) of a model folder, in seed order; [] for a file."""
    if not folder.is_dir():
        return []
    from cinema.analysis.predict import find_checkpoint

    numbered = [p for p in folder.glob("*.safetensors") if re.search(r"_\d+\.safetensors$", p.name)]
    return find_checkpoint(folder)[1] if numbered else []


def load_segmentation_model(weights: str | Path | None = None, device: str | torch.device = "cpu") -> SegmentationModel:
    """Load the shipped default SAX model (``weights=None``) or any official-format segmentation checkpoint of one
    view: SAX, or a long-axis view (the official ``mnms2_lax_4c`` ConvUNetR).

    Args:
        weights: a model folder (config.yaml + model.safetensors), an official fine-tuned folder (config.yaml +
            ``<name>_0/1/2.safetensors``: its seeds' softmax averaged), a config.yaml, a .safetensors file with a
            config.yaml beside it, or an ensemble folder (``ensemble.yaml``); None for the shipped default.
        device: "cpu", "cuda", "cuda:1", ...
    """
    from cinema.models.checkpoint import load_model

    if weights is None:
        from cinema.weights import default_weights_dir

        weights = default_weights_dir("sax_segmentation")
    if Path(weights).is_dir() and (Path(weights) / ENSEMBLE_FILE).is_file():
        return _load_ensemble(Path(weights), device)
    seeds = _seed_files(Path(weights))
    if len(seeds) > 1:
        # an official fine-tuned folder (config.yaml + <name>_0/1/2.safetensors): its seeds averaged, as in predict
        members = [load_segmentation_model(seed, device) for seed in seeds]
        return _average_members(members, f"{weights} (seeds)", str(weights))
    config_path, weights_file, config, view = _segmentation_config(weights)
    where = str(weights)
    model_cfg = config.get("model", {})
    if view != SAX:
        return _load_lax_model(config_path, weights_file, config, view, where, device)
    sax = config.get("data", {}).get("sax", {})
    if "patch_size" not in sax:
        raise InputError(f"{where}: config.yaml has no data.sax.patch_size")
    device = inference_device(device)
    network = load_model(config_path, weights_file, device=device)
    n_dims = int(getattr(network, "n_dims", 3))
    patch = tuple(int(p) for p in sax["patch_size"][:n_dims])
    spacing = tuple(float(s) for s in sax.get("spacing", (1.0, 1.0, 10.0))[:n_dims])
    if len(patch) != n_dims or len(spacing) != n_dims:
        raise InputError(f"{where}: data.sax.patch_size / spacing need {n_dims} values for a {n_dims}-D model")
    n_classes = int(model_cfg.get("out_chans", 4))
    context = int(sax.get("context_slices", 0))
    in_chans = int(getattr(network, "in_chans", 1))
    if context < 0 or (context and n_dims != 2) or in_chans != 1 + 2 * context:
        raise InputError(
            f"{where}: data.sax.context_slices {context} does not fit a {n_dims}-D network with {in_chans} input "
            "channels (a 2-D model with k context slices takes 1 + 2k channels)"
        )
    return SegmentationModel(network, n_dims, spacing, patch, n_classes, source=where, context_slices=context)


def _load_lax_model(
    config_path: Path,
    weights_file: Path | None,
    config: dict[str, Any],
    view: str,
    where: str,
    device: str | torch.device,
) -> SegmentationModel:
    """A long-axis segmentation checkpoint: 2-D, its geometry from ``data.lax`` (the official configs; else
    ``data.<view>``), 1 x 1 mm and 256 x 256 when the config does not say."""
    from cinema.models.checkpoint import load_model
    from cinema.preprocess.model_space import LAX_IN_PLANE_SHAPE, LAX_SPACING_MM

    data = config.get("data", {})
    lax = data.get("lax", data.get(view, {})) or {}
    patch = tuple(int(p) for p in lax.get("patch_size", LAX_IN_PLANE_SHAPE))
    spacing = tuple(float(s) for s in lax.get("spacing", LAX_SPACING_MM))
    if len(patch) != 2 or len(spacing) != 2:
        raise InputError(f"{where}: data.lax.patch_size / spacing need 2 values for a long-axis model")
    if int(lax.get("in_chans", 1)) != 1 or int(lax.get("context_slices", 0)):
        raise InputError(f"{where}: a long-axis segmentation model takes one image channel")
    device = inference_device(device)
    network = load_model(config_path, weights_file, device=device)
    n_classes = int(config.get("model", {}).get("out_chans", 4))
    return SegmentationModel(network, 2, spacing, patch, n_classes, source=where, view=view)


def _load_ensemble(folder: Path, device: str | torch.device) -> SegmentationModel:
    members = []
    for path in ensemble_members(folder):
        if (path / ENSEMBLE_FILE).is_file():
            raise InputError(f"{folder / ENSEMBLE_FILE}: member {path} is itself an ensemble")
        members.append(load_segmentation_model(path, device))
    return _average_members(members, str(folder / ENSEMBLE_FILE), str(folder))


def _average_members(members: Sequence[SegmentationModel], where: str, source: str) -> SegmentationModel:
    """One model averaging the members' softmax; they must share one model space."""
    first = members[0]
    geometry = (first.n_dims, first.spacing, first.patch_size, first.n_classes, first.view)
    for member in members[1:]:
        if (member.n_dims, member.spacing, member.patch_size, member.n_classes, member.view) != geometry:
            raise InputError(
                f"{where}: {member.source} does not share {first.source}'s model space (view, "
                "dimensions, spacing, patch size and classes must match to average their probabilities)"
            )
    # 2.5-D members may differ in context: the ensemble takes the widest input, each member its central channels
    context = max(m.context_slices for m in members)
    channels = [
        None if m.context_slices == context else slice(context - m.context_slices, context + m.context_slices + 1)
        for m in members
    ]
    network = ProbabilityAverage([m.network for m in members], channels).eval()
    return SegmentationModel(
        network,
        first.n_dims,
        first.spacing,
        first.patch_size,
        first.n_classes,
        source=source,
        context_slices=context,
        n_members=len(members),
        view=first.view,
    )


# -------------------------------------------------------------------------------------------------------------------
# Post-processing
# -------------------------------------------------------------------------------------------------------------------


def keep_largest_components(labels: np.ndarray, classes: Sequence[int] = FOREGROUND) -> np.ndarray:
    """Keep only the largest face-connected component of each class (3-D per frame); the rest becomes background.

    Args:
        labels: (X, Y, Z) or (X, Y) integer label map.
    """
    out = np.array(labels, copy=True)
    for value in classes:
        mask = out == value
        if not mask.any():
            continue
        components, n = ndimage.label(mask)
        if n <= 1:
            continue
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        out[mask & (components != int(np.argmax(sizes)))] = 0
    return out


# -------------------------------------------------------------------------------------------------------------------
# Prediction in model space
# -------------------------------------------------------------------------------------------------------------------


def _autocast(device: torch.device, amp: bool) -> Any:
    if amp:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return torch.autocast(device_type=device.type, enabled=False)


def _minmax(volume: np.ndarray) -> np.ndarray:
    low, high = float(volume.min()), float(volume.max())
    return (volume - low) / (high - low) if high > low else np.zeros_like(volume)


def scale_frames(images: np.ndarray) -> np.ndarray:
    """Min-max each frame (last axis) of model-space images to [0, 1], float32, as the trainer's evaluation input
    (MONAI ScaleIntensity)."""
    return np.stack([_minmax(images[..., i]) for i in range(images.shape[-1])], axis=-1).astype(np.float32)


@torch.no_grad()
def _predict_probs(
    model: SegmentationModel,
    volumes: np.ndarray,
    batch_size: int,
    amp: bool,
    mirror: bool = False,
    rotate: bool = False,
    network: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
) -> np.ndarray:
    """Softmax probabilities (C, X, Y, Z, F) of model-space frames (X, Y, Z, F) already scaled to [0, 1].

    In-plane axes larger than the patch (the whole-field search pass) are covered with sliding windows.
    ``mirror`` (x reversed) and ``rotate`` (the four in-plane quarter turns) average the softmax of the transformed
    copies of every window, each transformed back; with both, all eight.
    """
    from cinema.models.inference import average_windows

    device = model.device
    x_size, y_size, depth, n_frames = volumes.shape
    patch = model.patch_size
    if rotate and patch[0] != patch[1]:
        raise InputError(f"{model.source}: quarter-turn averaging needs a square in-plane patch, got {patch[:2]}")
    # test-time transforms of every window: (mirror x, quarter turns), each undone on its softmax before averaging
    flips = (False, True) if mirror else (False,)
    transforms = [(flip, k) for flip in flips for k in ((0, 1, 2, 3) if rotate else (0,))]

    key = model.view
    run = model.network if network is None else network  # another engine's copy of the same network

    def softmax(window: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        total = None
        for flip, k in transforms:
            x = window[key].flip(2) if flip else window[key]
            with _autocast(device, amp):
                logits = run({key: torch.rot90(x, k, dims=(2, 3))})[key]
            probs = torch.rot90(torch.softmax(logits.float(), dim=1), -k, dims=(2, 3))
            probs = probs.flip(2) if flip else probs
            total = probs if total is None else total + probs
        return {key: total / len(transforms)}

    if model.n_dims == 2:
        # every slice of every frame is one sample, with its neighbours as channels: (F * Z, 1 + 2k, X, Y)
        stacked = neighbour_slices(volumes.transpose(3, 0, 1, 2), model.context_slices)  # (F, X, Y, Z, 1 + 2k)
        samples = np.ascontiguousarray(stacked.transpose(0, 3, 4, 1, 2)).reshape(n_frames * depth, -1, x_size, y_size)
    else:
        samples = np.ascontiguousarray(volumes.transpose(3, 0, 1, 2))[:, None]  # (F, 1, X, Y, Z)
    plane = {key: patch}
    outputs = []
    for start in range(0, samples.shape[0], batch_size):
        chunk = torch.from_numpy(samples[start : start + batch_size]).to(device)
        outputs.append(average_windows({key: chunk}, plane, softmax)[key].cpu().numpy())
    probs = np.concatenate(outputs)
    if model.n_dims == 2:
        probs = probs.reshape(n_frames, depth, -1, x_size, y_size).transpose(2, 3, 4, 1, 0)
    else:
        probs = probs.transpose(1, 2, 3, 4, 0)
    return probs


def _model_space(
    view: CineView,
    frames: list[int],
    model: SegmentationModel,
    center_mm: np.ndarray | None,
    whole_field: bool = False,
) -> tuple[np.ndarray, ModelSpaceTransform]:
    """Model-space frames (X, Y, Z, F) in [0, 1] and the transform back (``whole_field``: no in-plane crop).

    A long-axis view comes out as one-slice stacks (X, Y, 1, F) with its 2-D transform (X, Y)."""
    in_plane = tuple(model.patch_size[:2])
    if whole_field:
        extent = np.asarray(view.spacing[:2]) * np.asarray(view.spatial_shape[:2]) / np.asarray(model.spacing[:2])
        in_plane = tuple(max(p, int(np.ceil(e))) for p, e in zip(in_plane, extent, strict=True))
    if not view.is_sax:
        images, transform = to_model_space(
            view.image[..., frames],
            view.affine,
            "lax",
            center_mm=center_mm,
            intensity="frame",
            in_plane_shape=in_plane,
            in_plane_spacing=tuple(model.spacing[:2]),
        )
        return scale_frames(images[:, :, None, :]), transform
    if model.slice_wise:
        # slices are predicted one by one, so they keep their native spacing and the z round trip is exact
        z_spacing: Any = "native"
        min_slices = None
    else:
        z_spacing = float(model.spacing[2])
        min_slices = int(model.patch_size[2])
    images, transform = to_model_space(
        view.image[..., frames],
        view.affine,
        "sax",
        center_mm=center_mm,
        intensity="frame",
        z_spacing=z_spacing,
        min_slices=min_slices,
        in_plane_shape=in_plane,
        in_plane_spacing=tuple(model.spacing[:2]),
    )
    return scale_frames(images), transform


# The coarse heart search (one frame, no motion; `_coarse_heart`): the in-plane spacing is COARSE_SPACING_FACTOR times
# the model's, raised up to COARSE_MAX_SPACING_FACTOR times so that the whole field of view fits one window; only the
# middle third of the slices (at least COARSE_MIN_SLICES) is predicted. Its answer is trusted only when the largest
# predicted heart component (1) holds at least COARSE_MIN_VOLUME_ML, (2) reaches every predicted slice (a heart runs
# through the middle of the stack; noise gives blobs in one or two slices) and (3) its voxels' mean heart probability
# (1 - background) is at least COARSE_MIN_PROBABILITY; otherwise the full sweep runs. The thresholds and what
# they measured on the 160 shared ACDC frames: docs/model-card.md ("Single frames"), benchmarks/single_frame.py.
COARSE_SPACING_FACTOR = 2.0
COARSE_MAX_SPACING_FACTOR = 2.5
COARSE_MIN_SLICES = 3
COARSE_MIN_VOLUME_ML = 20.0
COARSE_MIN_PROBABILITY = 0.8


def _largest_component(foreground: np.ndarray) -> np.ndarray | None:
    """Mask of the largest face-connected component of a boolean array, None when it is all False."""
    if not foreground.any():
        return None
    components, _ = ndimage.label(foreground)
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(np.argmax(sizes))


def _model_index_to_world(index: np.ndarray, transform: ModelSpaceTransform) -> np.ndarray:
    return transform.model_affine[:3, :3] @ index + transform.model_affine[:3, 3]


def _heart_full_sweep(
    view: CineView, model: SegmentationModel, frame: int, batch_size: int, amp: bool
) -> np.ndarray | None:
    """World centre of the largest foreground component the whole model predicts with sliding windows over the whole
    field of view of every slice, or None if it finds none."""
    images, transform = _model_space(view, [frame], model, None, whole_field=True)
    probs = _predict_probs(model, images, batch_size, amp)
    heart = _largest_component(probs[..., 0].argmax(axis=0) > 0)
    return None if heart is None else _model_index_to_world(np.argwhere(heart).mean(axis=0), transform)


def _measured_for_export(model: SegmentationModel) -> bool:
    """Whether ``auto`` may export `model`: a 2-D U-Net or an ensemble of them, the family the engines were measured
    on (docs/model-card.md); 2-D transformers (the official LAX ConvUNetR) were not measured."""
    from cinema.models.unet import UNet

    network = model.network
    members = list(network.members) if isinstance(network, ProbabilityAverage) else [network]
    return model.n_dims == 2 and all(isinstance(member, UNet) for member in members)


def _coarse_model(model: SegmentationModel, view: CineView) -> SegmentationModel:
    """One network of `model` (an ensemble's first member, fed its channels of the ensemble's input; a plain model as
    it is) at the coarse in-plane spacing for `view`'s field of view."""
    network = model.network
    if isinstance(network, ProbabilityAverage):
        network = ProbabilityAverage([network.members[0]], [network.input_channels[0]]).eval()
    # the smallest factor in [COARSE_SPACING_FACTOR, COARSE_MAX_SPACING_FACTOR] that fits the field in one window
    extent = np.asarray(view.spacing[:2]) * np.asarray(view.spatial_shape[:2])
    fit = float((extent / (np.asarray(model.patch_size[:2]) * np.asarray(model.spacing[:2]))).max()) * (1 + 1e-6)
    factor = min(COARSE_MAX_SPACING_FACTOR, max(COARSE_SPACING_FACTOR, fit))
    spacing = tuple(s * factor for s in model.spacing[:2]) + tuple(model.spacing[2:])
    return SegmentationModel(
        network,
        model.n_dims,
        spacing,
        model.patch_size,
        model.n_classes,
        source=model.source,
        context_slices=model.context_slices,
        view=model.view,
    )


def _coarse_heart(
    view: CineView, model: SegmentationModel, frame: int, batch_size: int, amp: bool
) -> tuple[np.ndarray | None, str]:
    """The cheap heart search of a slice-wise model: ``(world centre, "")``, or ``(None, why)`` when it is unsure.

    One network, no test-time transforms, the middle third of the slices (their neighbours as context only), at a
    coarse in-plane spacing (see COARSE_SPACING_FACTOR); the centre is that of the largest predicted heart component.
    """
    coarse = _coarse_model(model, view)
    images, transform = _model_space(view, [frame], coarse, None, whole_field=True)
    depth = images.shape[2]
    count = min(depth, max(COARSE_MIN_SLICES, -(-depth // 3)))
    start = (depth - count) // 2
    low, high = max(0, start - coarse.context_slices), min(depth, start + count + coarse.context_slices)
    probs = _predict_probs(coarse, images[:, :, low:high], batch_size, amp)[..., 0]
    probs = probs[:, :, :, start - low : start - low + count]
    heart = _largest_component(probs.argmax(axis=0) > 0)
    if heart is None:
        return None, "no heart predicted in the middle slices"
    volume_ml = float(heart.sum()) * abs(float(np.linalg.det(transform.model_affine[:3, :3]))) / 1000.0
    if volume_ml < COARSE_MIN_VOLUME_ML:
        return None, f"largest heart component {volume_ml:.1f} mL < {COARSE_MIN_VOLUME_ML:g} mL"
    reached = int(heart.any(axis=(0, 1)).sum())
    if reached < count:
        return None, f"largest heart component in {reached} of the {count} middle slices"
    probability = float(1.0 - probs[0][heart].mean())
    if probability < COARSE_MIN_PROBABILITY:
        return None, f"mean heart probability {probability:.3f} < {COARSE_MIN_PROBABILITY:g}"
    index = np.argwhere(heart).mean(axis=0)
    index[2] += start
    return _model_index_to_world(index, transform), ""


def _heart_from_prediction(
    view: CineView, model: SegmentationModel, frame: int, batch_size: int, amp: bool
) -> np.ndarray | None:
    """World centre of the heart the network predicts in one frame, or None if it finds none.

    A slice-wise SAX model first tries the coarse search (`_coarse_heart`); when that is unsure, and always for a
    3-D network or a long-axis view (one image: the full sweep is cheap, and the coarse thresholds were measured on
    SAX stacks), the whole model sweeps the whole field of view (`_heart_full_sweep`).
    """
    if model.slice_wise and view.is_sax:
        center, unsure = _coarse_heart(view, model, frame, batch_size, amp)
        if center is not None:
            return center
        logger.info("coarse heart search unsure (%s); searching the whole field of view with the full model", unsure)
    return _heart_full_sweep(view, model, frame, batch_size, amp)


# In-plane distance (mm) between the motion-based heart centre and the coarse network pass's beyond which the motion
# crop (128 px at 1.5 mm: +/- 96 mm) would cut a heart of ~60 mm half-width: the network's centre is used instead.
MOTION_DISAGREEMENT_MM = 40.0


def _in_plane_distance(a: np.ndarray, b: np.ndarray, affine: np.ndarray) -> float:
    """Distance between world points `a` and `b` within the slice plane of `affine` (the through-plane part dropped)."""
    normal = np.asarray(affine, dtype=np.float64)[:3, 2]
    normal = normal / np.linalg.norm(normal)
    delta = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    return float(np.linalg.norm(delta - normal * float(delta @ normal)))


def heart_confidence(probs: np.ndarray) -> float:
    """Mean top-class probability over the voxels predicted as heart (any foreground class) in model space.

    Boundary voxels are uncertain by nature, so even good frames stay below 1: the shipped ensemble scored 0.918-0.968
    on held-out ACDC and Sunnybrook frames and 0.52-0.80 on non-anatomical input (`cinema.analysis.qc.MIN_CONFIDENCE`).
    NaN when no heart is predicted.
    """
    top = probs.max(axis=0)
    heart = probs.argmax(axis=0) > 0
    return float(top[heart].mean()) if heart.any() else float("nan")


@dataclass(frozen=True)
class InferenceOptions:
    """How a `SegmentationPredictor` runs, fixed when it is built.

    Attributes:
        batch_size: slices (2-D model) or frames (3-D model) per forward pass.
        amp: bf16 autocast (True), fp32 (False), or None (the default): bf16 on CPUs that compute it natively (AMX
            or AVX-512 BF16) and fp32 elsewhere (`cinema.models.precision`), resolved on first use. bf16 is not
            bit-identical to fp32; False gives the same numbers on every machine.
        mirror: also predict the mirror image and average, so that exams stored with the other in-plane handedness
            than the training data (another vendor's or reader's axis convention) are segmented alike.
        rotate: also predict the three other in-plane quarter turns of every slice and average (4x the time).
        postprocess: keep the largest connected component of the LV cavity (``POSTPROCESS_CLASSES``).
        engine: what runs the network (`cinema.models.engines`): ``torch``, ``openvino`` or ``onnxruntime`` (fp32
            on a CPU, 2-D models, when installed) or ``auto`` (ONNX Runtime where it can run, else PyTorch).
    """

    batch_size: int = DEFAULT_BATCH_SIZE
    amp: bool | None = None
    mirror: bool = MIRROR_DEFAULT
    rotate: bool = ROTATE_DEFAULT
    postprocess: bool = True
    engine: str = DEFAULT_ENGINE

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}; expected one of {', '.join(ENGINES)}")


class SegmentationPredictor:
    """One object that segments short-axis cines: weights and inference options chosen once, used everywhere.

    In the spirit of nnU-Net's predictor: ``cinema segment``, ``cinema analyze``, ``cinema serve`` and ``cinema
    evaluate`` all build one and call `segment_study`::

        predictor = SegmentationPredictor.from_weights(None, device="cpu")   # None: the shipped model
        labels = predictor.segment_study(read_study("exam/"))               # stored frame -> native uint8 labels
    """

    def __init__(self, model: SegmentationModel, options: InferenceOptions | None = None) -> None:
        self.model = model
        self._options = options or InferenceOptions()
        self._runner: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None
        self._engine: str | None = None  # what actually runs, once the runner is built

    @property
    def options(self) -> InferenceOptions:
        """The options, ``amp=None`` (auto) resolved on first use: fp32 under an exported engine asked for by name
        (they run fp32 only), else bf16 where the model's device computes it natively."""
        if self._options.amp is None:
            exported = self._options.engine in EXPORTED_ENGINES
            native = not exported and resolve_precision("auto", self.model.device) == "bf16"
            self._options = dataclasses.replace(self._options, amp=native)
        return self._options

    @property
    def precision(self) -> str:
        """``bf16`` or ``fp32``: what the network runs in."""
        return "bf16" if self.options.amp else "fp32"

    @property
    def engine(self) -> str:
        """``torch``, ``openvino`` or ``onnxruntime``: what runs the network (``auto`` resolved).

        ``auto`` uses an exported engine only for the network family it was measured on (2-D U-Nets, the shipped
        ensemble); other models, 3-D ones and bf16 run in PyTorch unless an engine is named.
        """
        if self._engine is not None:
            return self._engine
        requested = self.options.engine
        if requested == "auto" and not _measured_for_export(self.model):
            return "torch"
        if self.model.n_dims != 2 and requested != "torch":
            raise InputError(f"{self.model.source}: engine {requested} runs 2-D models only; use --engine torch")
        try:
            return resolve_engine(requested, self.model.device, bool(self.options.amp))
        except ValueError as err:
            raise InputError(str(err)) from err

    def _network(self) -> Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        if self._runner is None:
            engine = self.engine
            in_chans = 1 + 2 * self.model.context_slices
            size = (int(self.model.patch_size[0]), int(self.model.patch_size[1]))
            try:
                self._runner = runner_for(self.model.network, engine, self.model.view, in_chans, size)
            except Exception as err:  # noqa: BLE001  (an exporter or compiler failure of any kind)
                if self.options.engine != "auto":
                    raise InputError(f"{self.model.source}: engine {engine} cannot run this model ({err})") from err
                logger.warning("engine %s cannot run %s (%s); using PyTorch", engine, self.model.source, err)
                engine, self._runner = "torch", self.model.network
            self._engine = engine
        return self._runner

    @classmethod
    def from_weights(
        cls, weights: str | Path | None = None, device: str | torch.device = "cpu", **options: Any
    ) -> SegmentationPredictor:
        """Load `weights` (`load_segmentation_model`; None: the shipped model) with `InferenceOptions(**options)`."""
        return cls(load_segmentation_model(weights, device=device), InferenceOptions(**options))

    def probabilities(self, volumes: np.ndarray) -> np.ndarray:
        """Softmax (C, X, Y, Z, F) of model-space frames (X, Y, Z, F) in [0, 1], with the test-time transforms."""
        o = self.options
        return _predict_probs(self.model, volumes, o.batch_size, o.amp, o.mirror, o.rotate, network=self._network())

    def frame_groups(self, view: CineView, frames: Sequence[int]) -> list[list[int]]:
        """The frames predicted together: as many slices as a batch holds (2-D), or a batch of frames (3-D)."""
        batch = self.options.batch_size
        slices = view.as_4d().shape[2]
        group = max(1, batch // max(1, slices)) if self.model.n_dims == 2 else batch
        return [list(frames[start : start + group]) for start in range(0, len(frames), group)]

    def locate_heart(self, study: Study) -> np.ndarray | None:
        """World centre of the crop: from the cine's motion (or the long-axis planes), None when neither is usable."""
        from cinema.preprocess import locate_study_heart

        location = locate_study_heart(study, self.model.view)
        if location.fallback:
            logger.info("no cardiac motion to locate the heart; searching the whole field of view")
            return None
        center = np.asarray(location.center_mm, dtype=np.float64)
        if self.model.slice_wise and self.model.view == SAX:
            # Motion can point elsewhere with full confidence (a strong bias field or noise moving with the cine);
            # the network's cheap coarse pass on one frame checks it, and wins when it is sure and far away.
            view = study.view(SAX)
            coarse, _ = _coarse_heart(view, self.model, 0, self.options.batch_size, self.options.amp)
            if coarse is not None:
                apart = _in_plane_distance(center, coarse, view.affine)
                if apart > MOTION_DISAGREEMENT_MM:
                    logger.info(
                        "the motion-based heart location is %.0f mm from the network's; using the network's", apart
                    )
                    return coarse
        return center

    def segment_view(
        self,
        view: CineView,
        *,
        frames: Sequence[int] | None = None,
        center_mm: np.ndarray | None = None,
        confidence: dict[int, float] | None = None,
        progress: Callable[[int], Any] | None = None,
    ) -> dict[int, np.ndarray]:
        """Segment frames of the model's view; returns stored frame index -> uint8 labels of the view's spatial shape
        ((X, Y, Z) for SAX, (X, Y) for a long-axis view).

        Args:
            view: the cine of the model's view.
            frames: stored frame indices (default: all).
            center_mm: world point to centre the crop on; None finds it with the network over the whole field of
                view (`segment_study` passes the label-free motion-based location).
            confidence: a dict to fill with stored frame -> `heart_confidence` of that frame's prediction.
            progress: called with the number of frames finished after each group (a progress bar's ``update``).
        """
        if view.name != self.model.view:
            raise InputError(
                f"{view.source or view.name}: the model segments {self.model.view} cines, this one is {view.name}"
            )
        frames = list(range(view.n_frames)) if frames is None else [int(f) for f in frames]
        bad = [f for f in frames if not 0 <= f < view.n_frames]
        if not frames or bad:
            raise InputError(
                f"{view.source or view.name}: frames {bad or frames} are not among its {view.n_frames} frames"
            )
        if center_mm is None:
            center_mm = _heart_from_prediction(view, self.model, frames[0], self.options.batch_size, self.options.amp)
        results: dict[int, np.ndarray] = {}
        # frames are processed in groups so memory stays bounded for long cines
        for chunk in self.frame_groups(view, frames):
            images, transform = _model_space(view, chunk, self.model, center_mm)
            probs = self.probabilities(images)
            for i, frame in enumerate(chunk):
                if confidence is not None:
                    confidence[frame] = heart_confidence(probs[..., i])
                frame_probs = probs[..., i] if view.is_sax else probs[:, :, :, 0, i]
                labels = from_model_space(frame_probs, transform, kind="prob")
                results[frame] = (
                    keep_largest_components(labels, POSTPROCESS_CLASSES) if self.options.postprocess else labels
                )
            if progress is not None:
                progress(len(chunk))
        return results

    def segment_study(
        self,
        study: Study,
        *,
        frames: Sequence[int] | None = None,
        confidence: dict[int, float] | None = None,
        progress: Callable[[int], Any] | None = None,
    ) -> dict[int, np.ndarray]:
        """Segment the model's view of a study (SAX, or its LAX view), the heart located without labels; stored
        frame -> native uint8 labels.

        The crop centre comes from the cine's motion (or the long-axis planes); where neither is usable (one frame,
        a static series) the network finds the heart over the whole field of view (see `segment_view`).
        """
        view = study.view(self.model.view)
        center = self.locate_heart(study)
        return self.segment_view(view, frames=frames, center_mm=center, confidence=confidence, progress=progress)


def segment_view(
    view: CineView,
    model: SegmentationModel,
    *,
    frames: Sequence[int] | None = None,
    center_mm: np.ndarray | None = None,
    confidence: dict[int, float] | None = None,
    **options: Any,
) -> dict[int, np.ndarray]:
    """`SegmentationPredictor(model, InferenceOptions(**options)).segment_view(...)`, for one-off calls."""
    predictor = SegmentationPredictor(model, InferenceOptions(**options))
    return predictor.segment_view(view, frames=frames, center_mm=center_mm, confidence=confidence)


def segment_study(
    study: Study,
    model: SegmentationModel,
    *,
    frames: Sequence[int] | None = None,
    confidence: dict[int, float] | None = None,
    **options: Any,
) -> dict[int, np.ndarray]:
    """`SegmentationPredictor(model, InferenceOptions(**options)).segment_study(...)`, for one-off calls."""
    predictor = SegmentationPredictor(model, InferenceOptions(**options))
    return predictor.segment_study(study, frames=frames, confidence=confidence)
