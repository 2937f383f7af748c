"""Mitral-valve hinge points and apex on a long-axis cine, and the longitudinal function they give (MAPSE).

A landmark checkpoint in the official format — a heatmap network (ConvUNetR / U-Net, 3 output channels, sigmoid
then soft arg-max) or a coordinate network (ConvViT / ResNet, 6 outputs scaled by the input size), as
`cinema finetune` trains them (tasks ``landmark_heatmap`` / ``landmark_coordinate``) or as CineMA releases them —
predicts the three points on every frame of its LAX view in model space (crop around the heart, per-frame
intensity scaling, as in training). Points go back to the view's own voxel grid and to world millimetres through
the exact model-space transform, so every length is physical whatever the exam's pixel size (the reference reports
pixels).

Following the reference's definitions (points 1, 2 = hinge points, 3 = apex): LV length = distance from the hinge
points' midpoint to the apex; the frames of maximum and minimum length are end-diastole and end-systole of the
long axis; MAPSE = mean displacement of the two hinge points between those frames; longitudinal shortening =
(max - min) / max length in %.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cinema.io.errors import InputError
from cinema.io.study import LAX_VIEWS, Study

__all__ = ["LandmarkModel", "LandmarkResult", "lax_function", "load_landmark_model", "predict_landmarks"]

N_POINTS = 3
_HEATMAP_MODELS = ("convunetr", "unet")
_COORDINATE_MODELS = ("convvit", "resnet")


@dataclass
class LandmarkModel:
    """A landmark network plus what it expects: its LAX view, model-space pixel size and input size."""

    network: nn.Module
    kind: str  # "heatmap" or "coordinate"
    view: str
    spacing: tuple[float, float]
    patch_size: tuple[int, int]
    reduce: str = "all"
    source: str = ""

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device


@dataclass
class LandmarkResult:
    """Per-frame points of one LAX view: ``voxel`` (T, 3, 2) continuous (x, y) indices of the view's image,
    ``world`` (T, 3, 3) in mm, ``model`` (T, 3, 2) model-space indices, and the model-space transform."""

    view: str
    voxel: np.ndarray
    world: np.ndarray
    model: np.ndarray
    transform: Any


def load_landmark_model(weights: str | Path, device: str | torch.device = "cpu") -> LandmarkModel:
    """Load a landmark checkpoint (model folder, config.yaml, or .safetensors beside its config.yaml)."""
    from cinema.analysis.segment import config_views, inference_device, resolve_weights
    from cinema.models.checkpoint import load_model, model_kind, read_config

    config_path, weights_file = resolve_weights(weights)
    config, _ = read_config(config_path)
    where = str(weights)
    name = model_kind(config)
    task = str(config.get("task", ""))
    if task in ("landmark_heatmap", "landmark_coordinate"):
        kind = task.removeprefix("landmark_")
    elif task:
        raise InputError(f"{where}: a {task} checkpoint is not a landmark model")
    elif name in _HEATMAP_MODELS:
        kind = "heatmap"
    elif name in _COORDINATE_MODELS:
        kind = "coordinate"
    else:
        raise InputError(f"{where}: a {name} model is not a landmark model")
    views = config_views(config)
    if len(views) != 1 or views[0] not in LAX_VIEWS:
        raise InputError(f"{where}: landmarks need a model of one long-axis view, got {views or 'no view'}")
    model_cfg = config.get("model", {})
    expected = N_POINTS if kind == "heatmap" else 2 * N_POINTS
    out = int(model_cfg.get("out_chans", expected))
    if out != expected:
        raise InputError(f"{where}: a {kind} landmark model needs {expected} outputs, got {out}")
    lax = config.get("data", {}).get("lax", {})
    patch = tuple(int(p) for p in lax.get("patch_size", (256, 256)))[:2]
    spacing = tuple(float(s) for s in lax.get("spacing", (1.0, 1.0)))[:2]
    device = inference_device(device)
    network = load_model(config_path, weights_file, device=device)
    return LandmarkModel(network, kind, views[0], spacing, patch, str(model_cfg.get("reduce", "all")), where)


@torch.no_grad()
def _model_points(model: LandmarkModel, images: np.ndarray, batch_size: int) -> np.ndarray:
    """(T, 3, 2) model-space (x, y) indices from model-space frames (X, Y, T) scaled to [0, 1]."""
    from cinema.models.inference import global_forward, soft_argmax

    samples = np.ascontiguousarray(images.transpose(2, 0, 1))[:, None]  # (T, 1, X, Y)
    size = torch.tensor(images.shape[:2] * N_POINTS, dtype=torch.float32)
    outputs = []
    for start in range(0, samples.shape[0], batch_size):
        chunk = torch.from_numpy(samples[start : start + batch_size]).to(model.device)
        if model.kind == "heatmap":
            logits = model.network({model.view: chunk})[model.view].float()
            points = soft_argmax(torch.sigmoid(logits))
        else:
            out = global_forward(model.network, {model.view: chunk}, model.reduce).float().cpu()
            points = (out * size).reshape(-1, N_POINTS, 2)
        outputs.append(points.cpu().numpy().astype(np.float64))
    return np.concatenate(outputs)


def predict_landmarks(
    study: Study, model: LandmarkModel, *, frames: Sequence[int] | None = None, batch_size: int = 16
) -> LandmarkResult:
    """The three landmarks on every (or the given) frame of the model's LAX view of ``study``."""
    from cinema.analysis.segment import scale_frames
    from cinema.preprocess import locate_study_heart
    from cinema.preprocess.model_space import to_model_space

    if model.view not in study.views:
        raise InputError(f"{study.source or 'study'}: no {model.view} view for the landmark model")
    view = study.view(model.view)
    frames = list(range(view.n_frames)) if frames is None else [int(f) for f in frames]
    bad = [f for f in frames if not 0 <= f < view.n_frames]
    if not frames or bad:
        raise InputError(f"{model.view}: frames {bad or frames} are not among its {view.n_frames} frames")
    location = locate_study_heart(study, model.view)
    images, transform = to_model_space(
        view.image[..., frames],
        view.affine,
        "lax",
        center_mm=None if location.fallback else location.center_mm,
        intensity="frame",
        in_plane_shape=model.patch_size,
        in_plane_spacing=model.spacing,
    )
    images = images.reshape(*images.shape[:2], -1)
    model_xy = _model_points(model, scale_frames(images), batch_size)
    voxel = transform.model_to_native_index(model_xy)
    homogeneous = np.concatenate([voxel, np.zeros((*voxel.shape[:-1], 1)), np.ones((*voxel.shape[:-1], 1))], -1)
    world = homogeneous @ np.asarray(view.affine, dtype=np.float64).T
    return LandmarkResult(model.view, voxel, world[..., :3], model_xy, transform)


