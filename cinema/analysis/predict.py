"""Any released CineMA fine-tuned model on any input: the pipeline behind ``cinema predict``.

A checkpoint is a folder with ``config.yaml`` and one or more seed files (``<name>_<N>.safetensors``, the layout of
the released ``finetuned/<task>/<data>_<view>/`` folders; ``model.safetensors`` as ``cinema finetune`` writes it),
or one seed file with its config.yaml beside it. Every seed is run and their outputs are averaged:

==============  ======================================================================================
task            per seed, and for the seed mean
==============  ======================================================================================
classification  softmax probabilities (mean: mean of the seeds' softmax), predicted class
regression      the config's regression column, de-normalised with its mean / std (mean: of the values)
segmentation    label map (mean: seed-averaged softmax, then arg-max), area (2-D) or volume (3-D) per
                class per frame, after the official post-processing (LAX: below; SAX: none)
landmark        three (x, y) points per frame in the input array's index order, and in world mm
                (heatmap models: sigmoid then soft arg-max, mean of the seeds' sigmoid; coordinate
                models: outputs x (W, H), mean of the seeds' points)
==============  ======================================================================================

Two ways in:

- ``preprocessed=True``: the inputs are already in CineMA's model space, like the official example files, and are
  treated exactly as the official example scripts treat them: min-max scaling of the whole model input (ED and ES
  jointly for two-frame models, each frame alone otherwise), zero padding at the end to the patch size
  (192 x 192 x 16 or 256 x 256), no resampling; segmentation is cropped back to the input's shape. Per-seed
  numbers are then the official scripts' numbers (landmark points truncated to integers as they do).
- otherwise the inputs go through this package's model space (`cinema.preprocess`: resampling to the checkpoint's
  spacing, in-plane crop around the heart found without labels, per-frame intensity scaling, sliding windows along
  a stack longer than the patch), and results come back on the input's own grid through the exact inverse
  transform: label maps with the input's shape and affine, points as continuous voxel indices of the input.

The official LAX segmentation post-processing (``segmentation_lax_4c.py``) keeps the RV as predicted and, of the
MYO and the LV, the connected component (8-connected) the official loop ends on: meant to be the one closest to the
RV, but its running minimum is never updated, so it is the last component in raster order whenever the frame has
an RV (frames without an RV, where the official script fails, are left as predicted). It is reproduced as it is so
that results match the released scripts'.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from cinema.io.errors import InputError
from cinema.io.study import LAX_VIEWS, SAX, CineView, Study

logger = logging.getLogger(__name__)

__all__ = [
    "TASKS",
    "Checkpoint",
    "Frames",
    "Prediction",
    "PredictOptions",
    "Predictor",
    "find_checkpoint",
    "load_checkpoint",
    "official_lax_postprocess",
    "read_frames",
]

TASKS = ("classification", "regression", "segmentation", "landmark")
_SEED = re.compile(r"_(\d+)\.safetensors$")
_DEFAULT_SPACING = {SAX: (1.0, 1.0, 10.0), "lax": (1.0, 1.0)}
# the released segmentation classes; other class counts are named by index
_SEGMENTATION_CLASSES = {1: "RV", 2: "MYO", 3: "LV"}
N_POINTS = 3


# -------------------------------------------------------------------------------------------------------------------
# Checkpoints
# -------------------------------------------------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """A fine-tuned checkpoint: its config, its seed files and what it predicts.

    Attributes:
        config_path: the config.yaml.
        config: its content.
        seeds: the weight files, in seed order.
        kind: "convvit" or "convunetr".
        task: one of `TASKS`.
        method: for landmarks, "heatmap" or "coordinate"; else None.
        view: the one view the model sees.
        n_frames: frames stacked as channels (2: ED and ES; 1: any single frame).
        patch_size: network input size.
        spacing: model-space voxel size in mm.
        classes: class names (classification), else None.
        target: regression column and its mean / std (regression), else None.
    """

    config_path: Path
    config: dict[str, Any]
    seeds: list[Path]
    kind: str
    task: str
    method: str | None
    view: str
    n_frames: int
    patch_size: tuple[int, ...]
    spacing: tuple[float, ...]
    classes: list[str] | None = None
    target: tuple[str, float, float] | None = None
    n_outputs: int = 0


def _seed_order(path: Path) -> tuple[int, str]:
    match = _SEED.search(path.name)
    return (int(match.group(1)) if match else -1, path.name)


def _seed_files(folder: Path) -> list[Path]:
    found = sorted(folder.glob("*.safetensors"), key=_seed_order)
    if not found:
        raise FileNotFoundError(f"{folder}: no *.safetensors weights next to config.yaml")
    numbered = [p for p in found if _SEED.search(p.name)]
    if numbered:
        return numbered
    if len(found) == 1:
        return found
    names = ", ".join(p.name for p in found)
    raise InputError(f"{folder}: several weight files ({names}) and none named <name>_<seed>.safetensors")


def _config_and_seeds(weights: str | Path) -> tuple[Path, Path]:
    """(config.yaml, the seed file or the folder holding the seeds)."""
    path = Path(weights)
    if not path.exists():
        raise FileNotFoundError(f"weights not found: {path}")
    if path.is_file():
        if path.suffix != ".safetensors":
            raise InputError(f"{path}: expected a model folder or a .safetensors seed file")
        config = path.parent / "config.yaml"
        if not config.is_file():
            raise FileNotFoundError(f"{path}: no config.yaml beside the seed file")
        return config, path
    if not (path / "config.yaml").is_file() and (path / "model" / "config.yaml").is_file():
        path = path / "model"  # a `cinema finetune` output folder holds its selected model in model/
    if not (path / "config.yaml").is_file():
        raise FileNotFoundError(f"{path}: no config.yaml (a model folder holds config.yaml + *_N.safetensors seeds)")
    return path / "config.yaml", path


def find_checkpoint(weights: str | Path) -> tuple[Path, list[Path]]:
    """(config.yaml, seed files) of a fine-tuned folder, a `cinema finetune` output folder or one seed file."""
    config, seeds = _config_and_seeds(weights)
    return config, [seeds] if seeds.is_file() else _seed_files(seeds)


# the tasks each family does, as the release names its folders (finetuned/<task>[_<what>]/...)
_FAMILY_TASKS = {
    "convvit": ("classification", "regression", "landmark_coordinate"),
    "convunetr": ("segmentation", "landmark_heatmap"),
}


def _task_of(config: dict[str, Any], spec: Any, kind: str, view: str, config_path: Path) -> tuple[str, str | None]:
    """(task, landmark method) from ``task`` in config.yaml; else from the head the config describes (class list,
    regression column); else from the release's folder name; else from the output size."""
    task = config.get("task")
    if task is None and kind == "convvit" and spec.class_column is not None:
        task = "classification"
    elif task is None and kind == "convvit" and spec.regression_column is not None:
        task = "regression"
    elif task is None:
        folders = [part for part in config_path.parent.parts[::-1] if part.startswith(_FAMILY_TASKS[kind])]
        task = next((t for part in folders for t in _FAMILY_TASKS[kind] if part.startswith(t)), None)
    if task is None and view in LAX_VIEWS:
        task = {("convvit", 2 * N_POINTS): "landmark_coordinate", ("convunetr", N_POINTS): "landmark_heatmap"}.get(
            (kind, spec.out_chans)
        )
    if task is None and kind == "convunetr":
        task = "segmentation"
    if task in ("landmark_heatmap", "landmark_coordinate"):
        return "landmark", task.removeprefix("landmark_")
    if task in ("classification", "regression", "segmentation"):
        return task, None
    raise InputError(
        f"{config_path}: cannot tell what the {kind} model predicts (task {task!r}); set `task` in config.yaml"
    )


