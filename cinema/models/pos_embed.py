"""Fixed sin-cos position tables of CineMA, bit-compatible with the released checkpoints.

Each of the n grid axes gets ``d = floor(E / n)`` channels rounded down to even: ``[sin(pos·ω_k)] ++ [cos(pos·ω_k)]``
with ``ω_k = 10000^(-k / (d/2))``; the remainder is zero-padded at the end.

Quirk kept on purpose: the reference builds the grid with ``np.meshgrid``'s default ``'xy'`` indexing, so for the
square in-plane grids of CineMA the first channel chunk encodes the *second* spatial index (column) and the second
chunk the first (row); the third (3-D) chunk is the slice index. Non-square grids are scrambled exactly as the
reference scrambles them. Fine-tuning recomputes these tables instead of loading them, so they must match bit for bit:
frequencies, angles and sin/cos are computed in float64 (what the reference does under numpy >= 2) and rounded to
float32 once at the end, which reproduces the stored tables exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["interpolate_pos_embed", "sincos_pos_embed"]


def _sincos_1d(n_chans: int, positions: np.ndarray) -> np.ndarray:
    half = n_chans // 2
    omega = np.exp(-math.log(10000.0) * np.arange(half, dtype=np.float64) / half)
    angles = np.einsum("m,d->md", positions.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_pos_embed(embed_dim: int, grid_size: Sequence[int]) -> torch.Tensor:
    """Position table of shape (1, prod(grid_size), embed_dim), float32, in token (row-major grid) order."""
    grid_size = tuple(int(s) for s in grid_size)
    n_axes = len(grid_size)
    per_axis = embed_dim // n_axes
    per_axis -= per_axis % 2
    if per_axis == 0:
        raise ValueError(f"embed_dim {embed_dim} is too small for a {n_axes}-D sin-cos table")
    grid = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in grid_size])  # 'xy' indexing, see module doc
    table = np.concatenate([_sincos_1d(per_axis, axis) for axis in grid], axis=1)
    pad = embed_dim - per_axis * n_axes
    if pad:
        table = np.concatenate([table, np.zeros((table.shape[0], pad))], axis=1)
    return torch.from_numpy(np.ascontiguousarray(table, dtype=np.float32)).unsqueeze(0)


def interpolate_pos_embed(
    pos_embed: torch.Tensor, grid_size: Sequence[int], new_grid_size: Sequence[int]
) -> torch.Tensor:
    """Resample a (1, N, E) table to another token grid (bicubic in 2-D, trilinear in 3-D, as the reference does)."""
    grid_size, new_grid_size = tuple(grid_size), tuple(new_grid_size)
    if grid_size == new_grid_size:
        return pos_embed
    if len(grid_size) != len(new_grid_size) or len(grid_size) not in (2, 3):
        raise ValueError(f"cannot interpolate a position table from grid {grid_size} to grid {new_grid_size}")
    mode = "bicubic" if len(grid_size) == 2 else "trilinear"
    emb_dim = pos_embed.shape[-1]
    table = pos_embed.float().reshape(1, *grid_size, emb_dim).movedim(-1, 1)
    table = F.interpolate(table, size=new_grid_size, mode=mode, align_corners=False)
    return table.movedim(1, -1).reshape(1, -1, emb_dim).to(pos_embed.dtype)
