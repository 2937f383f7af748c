"""The on-disk form of a `Study`: a folder of NIfTI cines plus ``study.json`` (what `cinema convert` writes).

Layout::

    OUT_DIR/
        sax.nii.gz              4-D (x, y, z, t), time last
        lax_2c.nii.gz ...       4-D (x, y, 1, t), only for views that exist
        sax_labels.nii.gz       optional uint8 (x, y, z, n) label maps of the frames in "labelled_frames"
        study.json              geometry, frames, trigger times, ED/ES and the study's metadata

The folder is built beside OUT_DIR and renamed into place, so it is either complete or absent. Unless
``keep_phi=True`` the written metadata is filtered of patient-identifying keys (see `cinema.io.dicom.PHI_KEYWORDS`)
and of the source path, which often carries a patient's name.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from cinema.io.atomic import atomic_directory, write_text_atomic
from cinema.io.dicom import PHI_KEYWORDS
from cinema.io.errors import InputError
from cinema.io.nifti import nifti_bytes, read_label_nifti, read_nifti_cine
from cinema.io.study import VIEW_NAMES, CineView, Study

STUDY_JSON = "study.json"
FORMAT_NAME = "cinema-study"
FORMAT_VERSION = 1
_PHI_KEYS = {key.lower() for key in PHI_KEYWORDS} | {"patient", "source", "source_path"}


def is_study_folder(path: str | os.PathLike) -> bool:
    path = Path(path)
    return path.is_dir() and (path / STUDY_JSON).is_file()


def strip_phi(value: Any) -> Any:
    """A copy of nested metadata without patient-identifying keys."""
    if isinstance(value, dict):
        return {k: strip_phi(v) for k, v in value.items() if str(k).lower() not in _PHI_KEYS}
    if isinstance(value, list | tuple):
        return [strip_phi(v) for v in value]
    return value


def _json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_ready(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def _time_step(view: CineView) -> float | None:
    if view.frame_times_ms is None or view.n_frames < 2:
        return None
    steps = np.diff(view.frame_times_ms)
    return float(np.median(steps)) if (steps > 0).all() else None


_NUMBER = r"(?:-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?|null)"
_NUMBER_LIST = re.compile(rf"\[\s*({_NUMBER}(?:,\s*{_NUMBER})*)\s*\]")


def _dumps(content: dict[str, Any]) -> str:
    """Indented JSON with lists of numbers kept on one line (affines, trigger-time tables stay readable)."""
    text = json.dumps(content, indent=2)

    def collapse(match: re.Match[str]) -> str:
        if "\n" not in match.group(0):  # already on one line, possibly inside a string value: leave it alone
            return match.group(0)
        return "[" + ", ".join(re.split(r",\s*", match.group(1))) + "]"

    return _NUMBER_LIST.sub(collapse, text) + "\n"


def study_json(study: Study, keep_phi: bool = False) -> dict[str, Any]:
    """The ``study.json`` content for `study` (files named as `write_study` names them)."""
    views = {}
    for name in study.view_names:
        view = study.views[name]
        entry: dict[str, Any] = {
            "file": f"{name}.nii.gz",
            "shape": list(view.as_4d().shape),
            "spacing_mm": list(view.spacing),
            "n_frames": view.n_frames,
            "orientation": "".join(nib.aff2axcodes(view.affine)),
            "affine": view.affine.tolist(),
            "frame_times_ms": view.frame_times_ms,
            "frame_indices": view.frame_indices,
        }
        if view.labels:
            entry["labels_file"] = f"{name}_labels.nii.gz"
            entry["labelled_frames"] = sorted(view.labels)
        views[name] = entry
    content: dict[str, Any] = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "ed_frame": study.ed_frame,
        "es_frame": study.es_frame,
        "views": views,
        "metadata": study.metadata if keep_phi else strip_phi(study.metadata),
    }
    if keep_phi and study.source:
        content["source"] = study.source
    return _json_ready(content)


def write_study(
    study: Study,
    out_dir: str | os.PathLike,
    force: bool = False,
    keep_phi: bool = False,
    inputs: Sequence[str | os.PathLike] = (),
) -> Path:
    """Write `study` as a study folder (see the module docstring); returns `out_dir`.

    Follows the output-safety rule of `cinema.io.atomic`: an existing non-empty `out_dir` is replaced only with
    `force` and only when cinema wrote it, and never when it is, holds or lies inside one of `inputs`.
    """
    out_dir = Path(out_dir)
    content = study_json(study, keep_phi=keep_phi)
    with atomic_directory(out_dir, force=force, inputs=inputs, command="convert") as tmp:
        for name in study.view_names:
            view = study.views[name]
            (tmp / f"{name}.nii.gz").write_bytes(nifti_bytes(view.as_4d(), view.affine, time_step_ms=_time_step(view)))
            if view.labels:
                frames = sorted(view.labels)
                stacked = np.stack([view.labels[f] for f in frames], axis=-1)
                if not view.is_sax:
                    stacked = stacked[:, :, None, :]
                (tmp / f"{name}_labels.nii.gz").write_bytes(nifti_bytes(stacked, view.affine, dtype=np.uint8))
        write_text_atomic(tmp / STUDY_JSON, _dumps(content))
    return out_dir


def read_study_folder(folder: str | os.PathLike) -> Study:
    """Read a folder written by `write_study` / `cinema convert`."""
    folder = Path(folder)
    json_path = folder / STUDY_JSON
    if not json_path.is_file():
        raise FileNotFoundError(f"{json_path}: no such file (not a cinema study folder)")
    try:
        content = json.loads(json_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{json_path}: not valid JSON ({err})") from err
    if not isinstance(content, dict) or content.get("format") != FORMAT_NAME:
        raise InputError(f"{json_path}: not a {FORMAT_NAME} file")
    if int(content.get("version", 0)) > FORMAT_VERSION:
        raise InputError(f"{json_path}: format version {content.get('version')} is newer than this reader")
    entries = content.get("views")
    if not isinstance(entries, dict) or not entries:
        raise InputError(f"{json_path}: lists no views")
    views = {}
    for name, entry in entries.items():
        if name not in VIEW_NAMES:
            raise InputError(f"{json_path}: unknown view {name!r}")
        path = folder / str(entry.get("file", f"{name}.nii.gz"))
        view = read_nifti_cine(path, view=name)
        if list(view.as_4d().shape) != list(entry.get("shape", view.as_4d().shape)):
            raise InputError(f"{path}: shape {view.as_4d().shape} does not match {STUDY_JSON} ({entry['shape']})")
        labels = {}
        if entry.get("labels_file"):
            label_path = folder / str(entry["labels_file"])
            stacked = read_label_nifti(label_path, view.spatial_shape, view.affine)
            frames = [int(f) for f in entry.get("labelled_frames", [])]
            if stacked.ndim == len(view.spatial_shape):
                stacked = stacked[..., None]
            if stacked.shape[-1] != len(frames):
                raise InputError(f"{label_path}: {stacked.shape[-1]} label frames but {len(frames)} labelled_frames")
            labels = {frame: stacked[..., i] for i, frame in enumerate(frames)}
        # The JSON keeps the float64 affine; NIfTI stores float32. Prefer the exact one when both agree.
        affine = view.affine
        stored = np.asarray(entry.get("affine", affine), dtype=np.float64)
        if stored.shape == (4, 4) and np.abs(stored - affine).max() < 1e-3:
            affine = stored
        views[name] = CineView(
            image=view.image,
            affine=affine,
            frame_times_ms=entry.get("frame_times_ms"),
            labels=labels,
            frame_indices=entry.get("frame_indices"),
            source=str(path),
            name=name,
        )
    return Study(
        views=views,
        ed_frame=content.get("ed_frame"),
        es_frame=content.get("es_frame"),
        metadata=dict(content.get("metadata") or {}),
        source=str(folder),
    )