def load_checkpoint(weights: str | Path) -> Checkpoint:
    """Read a fine-tuned checkpoint's config and seed list (weights are loaded by `Predictor.from_weights`)."""
    from cinema.config.official import model_config_from_dict, model_kind
    from cinema.models.checkpoint import read_config

    config_path, _ = _config_and_seeds(weights)
    config, _ = read_config(config_path)
    where = str(config_path)
    try:
        kind = model_kind(config)
        spec = model_config_from_dict(config)
    except ValueError as err:
        raise InputError(f"{where}: {err}") from None
    if kind == "mae":
        raise InputError(
            f"{where}: the pre-trained CineMA has no task head; extract features with "
            "cinema.CineMA.from_pretrained().feature_forward(...), or fine-tune it (cinema finetune)"
        )
    if kind not in ("convvit", "convunetr"):
        raise InputError(f"{where}: cinema predict runs CineMA models (ConvViT, ConvUNetR), not {kind}")
    if len(spec.views) != 1:
        raise InputError(f"{where}: cinema predict runs single-view models, this one sees {spec.views}")
    view = spec.views[0]
    task, method = _task_of(config, spec, kind, view, config_path)
    _, seeds = find_checkpoint(weights)
    n_frames = int(getattr(spec, "n_frames", 1))
    patch = tuple(int(p) for p in spec.image_size[view])
    spacing = (spec.spacing or {}).get(view) or _DEFAULT_SPACING[SAX if view == SAX else "lax"]
    spacing = tuple(float(s) for s in spacing)[: len(patch)]
    if (in_chans := dict(spec.in_chans).get(view, 1)) != 1:
        raise InputError(f"{where}: cinema predict runs single-channel images, the model takes {in_chans} per frame")
    classes = [str(c) for c in spec.classes] if getattr(spec, "classes", None) else None
    target = None
    if task == "regression":
        mean = spec.regression_mean if spec.regression_mean is not None else 0.0
        std = spec.regression_std if spec.regression_std is not None else 1.0
        if spec.regression_mean is None or spec.regression_std is None:
            logger.warning("%s: no mean / std for %s: values are the model's raw output", where, spec.regression_column)
        target = (str(spec.regression_column), float(mean), float(std))
    if task == "landmark" and view not in LAX_VIEWS:
        raise InputError(f"{where}: landmark models see a long-axis view, this one {view}")
    expected = {"landmark": N_POINTS if method == "heatmap" else 2 * N_POINTS}.get(task)
    if expected is not None and spec.out_chans != expected:
        raise InputError(f"{where}: a {method} landmark model has {expected} outputs, this one {spec.out_chans}")
    return Checkpoint(
        config_path=config_path,
        config=config,
        seeds=seeds,
        kind=kind,
        task=task,
        method=method,
        view=view,
        n_frames=n_frames,
        patch_size=patch,
        spacing=spacing,
        classes=classes,
        target=target,
        n_outputs=int(spec.out_chans),
    )