def lax_function(world: np.ndarray) -> dict[str, Any]:
    """LV length per frame, the frames of max / min length, MAPSE and longitudinal shortening from (T, 3, 3) mm."""
    world = np.asarray(world, dtype=np.float64)
    if world.ndim != 3 or world.shape[1:] != (N_POINTS, 3):
        raise InputError(f"landmarks must be (T, 3, 3) world points, got shape {world.shape}")
    hinge_mid = world[:, :2].mean(axis=1)
    length = np.linalg.norm(world[:, 2] - hinge_mid, axis=1)
    longest, shortest = int(np.argmax(length)), int(np.argmin(length))
    result: dict[str, Any] = {
        "lv_length_mm": [round(float(v), 2) for v in length],
        "lax_ed_frame": longest,
        "lax_es_frame": shortest,
        "mapse_mm": None,
        "longitudinal_shortening_pct": None,
        "global_longitudinal_strain_pct": None,
    }
    if world.shape[0] > 1 and longest != shortest:
        displacement = np.linalg.norm(world[longest, :2] - world[shortest, :2], axis=1)
        result["mapse_mm"] = round(float(displacement.mean()), 2)
        result["longitudinal_shortening_pct"] = round(
            float((length[longest] - length[shortest]) / length[longest] * 100), 2
        )
        # Lagrangian strain of the apex-to-annulus-midpoint length, ED (longest) reference: a landmark GLS, negative
        # in systole, not the myocardial contour length that feature tracking measures
        result["global_longitudinal_strain_pct"] = round(
            float((length[shortest] - length[longest]) / length[longest] * 100), 2
        )
    return result
