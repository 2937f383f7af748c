"""Training augmentation on torch tensors, batched: one call transforms a whole (B, C, *spatial) batch.

The recipe is the reference's fine-tuning pipeline (MONAI transforms there, reference §3.3), in the same order:
random gamma contrast, random gaussian noise, min-max rescale, random affine (rotation about the slice normal,
translation, per-axis scale; zero padding; bilinear for images, nearest for label maps, the same matrix for landmark
points) and, for segmentation, one coarse-dropout hole. Every random draw is per sample and comes from the
``generator`` passed in, on the CPU, so a run is reproducible on any device and resumes exactly.

Spatial layout is (B, C, X, Y[, Z]): the in-plane axes first, the slice axis last, as the models take it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "augment_view",
    "crop_or_pad",
    "random_affine",
    "random_coarse_dropout",
    "random_gamma",
    "random_gaussian_noise",
    "render_heatmaps",
    "sample_affine",
    "scale_intensity",
]


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) broadcastable against ``like``, on its device and dtype."""
    return values.to(device=like.device, dtype=like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def scale_intensity(images: torch.Tensor) -> torch.Tensor:
    """Min-max rescale each sample to [0, 1], jointly over its channels (a constant sample becomes 0)."""
    flat = images.flatten(1)
    low = flat.amin(dim=1)
    span = flat.amax(dim=1) - low
    span = torch.where(span > 0, span, torch.ones_like(span))
    return (images - low.reshape(-1, *([1] * (images.ndim - 1)))) / span.reshape(-1, *([1] * (images.ndim - 1)))


def random_gamma(
    images: torch.Tensor, prob: float, gamma_range: Sequence[float], generator: torch.Generator | None = None
) -> torch.Tensor:
    """Gamma contrast per sample: ((x - min) / range) ** gamma * range + min, gamma ~ U(gamma_range)."""
    batch = images.shape[0]
    apply = torch.rand(batch, generator=generator) < prob
    gamma = _uniform(batch, gamma_range[0], gamma_range[1], generator)
    if not apply.any():
        return images
    flat = images.flatten(1)
    low = _per_sample(flat.amin(dim=1), images)
    span = _per_sample(flat.amax(dim=1), images) - low
    adjusted = ((images - low) / (span + 1e-7)).clamp_min(0) ** _per_sample(gamma, images) * span + low
    return torch.where(_per_sample(apply, images).bool(), adjusted, images)


def random_gaussian_noise(
    images: torch.Tensor, prob: float, std: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Add N(0, s^2) noise with s ~ U(0, std) per sample (MONAI's ``sample_std`` behaviour)."""
    batch = images.shape[0]
    apply = torch.rand(batch, generator=generator) < prob
    sigma = _uniform(batch, 0.0, std, generator)
    if not apply.any() or std <= 0:
        return images
    index = apply.nonzero().flatten()
    noise = torch.randn((len(index), *images.shape[1:]), generator=generator)
    noise = noise.to(device=images.device, dtype=images.dtype) * _per_sample(sigma[index], noise)
    out = images.clone()
    out[index.to(images.device)] += noise
    return out


def sample_affine(
    batch_size: int,
    n_dims: int,
    prob: float,
    rotate_deg: float,
    translate: Sequence[float],
    scale_range: float,
    generator: torch.Generator | None = None,
    flip_prob: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw per-sample affine maps in voxel units about the image centre.

    An output voxel at centred index c samples the input at ``matrix @ c + offset``. Rotation is about the slice
    normal (the first two axes), uniform in [-rotate_deg, rotate_deg]; translation uniform in [-t, t] voxels per
    axis; scale 1 + U(-scale_range, scale_range) per axis. Samples not drawn for augmentation get the identity.
    ``flip_prob``: each sample, independently of ``prob``, is also mirrored along its first axis with this
    probability (with rotations over the full circle one axis gives every in-plane mirror image). It is drawn only
    when positive, so runs without it keep their random stream.

    Returns:
        apply: (B,) bool, matrix: (B, n, n) float64, offset: (B, n) float64.
    """
    if len(translate) != n_dims:
        raise ValueError(f"translate needs {n_dims} values, got {list(translate)}")
    apply = torch.rand(batch_size, generator=generator) < prob
    angle = _uniform(batch_size, -rotate_deg, rotate_deg, generator) * (math.pi / 180.0)
    shift = torch.stack([_uniform(batch_size, -t, t, generator) for t in translate], dim=1)
    scale = torch.stack([1.0 + _uniform(batch_size, -scale_range, scale_range, generator) for _ in range(n_dims)], 1)
    rotation = torch.eye(n_dims, dtype=torch.float64).repeat(batch_size, 1, 1)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotation[:, 0, 0], rotation[:, 0, 1], rotation[:, 1, 0], rotation[:, 1, 1] = cos, -sin, sin, cos
    identity = torch.eye(n_dims, dtype=torch.float64).expand(batch_size, n_dims, n_dims)
    matrix = torch.where(apply.reshape(-1, 1, 1), rotation @ torch.diag_embed(scale), identity)
    offset = torch.where(apply.reshape(-1, 1), shift, torch.zeros_like(shift))
    if flip_prob > 0:
        flipped = torch.rand(batch_size, generator=generator) < flip_prob
        mirror = torch.ones(batch_size, n_dims, dtype=torch.float64)
        mirror[flipped, 0] = -1.0
        matrix = matrix @ torch.diag_embed(mirror)
        apply = apply | flipped
    return apply, matrix, offset


def _grid_theta(matrix: torch.Tensor, offset: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
    """Voxel-unit maps -> ``affine_grid`` thetas (normalised coordinates, align_corners=False, axes reversed)."""
    half = torch.tensor([s / 2.0 for s in spatial_shape], dtype=torch.float64)
    # centred voxel c = half * n for normalised n, so n_in = (M * half / half^T) n_out + offset / half.
    normalised = matrix * half.reshape(1, 1, -1) / half.reshape(1, -1, 1)
    shift = offset / half
    # affine_grid orders coordinates from the last tensor axis to the first.
    normalised = normalised.flip(1).flip(2)
    shift = shift.flip(1)
    return torch.cat([normalised, shift.unsqueeze(-1)], dim=2)


def random_affine(
    images: torch.Tensor,
    apply: torch.Tensor,
    matrix: torch.Tensor,
    offset: torch.Tensor,
    mode: str = "bilinear",
) -> torch.Tensor:
    """Resample the samples flagged in ``apply`` with the maps from `sample_affine` (zero padding)."""
    if not apply.any():
        return images
    index = apply.nonzero().flatten()
    spatial = images.shape[2:]
    theta = _grid_theta(matrix[index], offset[index], spatial).to(device=images.device, dtype=torch.float32)
    subset = images[index.to(images.device)]
    source_dtype = subset.dtype
    subset = subset.float()
    grid = F.affine_grid(theta, list(subset.shape), align_corners=False)
    warped = F.grid_sample(subset, grid, mode=mode, padding_mode="zeros", align_corners=False)
    out = images.clone()
    out[index.to(images.device)] = warped.to(source_dtype)
    return out


def transform_points(
    points: torch.Tensor, matrix: torch.Tensor, offset: torch.Tensor, spatial_shape: Sequence[int]
) -> torch.Tensor:
    """Move points (B, K, n) in voxel indices the way `random_affine` moves the image content."""
    centre = torch.tensor([(s - 1) / 2.0 for s in spatial_shape], dtype=torch.float64)
    centred = points.double() - centre
    # input = M @ output + offset  =>  output = M^-1 (input - offset)
    moved = torch.linalg.solve(matrix.unsqueeze(1), (centred - offset.unsqueeze(1)).unsqueeze(-1)).squeeze(-1)
    return (moved + centre).to(points.dtype)


def random_coarse_dropout(
    images: torch.Tensor, prob: float, hole_size: Sequence[int], generator: torch.Generator | None = None
) -> torch.Tensor:
    """Zero one box of ``hole_size`` voxels (clipped to the image) at a random place, per sample."""
    batch, spatial = images.shape[0], images.shape[2:]
    if len(hole_size) != len(spatial):
        raise ValueError(f"hole size needs {len(spatial)} values, got {list(hole_size)}")
    apply = torch.rand(batch, generator=generator) < prob
    sizes = [min(int(h), int(s)) for h, s in zip(hole_size, spatial, strict=True)]
    starts = [torch.randint(0, s - h + 1, (batch,), generator=generator) for h, s in zip(sizes, spatial, strict=True)]
    if not apply.any():
        return images
    hole = torch.ones((batch, 1, *([1] * len(spatial))), dtype=torch.bool)
    for axis, (start, size, extent) in enumerate(zip(starts, sizes, spatial, strict=True)):
        position = torch.arange(extent).reshape(1, -1)
        inside = (position >= start.reshape(-1, 1)) & (position < (start + size).reshape(-1, 1))
        shape = [batch, 1] + [1] * len(spatial)
        shape[2 + axis] = extent
        hole = hole & inside.reshape(shape)
    hole = hole & apply.reshape(-1, *([1] * (images.ndim - 1)))
    return images.masked_fill(hole.to(images.device), 0)


def render_heatmaps(points: torch.Tensor, spatial_shape: Sequence[int], sigma: float) -> torch.Tensor:
    """Unnormalised Gaussians with peak 1 at each point: (B, K, 2) voxel indices -> (B, K, X, Y)."""
    grids = [torch.arange(s, dtype=torch.float32, device=points.device) for s in spatial_shape]
    x = points[..., 0].float().reshape(*points.shape[:2], 1, 1)
    y = points[..., 1].float().reshape(*points.shape[:2], 1, 1)
    dist2 = (grids[0].reshape(1, 1, -1, 1) - x) ** 2 + (grids[1].reshape(1, 1, 1, -1) - y) ** 2
    return torch.exp(-dist2 / (2.0 * sigma**2))


def augment_view(
    image: torch.Tensor,
    *,
    generator: torch.Generator | None,
    prob: float,
    gamma: Sequence[float],
    noise_std: float,
    scale_range: float,
    rotate_deg: float,
    translate: Sequence[float],
    dropout_size: Sequence[int] | None = None,
    flip_prob: float = 0.0,
    label: torch.Tensor | None = None,
    label_mode: str = "nearest",
    points: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The full training pipeline for one view of a batch.

    Args:
        image: (B, C, *spatial) float.
        label: optional (B, L, *spatial) map moved with the image (``label_mode`` nearest for class maps, bilinear
            for heatmaps); never intensity-augmented.
        points: optional (B, K, n) voxel coordinates moved with the image.
        dropout_size: hole size for coarse dropout, None to skip it.
        flip_prob: probability of an in-plane mirror image (see `sample_affine`).

    Returns:
        (image, label, points), augmented.
    """
    spatial = image.shape[2:]
    image = random_gamma(image, prob, gamma, generator)
    image = random_gaussian_noise(image, prob, noise_std, generator)
    image = scale_intensity(image)
    apply, matrix, offset = sample_affine(
        image.shape[0], len(spatial), prob, rotate_deg, translate, scale_range, generator, flip_prob
    )
    # bilinear weights sum to 1 only up to rounding: keep the documented [0, 1] range exact
    image = random_affine(image, apply, matrix, offset, mode="bilinear").clamp_(0.0, 1.0)
    if label is not None:
        label = random_affine(label, apply, matrix, offset, mode=label_mode)
    if points is not None:
        points = transform_points(points, matrix, offset, spatial[: points.shape[-1]])
    if dropout_size is not None:
        image = random_coarse_dropout(image, prob, dropout_size, generator)
    return image, label, points


def crop_or_pad(
    array: np.ndarray,
    size: Sequence[int],
    rng: np.random.Generator | None = None,
    starts: Sequence[int] | None = None,
) -> tuple[np.ndarray, tuple[int, ...]]:
    """Crop the trailing ``len(size)`` axes to ``size`` and zero-pad them at the end where they are smaller, as the
    reference's RandSpatialCrop + SpatialPad(method="end").

    The crop starts at ``starts`` when given (to cut a label exactly like its image), else at a random place drawn
    from ``rng``, else at the start corner.

    Returns:
        (array, start offsets of the crop).
    """
    lead = array.ndim - len(size)
    if starts is None:
        starts = [
            int(rng.integers(0, extent - target + 1)) if (rng is not None and extent > target) else 0
            for extent, target in zip(array.shape[lead:], size, strict=True)
        ]
    slices: list[slice] = [slice(None)] * lead
    slices += [slice(start, start + target) for start, target in zip(starts, size, strict=True)]
    cropped = array[tuple(slices)]
    pad = [(0, 0)] * lead + [(0, max(0, t - e)) for e, t in zip(cropped.shape[lead:], size, strict=True)]
    if any(p[1] for p in pad):
        cropped = np.pad(cropped, pad)
    return np.ascontiguousarray(cropped), tuple(int(s) for s in starts)