# -------------------------------------------------------------------------------------------------------------------
# Inputs
# -------------------------------------------------------------------------------------------------------------------


@dataclass
class Frames:
    """The frames of the model's view to predict on.

    Attributes:
        view: the input's view, (X, Y, Z, T) for SAX or (X, Y, T) for LAX, T = the frames used.
        frames: stored frame index of each, in the input.
        names: what each frame is ("ED", "ES" or "frame <i>").
        study: the study the frames came from (heart location), None for ED/ES files.
        squeeze_time: the input held one 3-D frame (a mask is written without a time axis).
        ed_es_source: where ED/ES came from, for two-frame models.
    """

    view: CineView
    frames: list[int]
    names: list[str]
    study: Study | None = None
    squeeze_time: bool = False
    ed_es_source: str | None = None


def _nifti_frames(path: Path, view: str) -> CineView:
    """The NIfTI read as the model's view, refused when its name or shape says it is another view (never a LAX
    image read as a one-slice SAX stack, nor a 2-chamber file given to a 4-chamber model)."""
    from cinema.io.nifti import guess_view_name, read_nifti_cine

    named = guess_view_name(path)
    if named is not None and named != view:
        raise InputError(f"{path}: the file name says {named}, the model sees {view}; rename the file if it is {view}")
    cine = read_nifti_cine(path, view=view)
    if view == SAX and cine.spatial_shape[2] == 1:
        raise InputError(
            f"{path}: one slice, where the model needs a short-axis stack; a long-axis image goes to a long-axis model"
        )
    return cine


