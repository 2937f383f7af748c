"""Per-view ConvMAE stem of CineMA (``enc_down_dict.<view>``) and multi-scale fusion (``enc_fusion_dict.<view>``).

The stem turns an image (B, C, *spatial) into ViT tokens: conv stages (k = s patch conv, LayerNorm, GELU, then
MaskedConvBlocks), a patchify + Linear patch embedding, an extra Linear and a fixed sin-cos position table. With the
released configuration a token covers 16×16(×1) voxels: SAX 192×192×16 → 12×12×16 = 2304 tokens, LAX 256×256 → 256.
The fusion module brings each conv stage down to the token grid with a k = s conv and adds it to the encoder output.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from cinema.models.conv import ConvNormAct, MaskedConvBlock, conv_cls
from cinema.models.pos_embed import interpolate_pos_embed, sincos_pos_embed
from cinema.models.vit import PatchEmbed, init_weights

__all__ = [
    "VIEWS",
    "DownsampleEncoder",
    "MultiScaleFusion",
    "check_images",
    "upsample_mask",
    "view_n_dims",
]

VIEWS = ("sax", "lax_2c", "lax_3c", "lax_4c")


def view_n_dims(view: str) -> int:
    """SAX is a 3-D stack (x, y, slice); the LAX views are 2-D."""
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; expected one of {list(VIEWS)}")
    return 3 if view == "sax" else 2


def upsample_mask(mask: torch.Tensor, factor: Sequence[int]) -> torch.Tensor:
    """Nearest upsampling of a (B, *grid) mask by an integer factor per spatial axis."""
    for axis, f in enumerate(factor):
        if f != 1:
            mask = mask.repeat_interleave(int(f), dim=axis + 1)
    return mask


def _mul(a: Sequence[int], b: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(x) * int(y) for x, y in zip(a, b, strict=True))


class DownsampleEncoder(nn.Module):
    """Conv stages + patch embedding + position table for one view; optional ConvMAE token masking."""

    def __init__(
        self,
        image_size: Sequence[int],
        in_chans: int,
        patch_size: Sequence[int],
        scale_factor: Sequence[int],
        conv_chans: Sequence[int],
        conv_n_blocks: int,
        embed_dim: int,
    ) -> None:
        super().__init__()
        self.image_size = tuple(int(s) for s in image_size)
        self.in_chans = int(in_chans)
        n_dims = len(self.image_size)
        if len(patch_size) != n_dims or len(scale_factor) != n_dims:
            raise ValueError(f"patch size {patch_size} / scale factor {scale_factor} do not have {n_dims} dims")
        # Down-sampling factor of each stage: the first conv stage uses patch_size, later ones and the final patch
        # embedding use scale_factor.
        self.stage_factors = [tuple(patch_size)] + [tuple(scale_factor)] * len(conv_chans)
        self.token_size = tuple(math.prod(f[i] for f in self.stage_factors) for i in range(n_dims))
        self.grid_size = tuple(s // t for s, t in zip(self.image_size, self.token_size, strict=True))
        if any(s % t for s, t in zip(self.image_size, self.token_size, strict=True)):
            raise ValueError(f"image size {self.image_size} is not divisible by the token size {self.token_size}")

        self.conv_blocks = nn.ModuleList()
        chans = self.in_chans
        for factor, out_chans in zip(self.stage_factors[:-1], conv_chans, strict=True):
            stage = nn.Module()
            stage.patch_embed = ConvNormAct(n_dims, chans, out_chans, kernel_size=factor, stride=factor, padding=0)
            stage.conv = nn.ModuleList([MaskedConvBlock(n_dims, out_chans) for _ in range(conv_n_blocks)])
            self.conv_blocks.append(stage)
            chans = out_chans
        self.patch_embed = PatchEmbed(chans, self.stage_factors[-1], embed_dim)
        self.linear = nn.Linear(embed_dim, embed_dim)  # not in the original MAE; part of the CineMA checkpoints
        self.pos_embed = nn.Parameter(sincos_pos_embed(embed_dim, self.grid_size), requires_grad=False)
        self.apply(init_weights)
        nn.init.xavier_uniform_(self.patch_embed.proj.weight)

    @property
    def n_patches(self) -> int:
        return math.prod(self.grid_size)

    def input_grid(self, image: torch.Tensor) -> tuple[int, ...]:
        return tuple(s // t for s, t in zip(image.shape[2:], self.token_size, strict=True))

    def forward(self, image: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
        """image (B, C, *spatial); mask (B, N) bool at the token grid, True = masked, or None.

        Returns the conv-stage feature maps (for fusion / skips) and all N tokens (B, N, E) with positions added;
        the caller drops masked tokens.
        """
        grid = self.input_grid(image)
        conv_masks: list[torch.Tensor | None] = [None] * len(self.conv_blocks)
        if mask is not None:
            visible = ~mask.reshape(mask.shape[0], *grid)
            # Walk from the token grid up to each conv stage's resolution (the last stage is nearest to the grid).
            for i in range(len(self.conv_blocks) - 1, -1, -1):
                visible = upsample_mask(visible, self.stage_factors[i + 1])
                conv_masks[i] = visible
        skips = []
        x = image
        for stage, conv_mask in zip(self.conv_blocks, conv_masks, strict=True):
            x = stage.patch_embed(x)
            for block in stage.conv:
                x = block(x, conv_mask)
            skips.append(x)
        tokens = self.linear(self.patch_embed(x))
        pos = interpolate_pos_embed(self.pos_embed, self.grid_size, grid)
        return skips, tokens + pos.to(tokens.dtype)


class MultiScaleFusion(nn.Module):
    """Add each conv stage, brought to the token grid by a k = s conv (``down_convs``), to the tokens; LayerNorm."""

    def __init__(
        self,
        n_dims: int,
        patch_size: Sequence[int],
        scale_factor: Sequence[int],
        conv_chans: Sequence[int],
        embed_dim: int,
    ) -> None:
        super().__init__()
        factors = [tuple(patch_size)] + [tuple(scale_factor)] * len(conv_chans)
        conv = conv_cls(n_dims)
        self.down_convs = nn.ModuleList()
        for i, chans in enumerate(conv_chans):
            # stage i sits at the resolution after factors[:i+1]; the remaining factors take it to the token grid
            kernel = tuple(math.prod(f[d] for f in factors[i + 1 :]) for d in range(n_dims))
            self.down_convs.append(conv(chans, embed_dim, kernel_size=kernel, stride=kernel))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-5)
        self.apply(init_weights)

    def forward(self, skips: Sequence[torch.Tensor], x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """skips: conv-stage maps; x (B, n_tokens, E) encoder output for this view (only visible tokens if masked)."""
        for skip, conv in zip(skips, self.down_convs, strict=True):
            down = conv(skip).flatten(2).transpose(1, 2)  # (B, N, E)
            if mask is not None:
                down = down[~mask].view(x.shape[0], -1, x.shape[-1])
            x = x + down
        return self.norm(x)


def check_images(
    images: Mapping[str, torch.Tensor],
    stems: Mapping[str, DownsampleEncoder],
    model_name: str,
    size_multiple: Mapping[str, Sequence[int]] | None = None,
) -> tuple[list[str], int]:
    """Validate a {view: (B, C, *spatial)} input against a model's stems; returns the views (input order) and B.

    The spatial size must be a multiple of the token size, or of ``size_multiple[view]`` when the model needs more.
    """
    if not isinstance(images, Mapping) or len(images) == 0:
        raise ValueError(f"{model_name} expects a non-empty dict {{view: tensor}}, got {type(images).__name__}")
    batch = None
    for view, image in images.items():
        if view not in stems:
            raise ValueError(f"view {view!r} is not one of this {model_name}'s views {list(stems)}")
        stem = stems[view]
        n_dims = len(stem.image_size)
        if not isinstance(image, torch.Tensor) or image.ndim != n_dims + 2:
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(f"{view}: expected a tensor (B, C, {n_dims} spatial dims), got {shape}")
        if image.shape[1] != stem.in_chans:
            raise ValueError(f"{view}: expected {stem.in_chans} input channel(s), got {image.shape[1]}")
        spatial = tuple(image.shape[2:])
        multiple = tuple(size_multiple[view]) if size_multiple else stem.token_size
        what = "token size" if multiple == stem.token_size else "model's coarsest level"
        if any(s % t or s == 0 for s, t in zip(spatial, multiple, strict=True)):
            raise ValueError(
                f"{view}: spatial size {spatial} is not divisible by the {what} {multiple} "
                f"(the model expects {stem.image_size})"
            )
        if batch is None:
            batch = image.shape[0]
        elif image.shape[0] != batch:
            raise ValueError(f"{view}: batch size {image.shape[0]} differs from the other views' {batch}")
    return list(images), int(batch)
