"""Acquisition shifts applied to whole exams, for validating segmentation on "other scanners" we do not hold.

Each shift turns a `Study` (its SAX view and labels) into the exam another scanner, protocol or reader might have
produced of the same heart: intensity shifts (coil bias field, gamma contrast, Rician noise, blur) change the image
only; grid shifts (in-plane pixel size, thicker slices, slice gaps, in-plane rotation and flips of the stored grid,
partial coverage) move the image and its labels together and rewrite the affine so that the world geometry stays
true: volumes computed from the shifted labels with the shifted affine are those of the same heart.

ACDC stacks are already 5-10 mm thick with 5-10 mm spacing, and thinner slices cannot be made from them; the slice
shifts make them thicker (partial volume with the adjacent slices) or sparser (every other slice kept, a gap).

`random_shift` draws one shift's parameters from its realistic range with a NumPy generator, so a seed gives the same
shifted exam on any machine; `SHIFTS` lists them in the order `benchmarks/segment.py --shift` reports them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
from scipy import ndimage

from cinema.io.study import SAX, CineView, Study
from cinema.preprocess.model_space import model_space_transform, resample_to_model

__all__ = [
    "SHIFTS",
    "bias_field",
    "blur",
    "flip_grid",
    "gamma_contrast",
    "in_plane_resolution",
    "partial_coverage",
    "random_shift",
    "rician_noise",
    "rotate_grid",
    "slice_gaps",
    "thick_slices",
]


def _with_view(study: Study, view: CineView) -> Study:
    return dataclasses.replace(study, views={**study.views, SAX: view})


def _with_image(study: Study, image: np.ndarray) -> Study:
    return _with_view(study, dataclasses.replace(study.sax, image=image.astype(np.float32, copy=False)))


def _robust_max(image: np.ndarray) -> float:
    high = float(np.percentile(image, 99.5))
    return high if high > 0 else max(float(image.max()), 1.0)


# ---- intensity shifts: the image changes, the grid and labels do not -------------------------------------------


def bias_field(study: Study, strength: float, rng: np.random.Generator) -> Study:
    """Multiply by a smooth field exp(strength * p(x, y, z)), p a random quadratic scaled to max |p| = 1 over the
    grid: the receive-coil sensitivity that differs between coils and vendors. The same field for every frame."""
    shape = study.sax.spatial_shape
    axes = np.meshgrid(*[np.linspace(-1.0, 1.0, n) for n in shape], indexing="ij")
    x, y, z = axes
    terms = [x, y, z, x * x, y * y, x * y, x * z, y * z]
    field = sum(c * t for c, t in zip(rng.normal(size=len(terms)), terms, strict=True))
    field = field / max(float(np.abs(field).max()), 1e-6)
    gain = np.exp(strength * field)[..., None]
    return _with_image(study, study.sax.image * gain)


def gamma_contrast(study: Study, gamma: float) -> Study:
    """(x / hi) ** gamma * hi with hi the exam's 99.5th percentile (values above it keep their ratio): another
    sequence's contrast between blood, myocardium and fat."""
    image = np.clip(study.sax.image, 0, None)
    high = _robust_max(image)
    return _with_image(study, (image / high) ** gamma * high)


def rician_noise(study: Study, fraction: float, rng: np.random.Generator) -> Study:
    """Magnitude of the image plus complex Gaussian noise of sigma ``fraction`` x the 99.5th percentile: a
    lower-SNR acquisition (lower field, faster sequence, smaller coil)."""
    image = study.sax.image
    sigma = fraction * _robust_max(image)
    real = rng.normal(scale=sigma, size=image.shape)
    imag = rng.normal(scale=sigma, size=image.shape)
    return _with_image(study, np.sqrt((image + real) ** 2 + imag**2))


def blur(study: Study, sigma_mm: float) -> Study:
    """In-plane Gaussian blur of ``sigma_mm`` (each slice and frame on its own): a smoother reconstruction filter."""
    sx, sy, _ = study.sax.spacing
    sigma = (sigma_mm / sx, sigma_mm / sy, 0.0, 0.0)
    return _with_image(study, ndimage.gaussian_filter(study.sax.image.astype(np.float64), sigma, mode="nearest"))


# ---- grid shifts: image and labels move together, the affine follows ------------------------------------------


