"""The in-memory model of one cine cardiac MRI exam.

A `Study` holds up to four views: the short-axis stack ``sax`` with image axes (x, y, slice, time) and the long-axis
views ``lax_2c`` / ``lax_3c`` / ``lax_4c`` with image axes (x, y, time). Every view carries a 4x4 voxel-to-world
affine in RAS+ millimetres (the nibabel convention). For a long-axis view the affine maps (i, j, 0); its third
column is the slice normal scaled by the slice thickness so that the matrix stays invertible.

Frame indices (``ed_frame``, ``es_frame``, the keys of ``labels``) always index the stored time axis. When only some
frames of the acquisition are stored (ACDC ships ED and ES only) ``frame_indices`` records which acquisition frames
they were.

Construction validates everything downstream code relies on, so a `Study` that exists is usable: finite intensities,
a finite invertible affine, positive spacing, the right number of dimensions, and label maps with the view's spatial
shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cinema.io.errors import InputError

SAX = "sax"
LAX_VIEWS = ("lax_2c", "lax_3c", "lax_4c")
VIEW_NAMES = (SAX, *LAX_VIEWS)


@dataclass
class CineView:
    """One view of a cine exam.

    Attributes:
        image: float32 intensities, (X, Y, Z, T) for ``sax`` and (X, Y, T) for a long-axis view.
        affine: 4x4 float64 voxel -> world (RAS+, mm) matrix of the spatial axes.
        frame_times_ms: time of each stored frame after the R wave (trigger time), or None when unknown.
        labels: stored frame index -> uint8 label map of the view's spatial shape ((X, Y, Z) or (X, Y)).
        frame_indices: acquisition frame number (0-based) of each stored frame, or None when all frames are stored.
        source: where the view came from (a file or folder), for messages.
        name: the view name, one of `VIEW_NAMES`.
    """

    image: np.ndarray
    affine: np.ndarray
    frame_times_ms: list[float] | None = None
    labels: dict[int, np.ndarray] = field(default_factory=dict)
    frame_indices: list[int] | None = None
    source: str = ""
    name: str = SAX

    def __post_init__(self) -> None:
        where = self.source or self.name
        if self.name not in VIEW_NAMES:
            raise InputError(f"{where}: unknown view name {self.name!r}; expected one of {', '.join(VIEW_NAMES)}")
        image = np.asarray(self.image)
        expected_ndim = 4 if self.name == SAX else 3
        if image.ndim != expected_ndim:
            layout = "(X, Y, Z, T)" if self.name == SAX else "(X, Y, T)"
            raise InputError(f"{where}: {self.name} image must be {expected_ndim}-D {layout}, got shape {image.shape}")
        if min(image.shape) < 1:
            raise InputError(f"{where}: {self.name} image has an empty axis, shape {image.shape}")
        if not np.issubdtype(image.dtype, np.number) or np.iscomplexobj(image):
            raise InputError(f"{where}: {self.name} image must be real numbers, got dtype {image.dtype}")
        # Extremes before the float32 conversion: NaN and ±inf propagate into them, and so do values float32 cannot
        # hold. Intensities stay below half of float32's range so that the difference of any two (interpolation,
        # percentile scaling) is finite; no real image comes near it.
        low, high = float(image.min()), float(image.max())
        if not (np.isfinite(low) and np.isfinite(high)):
            raise InputError(f"{where}: {self.name} image contains NaN or infinite values")
        peak, float32_max = max(-low, high), float(np.finfo(np.float32).max)
        if peak > float32_max:
            raise InputError(
                f"{where}: {self.name} image values reach ±{peak:.3g}, beyond float32's range (±{float32_max:.3g}): "
                "the conversion to float32 would overflow to infinity"
            )
        if peak > float32_max / 2:
            raise InputError(
                f"{where}: {self.name} image values reach ±{peak:.3g}, too close to float32's limit "
                f"(±{float32_max:.3g}): differences between them (interpolation, intensity scaling) would overflow"
            )
        image = image.astype(np.float32, copy=False)
        self.image = image

        affine = np.asarray(self.affine, dtype=np.float64)
        if affine.shape != (4, 4):
            raise InputError(f"{where}: affine must be a finite 4x4 matrix, got shape {affine.shape}")
        if not np.isfinite(affine).all():
            raise InputError(f"{where}: affine must be a finite 4x4 matrix, got NaN or infinite entries")
        if not np.allclose(affine[3], [0, 0, 0, 1]):
            raise InputError(f"{where}: affine last row must be [0, 0, 0, 1], got {affine[3].tolist()}")
        with np.errstate(all="ignore"):
            spacing = np.linalg.norm(affine[:3, :3], axis=0)
        if not np.isfinite(spacing).all() or (spacing <= 0).any():
            raise InputError(
                f"{where}: voxel spacing must be positive and finite, got {tuple(spacing.round(6).tolist())}"
            )
        # The determinant of the unit axis directions: the product of the spacings can underflow to 0 or overflow.
        if abs(np.linalg.det(affine[:3, :3] / spacing)) < 1e-6:
            raise InputError(f"{where}: affine is singular (voxel axes are not independent)")
        with np.errstate(all="ignore"):
            inverse_finite = np.isfinite(np.linalg.inv(affine)).all()
        if not inverse_finite:
            raise InputError(
                f"{where}: affine cannot be inverted in floating point (spacing {tuple(spacing.tolist())}, "
                f"origin {affine[:3, 3].tolist()})"
            )
        self.affine = affine

        n_frames = self.n_frames
        if self.frame_times_ms is not None:
            times = [float(t) for t in self.frame_times_ms]
            if len(times) != n_frames:
                raise InputError(f"{where}: {len(times)} frame times for {n_frames} frames")
            if not np.isfinite(times).all():
                raise InputError(f"{where}: frame times must be finite")
            self.frame_times_ms = times
        if self.frame_indices is not None:
            indices = [int(i) for i in self.frame_indices]
            if len(indices) != n_frames:
                raise InputError(f"{where}: {len(indices)} frame indices for {n_frames} frames")
            if any(i < 0 for i in indices) or len(set(indices)) != len(indices):
                raise InputError(f"{where}: frame indices must be distinct and non-negative, got {indices}")
            self.frame_indices = indices

        labels: dict[int, np.ndarray] = {}
        for frame, label in self.labels.items():
            frame = int(frame)
            if not 0 <= frame < n_frames:
                raise InputError(f"{where}: label for frame {frame} but the view has {n_frames} frames")
            label = np.asarray(label)
            if label.shape != self.spatial_shape:
                raise InputError(
                    f"{where}: label of frame {frame} has shape {label.shape}, expected {self.spatial_shape}"
                )
            if not np.isfinite(label).all() or (label < 0).any() or (label > 255).any() or (label % 1 != 0).any():
                raise InputError(f"{where}: label of frame {frame} must hold integers in [0, 255]")
            labels[frame] = label.astype(np.uint8)
        self.labels = labels

    @property
    def is_sax(self) -> bool:
        return self.name == SAX

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """(X, Y, Z) for sax, (X, Y) for a long-axis view."""
        return tuple(self.image.shape[:-1])

    @property
    def n_frames(self) -> int:
        return int(self.image.shape[-1])

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along (x, y, slice); for a long-axis view the third value is the slice thickness."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))

    def frame(self, index: int) -> np.ndarray:
        """The spatial image of one stored frame: (X, Y, Z) for sax, (X, Y) for a long-axis view."""
        return self.image[..., index]

    def as_4d(self) -> np.ndarray:
        """The image as (X, Y, Z, T) for every view (Z = 1 for a long-axis view), matching `affine`."""
        return self.image if self.is_sax else self.image[:, :, None, :]

    def voxel_to_world(self, ijk: np.ndarray) -> np.ndarray:
        """World (RAS+, mm) coordinates of voxel indices (..., 3); long-axis views use k = 0."""
        ijk = np.asarray(ijk, dtype=np.float64)
        return ijk @ self.affine[:3, :3].T + self.affine[:3, 3]

    def world_to_voxel(self, xyz: np.ndarray) -> np.ndarray:
        """Continuous voxel indices (..., 3) of world (RAS+, mm) points."""
        inverse = np.linalg.inv(self.affine)
        xyz = np.asarray(xyz, dtype=np.float64)
        return xyz @ inverse[:3, :3].T + inverse[:3, 3]


@dataclass
class Study:
    """One cine exam: its views, the ED/ES frames (stored-frame indices) and free-form metadata."""

    views: dict[str, CineView]
    ed_frame: int | None = None
    es_frame: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    def __post_init__(self) -> None:
        where = self.source or "study"
        if not self.views:
            raise InputError(f"{where}: a study needs at least one view")
        for name, view in self.views.items():
            if not isinstance(view, CineView):
                raise InputError(f"{where}: view {name!r} is not a CineView")
            if view.name != name:
                raise InputError(f"{where}: view stored under {name!r} is named {view.name!r}")
        # ED/ES index the short-axis cine; long-axis cines may have been acquired with another number of phases.
        reference = self.views.get(SAX) or next(iter(self.views.values()))
        for label, frame in (("ED", self.ed_frame), ("ES", self.es_frame)):
            if frame is not None and not 0 <= int(frame) < reference.n_frames:
                raise InputError(
                    f"{where}: {label} frame {frame} is outside the {reference.n_frames} frames of {reference.name}"
                )
        self.ed_frame = None if self.ed_frame is None else int(self.ed_frame)
        self.es_frame = None if self.es_frame is None else int(self.es_frame)

    @property
    def sax(self) -> CineView:
        return self.view(SAX)

    def view(self, name: str) -> CineView:
        if name not in self.views:
            available = ", ".join(self.views) or "none"
            raise InputError(f"{self.source or 'study'}: no {name} view (available: {available})")
        return self.views[name]

    @property
    def view_names(self) -> list[str]:
        return [name for name in VIEW_NAMES if name in self.views]


def view_name_for(kind: str, names: Sequence[str] = VIEW_NAMES) -> str:
    """Normalise a user-facing view name ("sax", "lax_4c", "4c", "4ch", ...) to one of `VIEW_NAMES`."""
    key = kind.strip().lower().replace("-", "_")
    aliases = {"sa": SAX, "short_axis": SAX, "2c": "lax_2c", "2ch": "lax_2c", "3c": "lax_3c", "3ch": "lax_3c"}
    aliases.update({"4c": "lax_4c", "4ch": "lax_4c", "lax_2ch": "lax_2c", "lax_3ch": "lax_3c", "lax_4ch": "lax_4c"})
    key = aliases.get(key, key)
    if key not in names:
        raise InputError(f"unknown view {kind!r}; expected one of {', '.join(names)}")
    return key
