"""Residual U-Net baseline for 2-D (LAX, or SAX slices) and 3-D (SAX) segmentation.

Layout and state-dict names follow the CineMA reference baseline (``cinema/segmentation/unet.py``), so its checkpoints
load unchanged:

- ``encoder.in_conv``: conv → norm → GELU taking the image to ``chans[0]`` channels;
- ``encoder.blocks.<i>.conv.<j>``: ``n_blocks`` pre-activation ConvResBlocks at ``chans[i]`` channels, then
  ``encoder.blocks.<i>.down``, a strided conv (kernel = stride = ``patch_size`` for the first level,
  ``scale_factor`` after) to ``chans[i + 1]`` channels;
- ``decoder.blocks.<i>.conv.<j>`` / ``decoder.blocks.<i>.up`` mirror the encoder deepest-first, upsampling with
  transposed convs;
- ``out_conv``: 1×1 conv to ``out_chans`` logits.

Every encoder activation (input conv, each block, each downsampling) is added back in the decoder, additive
skips rather than concatenation. The reference also builds a ``decoder.in_conv`` it never calls; it is kept (unused)
because it is part of the published parameter counts (SAX 77,269,188; LAX 26,691,204) and of the checkpoints.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from cinema.config.official import UNetModelConfig
from cinema.models.conv import ConvNormAct, ConvResBlock, conv_cls, conv_transpose_cls

__all__ = ["COMPACT_2D_CHANS", "DEFAULT_CHANS", "UNet", "unet_config"]

IntOrSeq = int | Sequence[int]

DEFAULT_CHANS = (32, 64, 128, 256, 512)
# Compact 2-D U-Net for SAX slices (6.68 M parameters with 1 input, 4 classes): narrow at full resolution, where a
# conv costs most, and five levels deep for context. On a 2-core CPU its training step takes about 1/2.5 of the time
# of (32, 64, 128, 256), which has the same parameter count.
COMPACT_2D_CHANS = (16, 32, 64, 128, 256)


def _as_tuple(value: IntOrSeq, n_dims: int, name: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * n_dims
    value = tuple(int(v) for v in value)
    # Official configs list the 3-D factor (2, 2, 1) also for 2-D views and rely on slicing to the first n_dims.
    if len(value) < n_dims:
        raise ValueError(f"{name} {value} has fewer than n_dims={n_dims} entries")
    return value[:n_dims]


def unet_config(
    view: str = "sax",
    in_chans: int = 1,
    out_chans: int = 4,
    n_dims: int | None = None,
    chans: Sequence[int] = DEFAULT_CHANS,
    n_blocks: int = 2,
    patch_size: Sequence[int] = (2, 2, 1),
    scale_factor: Sequence[int] = (2, 2, 1),
    dropout: float = 0.1,
    norm: str = "instance",
    kernel_size: int = 3,
    grad_ckpt: bool = False,
) -> dict[str, Any]:
    """Official-layout config (``model.name: unet``) for :meth:`UNet.from_config`.

    ``n_dims`` defaults to 3 for ``sax`` and 2 for LAX views; pass ``n_dims=2`` with ``view="sax"`` for a U-Net on
    SAX slices. ``n_blocks``, ``norm``, ``kernel_size`` and ``model.unet.n_dims`` are extensions of the reference
    layout, which fixes them to 2, instance, 3 and the number of spacing entries.
    """
    return UNetModelConfig(
        view=view,
        in_chans=in_chans,
        out_chans=out_chans,
        n_dims=n_dims,
        chans=list(chans),
        n_blocks=n_blocks,
        dropout=dropout,
        patch_size=list(patch_size),
        scale_factor=list(scale_factor),
        norm=norm,
        kernel_size=kernel_size,
        grad_ckpt=grad_ckpt,
    ).to_dict()


class UNetEncoder(nn.Module):
    """Input conv, then per level ``n_blocks`` ConvResBlocks and a strided-conv downsampling (none at the last)."""

    def __init__(
        self,
        n_dims: int,
        in_chans: int,
        chans: Sequence[int],
        patch_size: tuple[int, ...],
        scale_factor: tuple[int, ...],
        n_blocks: int,
        norm: str,
        kernel_size: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.in_conv = ConvNormAct(n_dims, in_chans, chans[0], norm=norm, kernel_size=kernel_size)
        self.blocks = nn.ModuleList()
        for i, ch in enumerate(chans):
            level = nn.Module()
            level.conv = nn.ModuleList(
                ConvResBlock(ch, ch, n_dims=n_dims, norm=norm, dropout=dropout, kernel_size=kernel_size)
                for _ in range(n_blocks)
            )
            if i < len(chans) - 1:
                factor = patch_size if i == 0 else scale_factor
                level.down = conv_cls(n_dims)(ch, chans[i + 1], kernel_size=factor, stride=factor)
            self.blocks.append(level)
        self.grad_ckpt = False

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every intermediate activation, shallowest first: the decoder consumes them in reverse as skips."""
        x = self.in_conv(x)
        skips = [x]
        for level in self.blocks:
            for block in level.conv:
                x = _run(block, x, self.grad_ckpt)
                skips.append(x)
            if hasattr(level, "down"):
                x = level.down(x)
                skips.append(x)
        return skips