def _ed_es_files(paths: Sequence[Path], view: str, preprocessed: bool) -> Frames:
    from cinema.io.nifti import is_nifti_path

    cines = []
    for path in paths:
        if not (path.is_file() and is_nifti_path(path)):
            raise InputError(f"{path}: two inputs are ED then ES, each a NIfTI file of one frame")
        cine = _nifti_frames(path, view)
        if cine.n_frames != 1:
            raise InputError(f"{path}: an ED or ES input holds one frame, this one {cine.n_frames}")
        cines.append(cine)
    ed, es = cines
    if ed.spatial_shape != es.spatial_shape or (not preprocessed and not np.allclose(ed.affine, es.affine, atol=1e-3)):
        raise InputError(f"{paths[0]} and {paths[1]}: ED and ES must share one grid (shape and affine)")
    stacked = CineView(
        image=np.concatenate([ed.image, es.image], axis=-1), affine=ed.affine, source=str(paths[0]), name=view
    )
    return Frames(stacked, [0, 1], ["ED", "ES"], Study(views={view: stacked}, ed_frame=0, es_frame=1), True, "files")


def _ed_es_from_study(study: Study, view: str, device: str | torch.device) -> tuple[int, int, str]:
    """ED/ES of ``view``: from the study, else from the shipped SAX segmentation's LV volume curve."""
    reference = study.views.get(SAX) or study.view(view)
    same_clock = study.view(view).n_frames == reference.n_frames
    if study.ed_frame is not None and study.es_frame is not None and same_clock:
        return study.ed_frame, study.es_frame, "input"
    if SAX not in study.views or not same_clock:
        raise InputError(
            f"{study.source or 'input'}: ED and ES of the {view} view are not known; give them as two NIfTI files "
            "(ED then ES)"
        )
    from cinema.analysis.measure import find_ed_es, label_series, volume_curves
    from cinema.analysis.segment import SegmentationPredictor

    sax = study.view(SAX)
    labels = SegmentationPredictor.from_weights(None, device=device).segment_study(study)
    lv = volume_curves(label_series(labels, sax.n_frames), sax.spacing)["lv"]
    ed, es = find_ed_es(lv, study.ed_frame, study.es_frame)
    return ed, es, "LV volume curve of the shipped SAX segmentation"


def read_frames(
    paths: Sequence[str | Path],
    checkpoint: Checkpoint,
    preprocessed: bool,
    device: str | torch.device = "cpu",
    study_id: str | None = None,
) -> Frames:
    """The frames of ``checkpoint.view`` to predict on, from the inputs (see `cinema predict`); ``study_id`` picks
    one study of a DICOM folder holding several."""
    from cinema.io.nifti import is_nifti_path
    from cinema.io.read import detect_input_kind, read_study

    paths = [Path(p) for p in paths]
    view = checkpoint.view
    if not paths:
        raise InputError("no input given")
    if preprocessed:
        bad = [p for p in paths if not (p.is_file() and is_nifti_path(p))]
        if bad:
            raise InputError(f"{bad[0]}: --preprocessed takes NIfTI files already in CineMA's model space")
    if checkpoint.n_frames == 2:
        if len(paths) == 2:
            return _ed_es_files(paths, view, preprocessed)
        if len(paths) != 1 or preprocessed:
            raise InputError(f"a two-frame model takes ED and ES: two NIfTI files, or one exam; got {len(paths)}")
    elif checkpoint.n_frames != 1:
        raise InputError(f"{checkpoint.config_path}: models of {checkpoint.n_frames} frames are not supported")
    elif len(paths) != 1:
        raise InputError(f"a one-frame model takes one input (a frame, a cine or an exam), got {len(paths)}")
    path = paths[0]
    kind = detect_input_kind(path)
    if kind == "nifti":
        cine = _nifti_frames(path, view)
        study = Study(views={view: cine}, metadata={"source_format": "nifti"}, source=str(path))
    else:
        study = read_study(path, study=study_id)
        cine = study.view(view)
    squeeze = kind == "nifti" and cine.n_frames == 1 and _at_most_3d(path)
    if checkpoint.n_frames == 1:
        if checkpoint.task in ("classification", "regression") and cine.n_frames != 1:
            raise InputError(f"{path}: a one-frame {checkpoint.task} model takes one frame, got {cine.n_frames}")
        names = [f"frame {t}" for t in range(cine.n_frames)]
        return Frames(cine, list(range(cine.n_frames)), names, study, squeeze)
    ed, es, source = _ed_es_from_study(study, view, device)
    pair = CineView(image=cine.image[..., [ed, es]], affine=cine.affine, source=cine.source, name=view)
    return Frames(pair, [ed, es], ["ED", "ES"], study, False, source)


