"""Preprocessing into CineMA's model space and back.

`to_model_space` / `from_model_space` resample, crop and normalise native arrays (any affine) into the reference's
model grid (SAX 1 x 1 x 10 mm, 192 x 192 x >=16; LAX 1 x 1 mm, 256 x 256) and bring predictions back onto the exact
native grid. `locate_heart` finds the crop centre without labels; `view_to_model_space` does it all for a `Study`.
`cinema.preprocess.augment` (imported on its own) is the batched torch augmentation of fine-tuning.
"""

from cinema.preprocess.intensity import LOWER_PERCENTILE, UPPER_PERCENTILE, normalise_intensity, to_uint8
from cinema.preprocess.localise import HeartLocation, lax_plane_center, locate_heart, motion_map
from cinema.preprocess.model_space import (
    LAX_IN_PLANE_SHAPE,
    LAX_SPACING_MM,
    SAX_IN_PLANE_SHAPE,
    SAX_MIN_SLICES,
    SAX_SPACING_MM,
    ModelSpaceTransform,
    crop_coverage,
    from_model_space,
    model_space_transform,
    resample_to_model,
    to_model_space,
)
from cinema.preprocess.pipeline import ModelSpaceView, locate_study_heart, view_to_model_space
from cinema.preprocess.slices import neighbour_slices

__all__ = [
    "LAX_IN_PLANE_SHAPE",
    "LAX_SPACING_MM",
    "LOWER_PERCENTILE",
    "SAX_IN_PLANE_SHAPE",
    "SAX_MIN_SLICES",
    "SAX_SPACING_MM",
    "UPPER_PERCENTILE",
    "HeartLocation",
    "ModelSpaceTransform",
    "ModelSpaceView",
    "crop_coverage",
    "from_model_space",
    "lax_plane_center",
    "locate_heart",
    "locate_study_heart",
    "model_space_transform",
    "motion_map",
    "neighbour_slices",
    "normalise_intensity",
    "resample_to_model",
    "to_model_space",
    "to_uint8",
    "view_to_model_space",
]