class UNetDecoder(nn.Module):
    """Deepest level first: ``n_blocks`` ConvResBlocks, each adding a skip, then a transposed-conv upsampling."""

    def __init__(
        self,
        n_dims: int,
        chans: Sequence[int],
        patch_size: tuple[int, ...],
        scale_factor: tuple[int, ...],
        n_blocks: int,
        norm: str,
        kernel_size: int,
        dropout: float,
    ) -> None:
        super().__init__()
        # Never called (see the module docstring): kept so parameter counts and checkpoints match the reference.
        self.in_conv = ConvNormAct(n_dims, chans[-1], chans[0], norm=norm, kernel_size=kernel_size)
        self.blocks = nn.ModuleList()
        n_levels = len(chans)
        for i, ch in enumerate(reversed(chans)):
            level = nn.Module()
            level.conv = nn.ModuleList(
                ConvResBlock(ch, ch, n_dims=n_dims, norm=norm, dropout=dropout, kernel_size=kernel_size)
                for _ in range(n_blocks)
            )
            if i < n_levels - 1:
                factor = patch_size if i == n_levels - 2 else scale_factor
                level.up = conv_transpose_cls(n_dims)(ch, chans[-i - 2], kernel_size=factor, stride=factor)
            self.blocks.append(level)
        self.grad_ckpt = False

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor:
        """Consumes (empties) ``skips`` so that, without autograd, each activation is freed once it is used."""
        x = skips.pop()
        for level in self.blocks:
            for block in level.conv:
                x = _run(block, x, self.grad_ckpt) + skips.pop()
            if hasattr(level, "up"):
                x = level.up(x) + skips.pop()
        return x


def _run(block: nn.Module, x: torch.Tensor, grad_ckpt: bool) -> torch.Tensor:
    # Recompute the block in backward instead of storing its activations; pointless without autograd.
    if grad_ckpt and block.training and torch.is_grad_enabled():
        return checkpoint(block, x, use_reentrant=False)
    return block(x)