def _at_most_3d(path: Path) -> bool:
    from cinema.io.datasets import nifti_shape

    return len(nifti_shape(path)) <= 3


# -------------------------------------------------------------------------------------------------------------------
# Post-processing and measurements
# -------------------------------------------------------------------------------------------------------------------


def official_lax_postprocess(labels: np.ndarray) -> np.ndarray:
    """The official LAX segmentation post-processing of one 2-D label map (see the module notes)."""
    rv = labels == 1
    if not rv.any():
        return labels.copy()
    out = np.zeros_like(labels)
    out[rv] = 1
    for value in (2, 3):
        components, n = ndimage.label(labels == value, structure=np.ones((3, 3), dtype=bool))
        if n:
            out[components == n] = value
    return out


def _class_names(n_classes: int) -> dict[int, str]:
    if n_classes == 4:
        return dict(_SEGMENTATION_CLASSES)
    return {c: f"class_{c}" for c in range(1, n_classes)}


def _measure(labels: np.ndarray, spacing: Sequence[float], n_classes: int, three_d: bool) -> dict[str, list[float]]:
    """Per class: volume in ml (3-D) or area in mm^2 (2-D) of each frame of (spatial..., T) labels."""
    unit = float(np.prod(spacing[: 3 if three_d else 2])) / (1000.0 if three_d else 1.0)
    axes = tuple(range(labels.ndim - 1))
    return {
        name: [round(float(v), 6) for v in np.sum(labels == c, axis=axes) * unit]
        for c, name in _class_names(n_classes).items()
    }


# -------------------------------------------------------------------------------------------------------------------
# The predictor
# -------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PredictOptions:
    """How a `Predictor` runs, fixed when it is built.

    Attributes:
        preprocessed: inputs are already in model space; use the official examples' preprocessing (module notes).
        batch_size: frames per forward pass for one-frame models.
    """

    preprocessed: bool = False
    batch_size: int = 4

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass
class Prediction:
    """What `Predictor.predict` returns: the JSON-ready ``result`` and, for segmentation, the label map (the input's
    grid: ``mask`` with ``affine``)."""

    result: dict[str, Any]
    mask: np.ndarray | None = None
    affine: np.ndarray | None = None


def _minmax(x: torch.Tensor) -> torch.Tensor:
    """MONAI ScaleIntensity: (x - min) / (max - min) over the whole tensor, zeros when it is constant."""
    low, high = x.min(), x.max()
    return (x - low) / (high - low) if bool(high > low) else torch.zeros_like(x)