def in_plane_resolution(study: Study, spacing_mm: float) -> Study:
    """The exam stored at another in-plane pixel size over the same field of view, with the project's model-space
    resampling (images linear, labels nearest neighbour, voxel corners kept). Going coarser, the image is first
    blurred to the coarser pixel's resolution (Gaussian of FWHM sqrt(new^2 - old^2)), as an acquisition at that
    resolution would be, rather than point-sampled."""
    view = study.sax
    sx, sy, _ = view.spacing
    image = view.image
    extra = [np.sqrt(max(spacing_mm**2 - s**2, 0.0)) / 2.355 / s for s in (sx, sy)]
    if max(extra) > 0:
        image = ndimage.gaussian_filter(image.astype(np.float64), (*extra, 0.0, 0.0), mode="nearest")
    grid = {"z_spacing": "native", "min_slices": None, "in_plane_spacing": (spacing_mm, spacing_mm)}
    whole = model_space_transform(view.spatial_shape, view.affine, "sax", **grid).resampled_shape[:2]
    transform = model_space_transform(view.spatial_shape, view.affine, "sax", in_plane_shape=whole, **grid)
    resampled = dataclasses.replace(
        view,
        image=resample_to_model(image.astype(np.float32), transform, "image"),
        affine=transform.model_affine,
        labels={f: resample_to_model(lab, transform, "label") for f, lab in view.labels.items()},
    )
    return _with_view(study, resampled)


def thick_slices(study: Study, weight: float) -> Study:
    """Each slice mixed with its two neighbours, (1 - w) z + w / 2 (z - 1 + z + 1) (the end slices with themselves):
    a wider slice profile, i.e. thicker slices with more partial volume. Labels stay those of the slice centre."""
    image = study.sax.image.astype(np.float64)
    padded = np.concatenate([image[:, :, :1], image, image[:, :, -1:]], axis=2)
    mixed = (1 - weight) * image + 0.5 * weight * (padded[:, :, :-2] + padded[:, :, 2:])
    return _with_image(study, mixed)


def _subset_slices(study: Study, start: int, stop: int, step: int) -> Study:
    """Slices start, start + step, ... < stop, with the affine's slice column times ``step`` and its origin at the
    first kept slice: every kept voxel keeps its world position."""
    view = study.sax
    keep = slice(start, stop, step)
    affine = view.affine.copy()
    affine[:3, 3] = view.affine[:3, :3] @ np.array([0.0, 0.0, start]) + view.affine[:3, 3]
    affine[:3, 2] = view.affine[:3, 2] * step
    subset = dataclasses.replace(
        view,
        image=np.ascontiguousarray(view.image[:, :, keep]),
        affine=affine,
        labels={f: np.ascontiguousarray(lab[:, :, keep]) for f, lab in view.labels.items()},
    )
    return _with_view(study, subset)


def slice_gaps(study: Study, step: int = 2, start: int = 0) -> Study:
    """Every ``step``-th slice from ``start``: the same coverage with gaps between the slices (a protocol with fewer,
    farther slices)."""
    if step < 1 or not 0 <= start < step:
        raise ValueError(f"need step >= 1 and 0 <= start < step, got step {step}, start {start}")
    return _subset_slices(study, start, study.sax.spatial_shape[2], step)


def partial_coverage(study: Study, drop_start: int, drop_end: int) -> Study:
    """The stack without its first ``drop_start`` and last ``drop_end`` slices: a base or apex not acquired."""
    depth = study.sax.spatial_shape[2]
    if drop_start < 0 or drop_end < 0 or drop_start + drop_end >= depth:
        raise ValueError(f"cannot drop {drop_start} + {drop_end} of {depth} slices")
    return _subset_slices(study, drop_start, depth - drop_end, 1)


