"""Training augmentation on torch tensors, batched: one call transforms a whole (B, C, *spatial) batch.

The recipe is the reference's fine-tuning pipeline (MONAI transforms there, reference §3.3), in the same order:
random gamma contrast, random gaussian noise, min-max rescale, random affine (rotation about the slice normal,
translation, per-axis scale; zero padding; bilinear for images, nearest for label maps, the same matrix for landmark
points) and, for segmentation, one coarse-dropout hole. Every random draw is per sample and comes from the
``generator`` passed in, on the CPU, so a run is reproducible on any device and resumes exactly.

Spatial layout is (B, C, X, Y[, Z]): the in-plane axes first, the slice axis last, as the models take it.

`random_acquisition_shift` adds what differs between scanners and protocols rather than between hearts: coil bias
fields, Rician noise, reconstruction blur, coarser in-plane acquisition, thicker slices (neighbour channels bled into
each other) and stack ends where there are none (partial coverage). They change intensities only, never geometry, so
labels need no update; `cinema.preprocess.shifts` applies the same kinds of shift to whole exams for validation.
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
    "random_acquisition_shift",
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


def _planes(images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """(B, C, X, Y[, Z]) -> (B, C * Z, X, Y): every in-plane image as a channel, for the in-plane filters."""
    if images.ndim == 4:
        return images, tuple(images.shape)
    batch, chans, x, y, z = images.shape
    return images.permute(0, 1, 4, 2, 3).reshape(batch, chans * z, x, y), tuple(images.shape)


def _unplanes(planes: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    if len(shape) == 4:
        return planes
    batch, chans, x, y, z = shape
    return planes.reshape(batch, chans, z, x, y).permute(0, 1, 3, 4, 2)


def _gaussian_kernels(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """(B,) sigmas in voxels -> (B, 2 * radius + 1) normalised 1-D kernels; sigma 0 gives the identity."""
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    safe = sigma.clamp_min(1e-6).reshape(-1, 1)
    kernels = torch.exp(-0.5 * (offsets.reshape(1, -1) / safe) ** 2)
    return kernels / kernels.sum(dim=1, keepdim=True)


def _blur_planes(planes: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of (B, P, X, Y), one sigma per sample, reflecting at the borders."""
    radius = max(1, math.ceil(3.0 * float(sigma.max())))
    batch, n_planes, x, y = planes.shape
    radius = min(radius, x - 1, y - 1)
    kernel = _gaussian_kernels(sigma, radius).to(device=planes.device, dtype=planes.dtype)
    kernel = kernel.repeat_interleave(n_planes, dim=0)  # (B * P, K)
    flat = planes.reshape(1, batch * n_planes, x, y)
    flat = F.conv2d(
        F.pad(flat, (0, 0, radius, radius), mode="reflect"),
        kernel.reshape(-1, 1, 2 * radius + 1, 1),
        groups=batch * n_planes,
    )
    flat = F.conv2d(
        F.pad(flat, (radius, radius, 0, 0), mode="reflect"),
        kernel.reshape(-1, 1, 1, 2 * radius + 1),
        groups=batch * n_planes,
    )
    return flat.reshape(batch, n_planes, x, y)


