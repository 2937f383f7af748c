"""ConvUNetR: CineMA encoder with a UNETR-style conv decoder per view, for segmentation and landmark heatmaps.

Skips, from the finest level: a ConvResBlock on the raw image, no skip at the levels finer than the first conv stage,
the conv-stage maps, the ViT tokens reshaped to their grid, and further k = s down-convolutions of that grid
(``dec_down_blocks_dict``) down to the coarsest level. ``dec_conv_blocks_dict`` matches their channels to
``dec_chans``; the decoder goes up with transposed convs, adding each skip, two ConvResBlocks per level.
With the released configuration: levels 1, 1/2 (no skip), 1/4, 1/8, 1/16 (tokens), 1/32 in-plane.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from cinema.config.official import ConvUNetRModelConfig
from cinema.models.conv import ConvResBlock, conv_cls, conv_transpose_cls, set_grad_ckpt
from cinema.models.conv_stem import DownsampleEncoder, check_images, view_n_dims
from cinema.models.vit import ViTEncoder, init_weights, vit_size

__all__ = ["ConvUNetR", "UpsampleDecoder", "decoder_levels"]


def decoder_levels(
    enc_patch_size: Sequence[int],
    enc_scale_factor: Sequence[int],
    n_conv_stages: int,
    n_dec_levels: int,
    dec_patch_size: Sequence[int],
    dec_scale_factor: Sequence[int],
) -> tuple[int, int]:
    """How the decoder levels line up with the encoder.

    Returns (number of levels between the image and the first conv stage, which get no skip; number of extra
    down-convolutions below the token grid). Raises ValueError if the factors don't line up.
    """
    if n_conv_stages >= n_dec_levels:
        raise ValueError(f"{n_conv_stages} conv stages need more than {n_dec_levels} decoder levels")
    first_stage = tuple(enc_patch_size)
    token = first_stage
    for _ in range(n_conv_stages):
        token = tuple(t * s for t, s in zip(token, enc_scale_factor, strict=True))
    level_factor = tuple(dec_patch_size)
    n_without_skip = n_down = None
    for level in range(n_dec_levels):
        if level_factor == first_stage:
            n_without_skip = level
        if level_factor == token:
            n_down = n_dec_levels - 1 - level
        level_factor = tuple(f * s for f, s in zip(level_factor, dec_scale_factor, strict=True))
    if n_without_skip is None or n_down is None:
        raise ValueError(
            f"decoder patch size {tuple(dec_patch_size)} × powers of {tuple(dec_scale_factor)} must reach both the "
            f"first conv stage {first_stage} and the token size {token}"
        )
    return n_without_skip, n_down


class UpsampleDecoder(nn.Module):
    """From coarse to fine: transposed conv up, add the skip (if any), ConvResBlocks (``blocks.<i>.up/conv``)."""

    def __init__(
        self,
        n_dims: int,
        chans: Sequence[int],
        patch_size: Sequence[int],
        scale_factor: Sequence[int],
        n_blocks: int = 2,
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        deconv = conv_transpose_cls(n_dims)
        self.blocks = nn.ModuleList()
        rev = list(chans)[::-1]
        for i, ch in enumerate(rev):
            last = i == len(rev) - 1
            out = ch if last else rev[i + 1]
            factor = tuple(patch_size) if last else tuple(scale_factor)
            block = nn.Module()
            block.up = deconv(ch, out, kernel_size=factor, stride=factor)
            block.conv = nn.ModuleList(
                [ConvResBlock(out, out, n_dims, kernel_size=kernel_size) for _ in range(n_blocks)]
            )
            self.blocks.append(block)

    def forward(self, x: torch.Tensor, skips: Sequence[torch.Tensor | None]) -> torch.Tensor:
        """x: coarsest map; skips: one per block, coarse to fine (None = no skip at that level)."""
        for block, skip in zip(self.blocks, skips, strict=True):
            x = block.up(x)
            if skip is not None:
                x = x + skip
            for conv in block.conv:
                x = conv(x)
        return x


class ConvUNetR(nn.Module):
    """Multi-view ConvUNetR; ``forward({view: (B, C, *spatial)}) -> {view: (B, out_chans, *spatial)}`` logits.

    Args mirror the official config (``model.convunetr.*``); 3-D factors are cut to 2-D for LAX views.
    """

    def __init__(
        self,
        image_size: Mapping[str, Sequence[int]],
        out_chans: int,
        in_chans: int | Mapping[str, int] = 1,
        size: str = "base",
        enc_patch_size: Sequence[int] = (4, 4, 1),
        enc_scale_factor: Sequence[int] = (2, 2, 1),
        enc_conv_chans: Sequence[int] = (64, 128),
        enc_conv_n_blocks: int = 2,
        dec_chans: Sequence[int] = (32, 64, 128, 256, 512),
        dec_patch_size: Sequence[int] = (2, 2, 1),
        dec_scale_factor: Sequence[int] = (2, 2, 1),
        dropout: float = 0.0,
        drop_path: float = 0.0,
        grad_ckpt: bool = False,
    ) -> None:
        super().__init__()
        dims = vit_size(size)
        embed_dim = dims["enc_dim"]
        self.views = list(image_size)
        chans = {v: in_chans if isinstance(in_chans, int) else in_chans[v] for v in self.views}
        levels = set()
        for view in self.views:
            n = view_n_dims(view)
            if len(image_size[view]) != n:
                raise ValueError(f"{view}: image size {tuple(image_size[view])} must have {n} dims")
            levels.add(
                decoder_levels(
                    enc_patch_size[:n],
                    enc_scale_factor[:n],
                    len(enc_conv_chans),
                    len(dec_chans),
                    dec_patch_size[:n],
                    dec_scale_factor[:n],
                )
            )
        if len(levels) != 1:
            raise ValueError(f"decoder levels differ between views {self.views}: {sorted(levels)}")
        self.n_levels_without_skip, n_down = levels.pop()

        self.enc_down_dict = nn.ModuleDict()
        for view in self.views:
            n = view_n_dims(view)
            self.enc_down_dict[view] = DownsampleEncoder(
                image_size[view],
                chans[view],
                enc_patch_size[:n],
                enc_scale_factor[:n],
                enc_conv_chans,
                enc_conv_n_blocks,
                embed_dim,
            )
        self.encoder = ViTEncoder(embed_dim, dims["enc_depth"], dims["enc_heads"], drop_path=drop_path)
        self.dec_image_conv_block_dict = nn.ModuleDict()
        self.dec_down_blocks_dict = nn.ModuleDict()
        self.dec_conv_blocks_dict = nn.ModuleDict()
        self.decoder_dict = nn.ModuleDict()
        self.pred_head_dict = nn.ModuleDict()
        first = self.n_levels_without_skip
        for view in self.views:
            n = view_n_dims(view)
            conv = conv_cls(n)
            self.dec_image_conv_block_dict[view] = ConvResBlock(chans[view], dec_chans[0], n, dropout=dropout)
            factor = tuple(dec_scale_factor[:n])
            self.dec_down_blocks_dict[view] = nn.ModuleList(
                [conv(embed_dim, embed_dim, kernel_size=factor, stride=factor) for _ in range(n_down)]
            )
            adapters = [
                ConvResBlock(ch, dec_chans[first + i], n, dropout=dropout) for i, ch in enumerate(enc_conv_chans)
            ]
            adapters += [
                ConvResBlock(embed_dim, dec_chans[first + len(enc_conv_chans) + i], n, dropout=dropout)
                for i in range(n_down + 1)
            ]
            self.dec_conv_blocks_dict[view] = nn.ModuleList(adapters)
            self.decoder_dict[view] = UpsampleDecoder(n, dec_chans, dec_patch_size[:n], dec_scale_factor[:n])
            self.pred_head_dict[view] = conv(dec_chans[0], out_chans, kernel_size=1)
        # inputs must divide down to the coarsest decoder level (token grid / dec_scale_factor^n_down) exactly
        self.size_multiple = {
            v: tuple(
                t * f**n_down
                for t, f in zip(self.enc_down_dict[v].token_size, dec_scale_factor[: view_n_dims(v)], strict=True)
            )
            for v in self.views
        }
        self.apply(init_weights)
        set_grad_ckpt(self, grad_ckpt)

        #: official-format config (what :func:`cinema.models.checkpoint.save_model` writes as config.yaml)
        self.config: dict[str, Any] = ConvUNetRModelConfig(
            image_size={v: list(image_size[v]) for v in self.views},
            in_chans=chans,
            out_chans=out_chans,
            size=size,
            enc_patch_size=list(enc_patch_size),
            enc_scale_factor=list(enc_scale_factor),
            enc_conv_chans=list(enc_conv_chans),
            enc_conv_n_blocks=enc_conv_n_blocks,
            dec_chans=list(dec_chans),
            dec_patch_size=list(dec_patch_size),
            dec_scale_factor=list(dec_scale_factor),
            dropout=dropout,
            drop_path=drop_path,
            grad_ckpt=bool(grad_ckpt),
        ).to_dict()

    def forward(self, images: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{view: (B, C, *spatial)} → {view: logits (B, out_chans, *spatial)}."""
        views, batch = check_images(images, self.enc_down_dict, "ConvUNetR", self.size_multiple)
        skips, tokens, grids = {}, [], {}
        for view in views:
            skips[view], x = self.enc_down_dict[view](images[view])
            grids[view] = self.enc_down_dict[view].input_grid(images[view])
            tokens.append(x)
        x = self.encoder(torch.cat(tokens, dim=1))
        parts = torch.split(x, [1] + [t.shape[1] for t in tokens], dim=1)[1:]

        logits = {}
        for view, part in zip(views, parts, strict=True):
            grid_map = part.transpose(1, 2).reshape(batch, part.shape[-1], *grids[view])
            features = [*skips[view], grid_map]
            for down in self.dec_down_blocks_dict[view]:
                grid_map = down(grid_map)
                features.append(grid_map)
            # one entry per decoder level, fine to coarse; levels between image and first conv stage have no skip
            levels: list[torch.Tensor | None] = [self.dec_image_conv_block_dict[view](images[view])]
            levels += [None] * self.n_levels_without_skip
            levels += [adapt(f) for adapt, f in zip(self.dec_conv_blocks_dict[view], features, strict=True)]
            coarsest = levels.pop()
            x = self.decoder_dict[view](coarsest, levels[::-1])
            logits[view] = self.pred_head_dict[view](x)
        return logits

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | ConvUNetRModelConfig) -> ConvUNetR:
        """Build from an official segmentation / landmark-heatmap config.yaml dict (or its typed config)."""
        if not isinstance(config, ConvUNetRModelConfig):
            config = ConvUNetRModelConfig.from_dict(config)
        model = cls(**config.model_kwargs())
        model.config = config.to_dict()
        return model