def _pad_end(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Zero-pad the trailing spatial axes at their end up to ``size`` (never crops), as MONAI SpatialPad "end"."""
    pad: list[int] = []
    for have, want in zip(reversed(x.shape[-len(size) :]), reversed(tuple(size)), strict=True):
        pad += [0, max(0, want - have)]
    return torch.nn.functional.pad(x, pad) if any(pad) else x


class Predictor:
    """One object that runs a fine-tuned CineMA checkpoint (all its seeds) on inputs::

    predictor = Predictor.from_weights("finetuned/classification_cvd/acdc_sax", device="cpu")
    prediction = predictor.predict(["sax_ed.nii.gz", "sax_es.nii.gz"])   # .result: the prediction.json dict
    """

    def __init__(
        self,
        checkpoint: Checkpoint,
        networks: Sequence[nn.Module],
        options: PredictOptions | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        if len(networks) != len(checkpoint.seeds):
            raise ValueError(f"{len(networks)} networks for {len(checkpoint.seeds)} seed files")
        self.checkpoint = checkpoint
        self.networks = list(networks)
        self.options = options or PredictOptions()
        self.device = torch.device(device)

    @classmethod
    def from_weights(cls, weights: str | Path, device: str | torch.device = "cpu", **options: Any) -> Predictor:
        """Load every seed of ``weights`` (`find_checkpoint`) with `PredictOptions(**options)`."""
        from cinema.analysis.segment import inference_device
        from cinema.models.checkpoint import load_model

        checkpoint = load_checkpoint(weights)
        device = inference_device(device)
        networks = [load_model(checkpoint.config_path, seed, device=device) for seed in checkpoint.seeds]
        return cls(checkpoint, networks, PredictOptions(**options), device)

    # ---------------------------------------------------------------------------------------------- forward passes

    def _activation(self, out: torch.Tensor) -> torch.Tensor:
        """What is averaged over sliding windows and over seeds: softmax (classes), sigmoid (heatmaps), else raw."""
        ck = self.checkpoint
        if ck.task in ("classification", "segmentation"):
            return torch.softmax(out.float(), dim=1)
        if ck.method == "heatmap":
            return torch.sigmoid(out.float())
        return out.float()

    @torch.no_grad()
    def _forward(self, network: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *spatial) model input -> activated output, float32 on the CPU: (B, out) or (B, out, *spatial)."""
        from cinema.models.inference import average_windows, windowed_outputs

        view, patch = self.checkpoint.view, self.checkpoint.patch_size
        x = x.to(self.device)
        dense = self.checkpoint.kind == "convunetr"
        larger = any(s > p for s, p in zip(x.shape[2:], patch, strict=True))
        if self.options.preprocessed or not larger:
            # the official scripts feed the padded input whole, whatever its size
            out = network({view: x})
            return self._activation(out[view] if dense else out).cpu()
        if dense:
            return average_windows({view: x}, {view: patch}, lambda w: {view: self._activation(network(w)[view])})[
                view
            ].cpu()
        disabled = lambda: torch.autocast(device_type=self.device.type, enabled=False)  # noqa: E731
        return windowed_outputs(network, {view: x}, {view: patch}, "all", disabled, self._activation).cpu()

    def _model_inputs(self, frames: Frames) -> tuple[list[torch.Tensor], Any]:
        """Model inputs (each (1, C, *spatial)) and the model-space transform (None when preprocessed)."""
        ck = self.checkpoint
        image = torch.from_numpy(np.ascontiguousarray(frames.view.image))  # (X, Y[, Z], T)
        transform = None
        if not self.options.preprocessed:
            image, transform = self._to_model_space(frames)
            image = torch.from_numpy(image)
        per_frame = image.movedim(-1, 0)[:, None]  # (T, 1, X, Y[, Z])
        if ck.n_frames == 2:
            inputs = [_pad_end(_minmax(per_frame[:, 0]), ck.patch_size)[None]]  # ED and ES as channels, scaled jointly
        else:
            inputs = [_pad_end(_minmax(x), ck.patch_size)[None] for x in per_frame]
        return inputs, transform

    def _to_model_space(self, frames: Frames) -> tuple[np.ndarray, Any]:
        from cinema.preprocess import locate_study_heart
        from cinema.preprocess.model_space import to_model_space

        ck, view = self.checkpoint, frames.view
        center = None
        if frames.study is not None:
            location = locate_study_heart(frames.study, ck.view)
            center = None if location.fallback else location.center_mm
        sax = ck.view == SAX
        image, transform = to_model_space(
            view.image,
            view.affine,
            "sax" if sax else "lax",
            center_mm=center,
            intensity="frame",
            z_spacing=ck.spacing[2] if sax else "auto",
            min_slices=ck.patch_size[2] if sax else None,
            in_plane_shape=ck.patch_size[:2],
            in_plane_spacing=ck.spacing[:2],
        )
        return np.ascontiguousarray(image, dtype=np.float32), transform

    # ---------------------------------------------------------------------------------------------- tasks

    def predict(self, paths: Sequence[str | Path], study_id: str | None = None) -> Prediction:
        """Run every seed on the inputs (see `read_frames`) and average them."""
        frames = read_frames(paths, self.checkpoint, self.options.preprocessed, self.device, study_id)
        return self.predict_frames(frames)

    def predict_frames(self, frames: Frames) -> Prediction:
        """Run every seed on prepared `Frames` and average them; see the module notes for the result."""
        ck = self.checkpoint
        inputs, transform = self._model_inputs(frames)
        head: dict[str, Any] = {
            "task": ck.task,
            "view": ck.view,
            "preprocessed": self.options.preprocessed,
            "frames": [{"index": i, "name": n} for i, n in zip(frames.frames, frames.names, strict=True)],
        }
        if frames.ed_es_source is not None:
            head["ed_es_source"] = frames.ed_es_source
        if ck.task in ("classification", "regression"):
            return Prediction({**head, **self._pooled(inputs[0])})
        if ck.task == "segmentation":
            return self._segmentation(head, frames, inputs, transform)
        return Prediction({**head, "method": ck.method, **self._landmarks(frames, inputs, transform)})

    def _chunks(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        size = self.options.batch_size
        return [torch.cat(inputs[i : i + size]) for i in range(0, len(inputs), size)]

    def _seed_names(self) -> list[str]:
        return [p.name for p in self.checkpoint.seeds]

    def _pooled(self, x: torch.Tensor) -> dict[str, Any]:
        ck = self.checkpoint
        outputs = [self._forward(network, x)[0].double().numpy() for network in self.networks]  # (out,) per seed
        if ck.task == "classification":
            classes = ck.classes or [str(i) for i in range(ck.n_outputs)]
            seeds = [
                {
                    "weights": name,
                    "probabilities": dict(zip(classes, p.tolist(), strict=True)),
                    "prediction": classes[int(np.argmax(p))],
                }
                for name, p in zip(self._seed_names(), outputs, strict=True)
            ]
            mean = np.mean(outputs, axis=0)
            return {
                "classes": classes,
                "seeds": seeds,
                "probabilities": dict(zip(classes, mean.tolist(), strict=True)),
                "prediction": classes[int(np.argmax(mean))],
            }
        column, offset, scale = ck.target  # type: ignore[misc]
        values = [float(o[0]) * scale + offset for o in outputs]
        seeds = [{"weights": name, "value": v} for name, v in zip(self._seed_names(), values, strict=True)]
        return {"target": column, "seeds": seeds, "value": float(np.mean(values))}

    def _native_labels(self, probs: torch.Tensor, frames: Frames, transform: Any) -> np.ndarray:
        """(B, C, *model spatial) probabilities -> (B, *spatial) uint8 labels on the input's grid, post-processed."""
        from cinema.preprocess.model_space import from_model_space

        if transform is None:
            crop = (slice(None), *(slice(0, s) for s in frames.view.spatial_shape))
            labels = probs.argmax(dim=1)[crop].numpy().astype(np.uint8)
        else:
            labels = np.stack([from_model_space(p.numpy(), transform, kind="prob") for p in probs])
        if self.checkpoint.view != SAX:
            labels = np.stack([official_lax_postprocess(frame) for frame in labels])
        return labels

    def _segmentation(
        self, head: dict[str, Any], frames: Frames, inputs: list[torch.Tensor], transform: Any
    ) -> Prediction:
        ck = self.checkpoint
        three_d = ck.view == SAX
        per_seed: list[list[np.ndarray]] = [[] for _ in self.networks]
        mean_labels: list[np.ndarray] = []
        # frames go through in batches, so memory holds one batch of probabilities per seed, not the whole cine
        for chunk in self._chunks(inputs):
            probs = [self._forward(network, chunk) for network in self.networks]
            for labels, p in zip(per_seed, probs, strict=True):
                labels.append(self._native_labels(p, frames, transform))
            mean_labels.append(self._native_labels(torch.stack(probs).mean(dim=0), frames, transform))
        n_classes = ck.n_outputs
        spacing = frames.view.spacing
        key = "volumes_ml" if three_d else "areas_mm2"

        def measure(labels: list[np.ndarray]) -> dict[str, list[float]]:
            return _measure(np.moveaxis(np.concatenate(labels), 0, -1), spacing, n_classes, three_d)

        seeds = [{"weights": name, key: measure(x)} for name, x in zip(self._seed_names(), per_seed, strict=True)]
        labels = np.moveaxis(np.concatenate(mean_labels), 0, -1)  # (spatial..., T)
        result = {
            **head,
            "classes": _class_names(n_classes),
            "seeds": seeds,
            "mask": "mask.nii.gz",
            key: measure(mean_labels),
        }
        mask = labels[..., 0] if frames.squeeze_time else labels
        if not three_d:
            mask = mask[:, :, None] if mask.ndim == 2 else mask[:, :, None, :]  # the input's single-slice axis
        return Prediction(result, mask=mask, affine=frames.view.affine)

    def _landmarks(self, frames: Frames, inputs: list[torch.Tensor], transform: Any) -> dict[str, Any]:
        """Points per frame: per seed (official integers when preprocessed) and the seed mean, in voxels and mm."""
        from cinema.models.hub import heatmap_soft_argmax
        from cinema.models.inference import soft_argmax

        ck = self.checkpoint
        official = self.options.preprocessed
        # coordinates are fractions of the model input's size (the official scripts: of the input image's)
        size = frames.view.spatial_shape[:2] if official else ck.patch_size[:2]
        scale = torch.tensor(size * N_POINTS, dtype=torch.float64)
        per_seed: list[list[torch.Tensor]] = [[] for _ in self.networks]
        mean_points = []
        for chunk in self._chunks(inputs):
            outputs = [self._forward(network, chunk) for network in self.networks]
            if ck.method == "heatmap":  # sigmoid probabilities (B, 3, X, Y): soft arg-max, of their mean for the mean
                mean_points.append(soft_argmax(torch.stack(outputs).mean(dim=0)).double())
                if official:  # the official helper's arithmetic, so that its integers come out exactly
                    points = [heatmap_soft_argmax(o).reshape(-1, N_POINTS, 2).double() for o in outputs]
                else:
                    points = [soft_argmax(o).double() for o in outputs]
            else:
                points = [(o.double() * scale).reshape(-1, N_POINTS, 2) for o in outputs]
                mean_points.append(torch.stack(points).mean(dim=0))
                if official:  # the official scripts scale a float32 array in place before int()
                    points = [p.float().double() for p in points]
            for store, p in zip(per_seed, points, strict=True):
                store.append(p)
        seeds = []
        for name, chunks in zip(self._seed_names(), per_seed, strict=True):
            points = torch.cat(chunks)
            if official:
                points = points.to(torch.long).double()  # the official int(): truncation toward zero
            seeds.append({"weights": name, **self._points(points.numpy(), frames, transform, integers=official)})
        mean = torch.cat(mean_points).numpy()
        return {"seeds": seeds, **self._points(mean, frames, transform, integers=False)}

    @staticmethod
    def _points(model_xy: np.ndarray, frames: Frames, transform: Any, integers: bool) -> dict[str, Any]:
        """(T, 3, 2) model-space points -> ``points`` (input voxel indices) and ``points_mm`` (world)."""
        voxel = model_xy if transform is None else transform.model_to_native_index(model_xy)
        ijk = np.concatenate([voxel, np.zeros((*voxel.shape[:-1], 1))], axis=-1)
        world = ijk @ frames.view.affine[:3, :3].T + frames.view.affine[:3, 3]
        points = voxel.astype(np.int64).tolist() if integers else np.round(voxel, 4).tolist()
        return {"points": points, "points_mm": np.round(world, 4).tolist()}