def random_acquisition_shift(
    images: torch.Tensor,
    *,
    generator: torch.Generator | None,
    prob: float,
    bias_field: float = 0.5,
    rician_std: float = 0.06,
    blur_sigma: float = 1.2,
    low_res: float = 1.8,
    slice_blend: float = 0.35,
    context_drop: float = 0.0,
    context: int = 0,
) -> torch.Tensor:
    """Scanner and protocol shifts per sample, each with probability ``prob`` and a strength uniform in [0, max].

    Order: thicker slices (each 2.5-D channel mixed with its adjacent ones by a weight up to ``slice_blend``; only
    with ``context`` > 0, the channels being ``F x (2 * context + 1)`` slices), a stack end (with probability
    ``context_drop`` the neighbours on one side zeroed, as past the end of a stack), a smooth multiplicative bias
    field (log gain up to ``bias_field``), coarser acquisition (in-plane down-sampling by up to ``low_res``, then
    back), blur (Gaussian sigma up to ``blur_sigma`` voxels) and Rician noise (sigma up to ``rician_std`` of the
    range). Channels that are all zero (past the end of a stack) stay zero: they carry the stack-end cue.

    Args:
        images: (B, C, X, Y[, Z]) float, rescaled to [0, 1] per sample.

    Returns:
        The shifted images, rescaled to [0, 1] per sample (the geometry is unchanged).
    """
    if images.ndim not in (4, 5):
        raise ValueError(f"expected (B, C, X, Y[, Z]) images, got shape {tuple(images.shape)}")
    for name, value in (("prob", prob), ("context_drop", context_drop)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    if min(bias_field, rician_std, blur_sigma, slice_blend) < 0 or low_res < 1 or slice_blend > 1:
        raise ValueError("shift strengths must be >= 0 (slice_blend <= 1) and low_res >= 1")
    batch = images.shape[0]
    # every draw happens whatever the content, so a sample's shifts depend on the generator state only
    draws = {
        name: (torch.rand(batch, generator=generator) < prob, _uniform(batch, 0.0, 1.0, generator))
        for name in ("slice_blend", "bias_field", "low_res", "blur", "rician")
    }
    drop = torch.rand(batch, generator=generator) < context_drop
    drop_side = torch.rand(batch, generator=generator) < 0.5
    coarse = torch.randn(batch, 1, 4, 4, generator=generator, dtype=torch.float64)
    out = images.clone()
    planes_shape = out.shape
    present = out.flatten(2).abs().amax(dim=2) > 0  # (B, C)
    width = 2 * context + 1
    if context > 0 and out.shape[1] % width == 0:
        grouped = out.reshape(batch, -1, width, *out.shape[2:])
        mask = present.reshape(batch, -1, width).to(out.dtype)
        apply, strength = draws["slice_blend"]
        if apply.any():
            # each channel takes the mean of its present adjacent channels: a thicker slice profile
            tail = [1] * (grouped.ndim - 3)
            masked = grouped * mask.reshape(*mask.shape, *tail)
            padded = F.pad(masked.movedim(2, -1), (1, 1)).movedim(-1, 2)
            count = F.pad(mask, (1, 1))
            adjacent = padded[:, :, :-2] + padded[:, :, 2:]
            n_adjacent = (count[:, :, :-2] + count[:, :, 2:]).reshape(*mask.shape, *tail)
            weight = (slice_blend * strength * apply).to(out.dtype).reshape(batch, 1, 1, *tail)
            weight = weight * (n_adjacent > 0)
            mixed = (1 - weight) * grouped + weight * adjacent / n_adjacent.clamp_min(1)
            grouped = torch.where(mask.reshape(*mask.shape, *tail) > 0, mixed, grouped)
        if drop.any():
            side = torch.zeros(batch, width, dtype=torch.bool)
            side[:, :context] = drop_side.reshape(-1, 1)
            side[:, context + 1 :] = ~drop_side.reshape(-1, 1)
            side &= drop.reshape(-1, 1)
            grouped = grouped.masked_fill(side.reshape(batch, 1, width, *([1] * (grouped.ndim - 3))), 0.0)
            present = present & ~side.repeat(1, grouped.shape[1]).reshape(present.shape)
        out = grouped.reshape(planes_shape)
    planes, shape = _planes(out)
    x, y = planes.shape[2:]
    apply, strength = draws["bias_field"]
    if apply.any() and bias_field > 0:
        field = F.interpolate(coarse, size=(x, y), mode="bicubic", align_corners=True)
        field = field / field.flatten(1).abs().amax(dim=1).clamp_min(1e-6).reshape(-1, 1, 1, 1)
        gain = torch.exp(field * (bias_field * strength * apply).reshape(-1, 1, 1, 1))
        planes = planes * gain.to(device=planes.device, dtype=planes.dtype)
    apply, strength = draws["low_res"]
    if apply.any() and low_res > 1:
        planes = planes.clone()
        for i in apply.nonzero().flatten().tolist():
            factor = 1.0 + (low_res - 1.0) * float(strength[i])
            small = (max(2, round(x / factor)), max(2, round(y / factor)))
            down = F.interpolate(planes[i : i + 1], size=small, mode="area")
            planes[i] = F.interpolate(down, size=(x, y), mode="bilinear", align_corners=False)[0]
    apply, strength = draws["blur"]
    if apply.any() and blur_sigma > 0:
        planes = _blur_planes(planes, blur_sigma * strength * apply)
    out = scale_intensity(_unplanes(planes, shape))
    apply, strength = draws["rician"]
    if apply.any() and rician_std > 0:
        index = apply.nonzero().flatten()
        sigma = _per_sample(rician_std * strength[index], out[index])
        real = torch.randn(out[index].shape, generator=generator).to(device=out.device, dtype=out.dtype) * sigma
        imag = torch.randn(out[index].shape, generator=generator).to(device=out.device, dtype=out.dtype) * sigma
        out[index] = torch.sqrt((out[index] + real) ** 2 + imag**2)
        out = scale_intensity(out)
    keep = present.reshape(*present.shape, *([1] * (out.ndim - 2))).to(out.dtype)
    return out * keep


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