def rotate_grid(study: Study, angle_deg: float) -> Study:
    """The same slices stored on an in-plane grid rotated by ``angle_deg`` about the image centre, large enough to
    hold the whole rotated field of view (another vendor's or reader's phase-encoding direction and field of view).
    Images linear, labels nearest neighbour; the affine maps the new grid to the same world points."""
    view = study.sax
    nx, ny = view.spatial_shape[:2]
    theta = np.deg2rad(angle_deg)
    cos, sin = np.cos(theta), np.sin(theta)
    rotation = np.array([[cos, -sin], [sin, cos]])
    corners = np.array([[0, 0], [nx - 1, 0], [0, ny - 1], [nx - 1, ny - 1]], dtype=np.float64)
    centre_in = np.array([(nx - 1) / 2.0, (ny - 1) / 2.0])
    extent = np.abs((corners - centre_in) @ rotation).max(axis=0)
    out_shape = tuple(int(np.ceil(2 * e + 1 - 1e-6)) for e in extent)
    centre_out = np.array([(n - 1) / 2.0 for n in out_shape])
    # new voxel o -> old voxel i = R (o - c_out) + c_in, in-plane only
    to_old = np.eye(4)
    to_old[:2, :2] = rotation
    to_old[:2, 3] = centre_in - rotation @ centre_out

    def resample(array: np.ndarray, order: int) -> np.ndarray:
        matrix = np.eye(array.ndim)
        matrix[:2, :2] = rotation
        offset = np.zeros(array.ndim)
        offset[:2] = to_old[:2, 3]
        shape = (*out_shape, *array.shape[2:])
        out = ndimage.affine_transform(array, matrix, offset, output_shape=shape, order=order, cval=0.0)
        return out.astype(array.dtype, copy=False)

    rotated = dataclasses.replace(
        view,
        image=resample(view.image.astype(np.float32), 1),
        affine=view.affine @ to_old,
        labels={f: resample(lab, 0) for f, lab in view.labels.items()},
    )
    return _with_view(study, rotated)


def flip_grid(study: Study, axis: int) -> Study:
    """The same slices stored with in-plane ``axis`` (0: x, 1: y) running the other way; the affine is adjusted, so
    the world geometry is unchanged and only the handedness of the stored grid differs."""
    if axis not in (0, 1):
        raise ValueError(f"in-plane axis must be 0 or 1, got {axis}")
    view = study.sax
    flip = np.eye(4)
    flip[axis, axis], flip[axis, 3] = -1.0, view.spatial_shape[axis] - 1.0
    flipped = dataclasses.replace(
        view,
        image=np.ascontiguousarray(np.flip(view.image, axis)),
        affine=view.affine @ flip,
        labels={f: np.ascontiguousarray(np.flip(lab, axis)) for f, lab in view.labels.items()},
    )
    return _with_view(study, flipped)


# ---- the validation set of shifts ------------------------------------------------------------------------------


def _gamma_draw(rng: np.random.Generator) -> float:
    # darker or brighter mid-tones, never close to the identity
    return float(rng.uniform(0.5, 0.77)) if rng.random() < 0.5 else float(rng.uniform(1.3, 2.0))


def _partial_draw(study: Study, rng: np.random.Generator) -> Study:
    drop_start = int(rng.integers(0, 3))
    drop_end = int(rng.integers(0 if drop_start else 1, 3))
    return partial_coverage(study, drop_start, drop_end)


#: name -> (what the range is, draw and apply)
SHIFTS: dict[str, tuple[str, Callable[[Study, np.random.Generator], Study]]] = {
    "bias_field": ("log gain up to 0.3-0.6", lambda s, r: bias_field(s, float(r.uniform(0.3, 0.6)), r)),
    "gamma": ("gamma 0.5-0.77 or 1.3-2.0", lambda s, r: gamma_contrast(s, _gamma_draw(r))),
    "rician_noise": ("sigma 3-8 % of the 99.5th percentile", lambda s, r: rician_noise(s, r.uniform(0.03, 0.08), r)),
    "blur": ("in-plane sigma 0.8-1.5 mm", lambda s, r: blur(s, float(r.uniform(0.8, 1.5)))),
    "in_plane_0.7mm": ("0.7 mm pixels", lambda s, r: in_plane_resolution(s, 0.7)),
    "in_plane_2.5mm": ("2.5 mm pixels (acquired at that resolution)", lambda s, r: in_plane_resolution(s, 2.5)),
    "thick_slices": ("neighbour weight 0.3-0.5", lambda s, r: thick_slices(s, float(r.uniform(0.3, 0.5)))),
    "slice_gaps": ("every other slice", lambda s, r: slice_gaps(s, 2, int(r.integers(0, 2)))),
    "rotation": ("stored grid rotated 0-360 deg", lambda s, r: rotate_grid(s, float(r.uniform(0.0, 360.0)))),
    "flip": ("stored grid flipped in x or y", lambda s, r: flip_grid(s, int(r.integers(0, 2)))),
    "partial_coverage": ("0-2 slices off each end, >= 1 in all", _partial_draw),
}


def random_shift(study: Study, name: str, rng: np.random.Generator) -> Study:
    """``study`` through the shift ``name`` of `SHIFTS`, its parameters drawn from ``rng``."""
    if name not in SHIFTS:
        raise ValueError(f"unknown shift {name!r}; expected one of {', '.join(SHIFTS)}")
    return SHIFTS[name][1](study, rng)
