"""Vision-transformer parts of CineMA: patchify, patch embedding, attention blocks, encoder and cross-attention decoder.

Layout and names follow the released checkpoints: separate ``attn.q`` (E→E) and ``attn.kv`` (E→2E) projections, timm
style ``mlp.fc1``/``mlp.fc2``, pre-norm blocks with LayerNorm eps 1e-5, no LayerScale. Attention runs through
``F.scaled_dot_product_attention``; optional gradient checkpointing is per block (``grad_ckpt``), never per layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cinema.models.conv import DropPath, maybe_checkpoint

__all__ = [
    "VIT_SIZES",
    "Attention",
    "Block",
    "Mlp",
    "PatchEmbed",
    "ViTDecoder",
    "ViTEncoder",
    "init_weights",
    "patchify",
    "unpatchify",
    "vit_size",
]

# Encoder dim/depth/heads and decoder dim/depth/heads per size. tiny (the reference's) exists for tests only; small is
# this project's (not in the reference): a transformer a 2-core CPU can train in minutes (docs/model-card.md).
VIT_SIZES: dict[str, dict[str, int]] = {
    "tiny": {"enc_dim": 16, "enc_depth": 1, "enc_heads": 2, "dec_dim": 16, "dec_depth": 1, "dec_heads": 2},
    "small": {"enc_dim": 192, "enc_depth": 6, "enc_heads": 3, "dec_dim": 128, "dec_depth": 2, "dec_heads": 4},
    "base": {"enc_dim": 768, "enc_depth": 12, "enc_heads": 12, "dec_dim": 512, "dec_depth": 8, "dec_heads": 16},
    "large": {"enc_dim": 1024, "enc_depth": 24, "enc_heads": 16, "dec_dim": 512, "dec_depth": 8, "dec_heads": 16},
    "huge": {"enc_dim": 1280, "enc_depth": 32, "enc_heads": 16, "dec_dim": 512, "dec_depth": 8, "dec_heads": 16},
}


def vit_size(size: str) -> dict[str, int]:
    """Transformer dimensions of a named size (tiny, small, base, large, huge)."""
    if size not in VIT_SIZES:
        raise ValueError(f"unknown model size {size!r}; expected one of {list(VIT_SIZES)}")
    return dict(VIT_SIZES[size])


def init_weights(module: nn.Module) -> None:
    """Reference initialisation: xavier-uniform Linear with zero bias, LayerNorm weight 1 and bias 0."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        if module.weight is not None:
            nn.init.ones_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def patchify(image: torch.Tensor, patch_size: Sequence[int]) -> torch.Tensor:
    """(B, C, *spatial) → (B, n_patches, prod(patch_size)·C).

    Patches are in row-major grid order; inside a patch the vector is ordered (p, q[, r], c), channel fastest.
    """
    batch, chans, *spatial = image.shape
    patch_size = tuple(int(p) for p in patch_size)
    if len(spatial) != len(patch_size):
        raise ValueError(f"image has {len(spatial)} spatial dims but patch size {patch_size} has {len(patch_size)}")
    if any(s % p for s, p in zip(spatial, patch_size, strict=True)):
        raise ValueError(f"spatial size {tuple(spatial)} is not divisible by the patch size {patch_size}")
    grid = [s // p for s, p in zip(spatial, patch_size, strict=True)]
    n = len(patch_size)
    x = image.reshape(batch, chans, *[v for g, p in zip(grid, patch_size, strict=True) for v in (g, p)])
    # (B, C, g1, p1, g2, p2, ...) → (B, g1, g2, ..., p1, p2, ..., C)
    order = [0, *range(2, 2 + 2 * n, 2), *range(3, 3 + 2 * n, 2), 1]
    return x.permute(order).reshape(batch, math.prod(grid), math.prod(patch_size) * chans)


def unpatchify(x: torch.Tensor, patch_size: Sequence[int], grid_size: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`patchify`: (B, prod(grid), prod(patch)·C) → (B, C, *(grid·patch))."""
    patch_size, grid_size = tuple(int(p) for p in patch_size), tuple(int(g) for g in grid_size)
    batch, n_patches, n_values = x.shape
    if len(patch_size) != len(grid_size):
        raise ValueError(f"patch size {patch_size} and grid size {grid_size} have different dimensions")
    if n_patches != math.prod(grid_size):
        raise ValueError(f"{n_patches} patches do not fill a grid of size {grid_size}")
    if n_values % math.prod(patch_size):
        raise ValueError(f"{n_values} values per patch is not a multiple of the patch volume {patch_size}")
    n = len(patch_size)
    chans = n_values // math.prod(patch_size)
    x = x.reshape(batch, *grid_size, *patch_size, chans)
    # (B, g1.., p1.., C) → (B, C, g1, p1, g2, p2, ...)
    order = [0, 2 * n + 1, *[v for i in range(n) for v in (1 + i, 1 + n + i)]]
    return x.permute(order).reshape(batch, chans, *[g * p for g, p in zip(grid_size, patch_size, strict=True)])


class PatchEmbed(nn.Module):
    """patchify then Linear (``proj``, weight (E, prod(patch)·C)); deliberately not a Conv, to match the checkpoints."""

    def __init__(self, in_chans: int, patch_size: Sequence[int], embed_dim: int) -> None:
        super().__init__()
        self.patch_size = tuple(int(p) for p in patch_size)
        self.proj = nn.Linear(in_chans * math.prod(self.patch_size), embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(patchify(x, self.patch_size))


class Mlp(nn.Module):
    """fc1 → GELU → dropout → fc2 → dropout (timm ``Mlp`` layout)."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class Attention(nn.Module):
    """Multi-head attention with separate q and kv projections, so queries and keys may come from different tokens."""

    def __init__(self, dim: int, n_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0) -> None:
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"embedding dim {dim} is not divisible by the number of heads {n_heads}")
        self.n_heads = n_heads
        self.head_dim = dim // n_heads
        self.attn_drop = attn_drop
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, Nq, E) queries; context (B, Nk, E) keys/values, or None for self-attention."""
        context = x if context is None else context
        batch, n_q, dim = x.shape
        q = self.q(x).view(batch, n_q, self.n_heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(context).view(batch, -1, 2, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        drop = self.attn_drop if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        return self.proj(out.transpose(1, 2).reshape(batch, n_q, dim))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x), context), then x + mlp(norm2(x)).

    With a ``context`` (cross-attention, CrossMAE decoder) the keys/values are the raw, un-normalised context tokens.
    """

    def __init__(
        self, dim: int, n_heads: int, mlp_ratio: int = 4, drop_path: float = 0.0, norm_eps: float = 1e-5
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, n_heads)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, dim * mlp_ratio)
        self.drop_path = DropPath(drop_path)
        self.grad_ckpt = False

    def _forward(self, x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), context))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return maybe_checkpoint(self, self._forward, x, context)


class ViTEncoder(nn.Module):
    """Learnable cls token prepended to the tokens, transformer blocks, final LayerNorm."""

    def __init__(self, dim: int, depth: int, n_heads: int, mlp_ratio: int = 4, drop_path: float = 0.0) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList([Block(dim, n_heads, mlp_ratio, drop_path) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-5)
        self.apply(init_weights)
        nn.init.normal_(self.cls_token, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, E) tokens with positions added → (B, 1 + N, E), cls first."""
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class ViTDecoder(nn.Module):
    """Cross-attention-only decoder (CrossMAE): queries attend to a fixed context; queries never see each other."""

    def __init__(self, dim: int, depth: int, n_heads: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Block(dim, n_heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-5)
        self.apply(init_weights)

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            queries = block(queries, context)
        return self.norm(queries)