class UNet(nn.Module):
    """Residual U-Net: ``forward(x (B, C, *spatial))`` → logits ``(B, out_chans, *spatial)``.

    Also accepts the ConvUNetR convention ``{view: x}`` → ``{view: logits}`` (exactly one view), so the trainer can
    treat both alike. Spatial sizes must be divisible by the total downsampling factor :attr:`size_divisor`.
    """

    def __init__(
        self,
        n_dims: int,
        in_chans: int,
        out_chans: int,
        chans: Sequence[int] = DEFAULT_CHANS,
        patch_size: IntOrSeq = (2, 2, 1),
        scale_factor: IntOrSeq = (2, 2, 1),
        n_blocks: int = 2,
        dropout: float = 0.0,
        norm: str = "instance",
        kernel_size: int = 3,
        grad_ckpt: bool = False,
        view: str | None = None,
    ) -> None:
        super().__init__()
        if n_dims not in (2, 3):
            raise ValueError(f"n_dims must be 2 or 3, got {n_dims}")
        chans = tuple(int(c) for c in chans)
        if len(chans) < 2 or min(chans) < 1:
            raise ValueError(f"chans must list at least 2 positive channel counts, got {list(chans)}")
        if n_blocks < 1:
            raise ValueError(f"n_blocks must be at least 1, got {n_blocks}")
        patch_size = _as_tuple(patch_size, n_dims, "patch_size")
        scale_factor = _as_tuple(scale_factor, n_dims, "scale_factor")
        self.n_dims = n_dims
        self.in_chans = int(in_chans)
        self.out_chans = int(out_chans)
        self.view = view if view is not None else ("sax" if n_dims == 3 else "lax_4c")
        self.size_divisor = tuple(p * s ** (len(chans) - 2) for p, s in zip(patch_size, scale_factor, strict=True))
        self.encoder = UNetEncoder(
            n_dims, in_chans, chans, patch_size, scale_factor, n_blocks, norm, kernel_size, dropout
        )
        self.decoder = UNetDecoder(n_dims, chans, patch_size, scale_factor, n_blocks, norm, kernel_size, dropout)
        self.out_conv = conv_cls(n_dims)(chans[0], out_chans, kernel_size=1)
        self.set_grad_ckpt(grad_ckpt)
        #: official-format config (what :func:`cinema.models.checkpoint.save_model` writes as config.yaml)
        self.config: dict[str, Any] = unet_config(
            view=self.view,
            in_chans=in_chans,
            out_chans=out_chans,
            n_dims=n_dims,
            chans=chans,
            n_blocks=n_blocks,
            patch_size=patch_size,
            scale_factor=scale_factor,
            dropout=dropout,
            norm=norm,
            kernel_size=kernel_size,
            grad_ckpt=grad_ckpt,
        )

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | UNetModelConfig) -> UNet:
        """Build from an official-layout config (``model.name: unet``; see :func:`unet_config`) or its typed config.

        Reads ``model.views`` (or the older ``model.view``), ``model.out_chans``, ``model.unet.{chans, dropout,
        patch_size, scale_factor}``, the view's ``data.<view>.in_chans`` (``data.lax`` serves every LAX view, as in
        the reference) and ``grad_ckpt``. The number of spatial dims is ``model.unet.n_dims`` if given, else the
        length of ``data.<view>.spacing``, else 3 for ``sax`` and 2 otherwise (`cinema.config.official`).
        """
        if not isinstance(config, UNetModelConfig):
            config = UNetModelConfig.from_dict(config)
        model = cls(**config.model_kwargs())
        model.config = config.to_dict()
        return model

    def set_grad_ckpt(self, enable: bool = True) -> None:
        """Recompute each ConvResBlock during backward to save activation memory (training only)."""
        self.grad_ckpt = bool(enable)
        self.encoder.grad_ckpt = self.grad_ckpt
        self.decoder.grad_ckpt = self.grad_ckpt

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ValueError unless x is (B, in_chans, *spatial) with sizes divisible by :attr:`size_divisor`."""
        if x.ndim != self.n_dims + 2:
            raise ValueError(
                f"UNet ({self.n_dims}-D) expects input (batch, {self.in_chans}, *{self.n_dims} spatial dims), "
                f"got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_chans:
            raise ValueError(f"UNet expects {self.in_chans} input channels, got {x.shape[1]} (shape {tuple(x.shape)})")
        spatial = tuple(x.shape[2:])
        if any(s % d for s, d in zip(spatial, self.size_divisor, strict=True)):
            raise ValueError(
                f"UNet input spatial size {spatial} is not divisible by the total downsampling factor "
                f"{self.size_divisor}; pad or crop the image first"
            )

    def forward(self, x: torch.Tensor | Mapping[str, torch.Tensor]) -> torch.Tensor | dict[str, torch.Tensor]:
        if isinstance(x, Mapping):
            if len(x) != 1:
                raise ValueError(f"UNet takes exactly one view, got {len(x)}: {sorted(x)}")
            ((view, image),) = x.items()
            return {view: self.forward(image)}
        self.check_input(x)
        return self.out_conv(self.decoder(self.encoder(x)))
