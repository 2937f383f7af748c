"""Running a model on inputs larger than its patch, and reading its outputs back: shared by training (validation in
`cinema.tasks`), evaluation (`cinema.evaluate`) and whole-exam analysis (`cinema.analysis`).

- `sliding_window` / `average_windows`: windows over the one view larger than its patch, dense outputs averaged;
- `global_forward` / `windowed_outputs`: pooled-head models (ConvViT, ResNet), outputs averaged over windows;
- `soft_argmax`: landmark heatmaps to sub-pixel points;
- `to_device`: a (nested) batch dict onto the model's device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move every tensor of a (nested) batch to ``device``."""

    def move(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.to(device, non_blocking=True)
        if isinstance(value, dict):
            return {k: move(v) for k, v in value.items()}
        return value

    return {k: move(v) for k, v in batch.items()}


def window_starts(size: int, patch: int, overlap: float = 0.5) -> list[int]:
    """Window origins covering [0, size) with windows of ``patch``, the last one flush with the end."""
    if size <= patch:
        return [0]
    step = max(1, int(patch * (1.0 - overlap)))
    starts = list(range(0, size - patch + 1, step))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def sliding_window(
    images: dict[str, torch.Tensor],
    patch_size: dict[str, Sequence[int]],
    predict: Callable[[dict[str, torch.Tensor]], Any],
    overlap: float = 0.5,
) -> list[tuple[dict[str, tuple[slice, ...]], Any]]:
    """Run ``predict`` on every window of the (single) view larger than its patch; other views are passed whole.

    Images must already be at least the patch size on every axis (the datasets pad at the end). Returns
    ``[(window slices per view, prediction)]`` for the caller to combine (probability average, mean, ...).
    """
    larger = [v for v, x in images.items() if tuple(x.shape[2:]) != tuple(patch_size[v])]
    for view in larger:
        if any(s < p for s, p in zip(images[view].shape[2:], patch_size[view], strict=True)):
            raise ValueError(f"{view}: image {tuple(images[view].shape[2:])} is smaller than patch {patch_size[view]}")
    if not larger:
        whole = {v: tuple(slice(None) for _ in x.shape[2:]) for v, x in images.items()}
        return [(whole, predict(images))]
    if len(larger) > 1:
        raise ValueError(f"sliding-window inference windows one view at a time, got several larger views: {larger}")
    view = larger[0]
    image = images[view]
    grids = [window_starts(s, p, overlap) for s, p in zip(image.shape[2:], patch_size[view], strict=True)]
    results = []
    for starts in _product(grids):
        slices = tuple(slice(s, s + p) for s, p in zip(starts, patch_size[view], strict=True))
        window = {v: (x[(slice(None), slice(None), *slices)] if v == view else x) for v, x in images.items()}
        where = {v: (slices if v == view else tuple(slice(None) for _ in x.shape[2:])) for v, x in images.items()}
        results.append((where, predict(window)))
    return results


def average_windows(
    images: dict[str, torch.Tensor],
    patch: dict[str, tuple[int, ...]],
    predict: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]],
) -> dict[str, torch.Tensor]:
    """Average dense per-window predictions back onto the full images."""
    results = sliding_window(images, patch, predict)
    if len(results) == 1:
        return results[0][1]
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, torch.Tensor] = {}
    for where, probs in results:
        for view, p in probs.items():
            if view not in sums:
                full = (p.shape[0], p.shape[1], *images[view].shape[2:])
                sums[view] = p.new_zeros(full)
                counts[view] = p.new_zeros((1, 1, *images[view].shape[2:]))
            index = (slice(None), slice(None), *where[view])
            sums[view][index] += p
            counts[view][index] += 1
    return {view: sums[view] / counts[view] for view in sums}


def _product(grids: list[list[int]]) -> list[tuple[int, ...]]:
    combos: list[tuple[int, ...]] = [()]
    for grid in grids:
        combos = [(*c, g) for c in combos for g in grid]
    return combos


def global_forward(model: nn.Module, images: dict[str, torch.Tensor], reduce: str) -> torch.Tensor:
    """(B, out) outputs of a pooled-head model: ConvViT (with its token pooling) or ResNet."""
    if hasattr(model, "feature_forward"):
        return model(images, reduce=reduce)
    return model(images)


def windowed_outputs(
    model: nn.Module,
    images: dict[str, torch.Tensor],
    patch: dict[str, tuple[int, ...]],
    reduce: str,
    autocast: Callable[[], Any],
    transform: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
) -> torch.Tensor:
    """Mean over sliding windows of ``transform(outputs)`` (e.g. softmax for classification)."""

    def predict(window: dict[str, torch.Tensor]) -> torch.Tensor:
        with autocast():
            out = global_forward(model, window, reduce)
        return transform(out.float())

    results = sliding_window(images, patch, predict)
    return torch.stack([out for _, out in results]).mean(dim=0)


def soft_argmax(probs: torch.Tensor, temperature: float = 1000.0) -> torch.Tensor:
    """(B, K, X, Y) heatmaps -> (B, K, 2) expected (x, y) under softmax(probs * temperature) over pixels."""
    batch, k, nx, ny = probs.shape
    weights = torch.softmax(probs.reshape(batch, k, -1).float() * temperature, dim=-1).reshape(batch, k, nx, ny)
    xs = torch.arange(nx, dtype=weights.dtype, device=weights.device)
    ys = torch.arange(ny, dtype=weights.dtype, device=weights.device)
    return torch.stack([(weights.sum(3) * xs).sum(2), (weights.sum(2) * ys).sum(2)], dim=-1)
