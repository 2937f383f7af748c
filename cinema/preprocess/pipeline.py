"""Study-level preprocessing: one view of a `Study` into model space, with the heart found without labels.

prepared = view_to_model_space(study, "sax")           # heart located from the cine's motion
logits = model(prepared.image[..., t])                 # (C, 192, 192, Z) per frame
labels = from_model_space(logits, prepared.transform, kind="prob")   # native grid, input's shape and affine
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from cinema.io.study import LAX_VIEWS, SAX, Study
from cinema.preprocess.intensity import IntensityScope
from cinema.preprocess.localise import HeartLocation, lax_plane_center, locate_heart
from cinema.preprocess.model_space import (
    SAX_MIN_SLICES,
    ModelSpaceTransform,
    ZSpacing,
    resample_to_model,
    to_model_space,
)


@dataclass
class ModelSpaceView:
    """One view of a study in model space.

    Attributes:
        image: float32 [0, 1] intensities, (192, 192, Z, T) for SAX or (256, 256, T) for LAX, T = len(frames).
        transform: the native <-> model mapping; `from_model_space` with it gives native-grid results.
        frames: stored frame indices of the study, in the order of the image's last axis.
        labels: stored frame index -> model-space uint8 label map, for the selected frames that have labels.
        location: the heart location used for the crop, or None when the crop was given or image-centred.
    """

    image: np.ndarray
    transform: ModelSpaceTransform
    frames: list[int]
    labels: dict[int, np.ndarray] = field(default_factory=dict)
    location: HeartLocation | None = None


def locate_study_heart(study: Study, view: str = SAX) -> HeartLocation:
    """Heart location for a view's crop: the cine's motion; for SAX without usable motion, the LAX planes.

    Falls back to the image centre (``fallback`` set) when neither is available.
    """
    cine = study.view(view)
    location = locate_heart(cine.as_4d(), cine.affine)
    if not location.fallback or view != SAX:
        return location
    lax_affines = [study.views[name].affine for name in LAX_VIEWS if name in study.views]
    center = lax_plane_center(cine.spatial_shape, cine.affine, lax_affines)
    if center is None:
        return location
    return HeartLocation(
        center_mm=center,
        center_index=cine.world_to_voxel(center),
        confidence=location.confidence,
        fallback=False,
        method="lax_planes",
    )


def view_to_model_space(
    study: Study,
    view: str = SAX,
    *,
    frames: Sequence[int] | None = None,
    center_mm: np.ndarray | Literal["auto"] | None = "auto",
    intensity: IntensityScope | None = "frame",
    z_spacing: ZSpacing = "auto",
    min_slices: int | None = SAX_MIN_SLICES,
) -> ModelSpaceView:
    """Resample, crop and normalise one view of a study (and its labels) into model space.

    Args:
        study: the exam.
        view: "sax", "lax_2c", "lax_3c" or "lax_4c".
        frames: stored frame indices to keep (default: all).
        center_mm: "auto" locates the heart with `locate_study_heart`; a world point (3,) centres the crop on it;
            None centres it on the image.
        intensity: "frame" (reference), "cine" (one scale for all frames) or None.
        z_spacing, min_slices: see `cinema.preprocess.model_space.model_space_transform`.
    """
    cine = study.view(view)
    where = study.source or cine.source or view
    if frames is None:
        frames = list(range(cine.n_frames))
    frames = [int(f) for f in frames]
    bad = [f for f in frames if not 0 <= f < cine.n_frames]
    if not frames or bad:
        raise ValueError(f"{where}: frames {bad or frames} are not among the {cine.n_frames} stored frames of {view}")

    location = None
    if isinstance(center_mm, str):
        if center_mm != "auto":
            raise ValueError(f"center_mm must be 'auto', None or a world point, got {center_mm!r}")
        location = locate_study_heart(study, view)
        center_mm = location.center_mm
    image, transform = to_model_space(
        cine.image[..., frames],
        cine.affine,
        "sax" if view == SAX else "lax",
        center_mm=center_mm,
        intensity=intensity,
        z_spacing=z_spacing,
        min_slices=min_slices,
    )
    labels = {f: resample_to_model(cine.labels[f], transform, "label") for f in frames if f in cine.labels}
    return ModelSpaceView(image=image, transform=transform, frames=frames, labels=labels, location=location)
