"""ConvViT: CineMA encoder with linear heads, for classification, regression and landmark coordinates.

Frames (e.g. ED and ES) are stacked as input channels: the first conv of each view takes ``n_frames · in_chans``.
Heads (``pred_head_dict.<view>`` and ``pred_head_dict.cls``) map features to ``out_chans`` logits:
``reduce="all"`` (the released default) averages each view's head on its mean-pooled fused tokens with the cls head;
``"patch"`` uses the view heads only; ``"cls"`` the cls head only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from cinema.config.official import ConvViTModelConfig
from cinema.models.conv import set_grad_ckpt
from cinema.models.conv_stem import DownsampleEncoder, MultiScaleFusion, check_images, view_n_dims
from cinema.models.vit import ViTEncoder, init_weights, vit_size

__all__ = ["REDUCTIONS", "ConvViT"]

REDUCTIONS = ("all", "cls", "patch")


class ConvViT(nn.Module):
    """Multi-view ConvViT; ``forward(images, reduce="all") -> (B, out_chans)`` logits.

    Args mirror the official config (``model.convvit.*``, ``model.n_frames``); 3-D factors are cut to 2-D for LAX.
    """

    def __init__(
        self,
        image_size: Mapping[str, Sequence[int]],
        out_chans: int,
        n_frames: int = 1,
        in_chans: int | Mapping[str, int] = 1,
        size: str = "base",
        enc_patch_size: Sequence[int] = (4, 4, 1),
        enc_scale_factor: Sequence[int] = (2, 2, 1),
        enc_conv_chans: Sequence[int] = (64, 128),
        enc_conv_n_blocks: int = 2,
        drop_path: float = 0.0,
        grad_ckpt: bool = False,
    ) -> None:
        super().__init__()
        dims = vit_size(size)
        embed_dim = dims["enc_dim"]
        self.views = list(image_size)
        self.n_frames = int(n_frames)
        chans = {v: in_chans if isinstance(in_chans, int) else in_chans[v] for v in self.views}
        self.enc_down_dict = nn.ModuleDict()
        self.enc_fusion_dict = nn.ModuleDict()
        for view in self.views:
            n = view_n_dims(view)
            if len(image_size[view]) != n:
                raise ValueError(f"{view}: image size {tuple(image_size[view])} must have {n} dims")
            self.enc_down_dict[view] = DownsampleEncoder(
                image_size[view],
                self.n_frames * chans[view],
                enc_patch_size[:n],
                enc_scale_factor[:n],
                enc_conv_chans,
                enc_conv_n_blocks,
                embed_dim,
            )
            self.enc_fusion_dict[view] = MultiScaleFusion(
                n, enc_patch_size[:n], enc_scale_factor[:n], enc_conv_chans, embed_dim
            )
        self.encoder = ViTEncoder(embed_dim, dims["enc_depth"], dims["enc_heads"], drop_path=drop_path)
        self.apply(init_weights)
        # Heads keep PyTorch's default init, as in the reference (its init pass runs before they exist).
        self.pred_head_dict = nn.ModuleDict({v: nn.Linear(embed_dim, out_chans) for v in [*self.views, "cls"]})
        set_grad_ckpt(self, grad_ckpt)

        #: official-format config (what :func:`cinema.models.checkpoint.save_model` writes as config.yaml)
        self.config: dict[str, Any] = ConvViTModelConfig(
            image_size={v: list(image_size[v]) for v in self.views},
            in_chans=chans,
            out_chans=out_chans,
            n_frames=self.n_frames,
            size=size,
            enc_patch_size=list(enc_patch_size),
            enc_scale_factor=list(enc_scale_factor),
            enc_conv_chans=list(enc_conv_chans),
            enc_conv_n_blocks=enc_conv_n_blocks,
            drop_path=drop_path,
            grad_ckpt=bool(grad_ckpt),
        ).to_dict()

    def feature_forward(self, images: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{"cls": (B, 1, E), view: (B, N_view, E)} fused features."""
        views, _ = check_images(images, self.enc_down_dict, "ConvViT")
        skips, tokens = {}, []
        for view in views:
            skips[view], x = self.enc_down_dict[view](images[view])
            tokens.append(x)
        x = self.encoder(torch.cat(tokens, dim=1))
        parts = torch.split(x, [1] + [t.shape[1] for t in tokens], dim=1)
        out = {"cls": parts[0]}
        for view, part in zip(views, parts[1:], strict=True):
            out[view] = self.enc_fusion_dict[view](skips[view], part)
        return out

    def forward(self, images: Mapping[str, torch.Tensor], reduce: str = "all") -> torch.Tensor:
        """{view: (B, n_frames·C, *spatial)} → logits (B, out_chans).

        ``reduce`` is "all", "cls" or "patch" (see module doc); view heads are used for the views given.
        """
        if reduce not in REDUCTIONS:
            raise ValueError(f"reduce must be one of {list(REDUCTIONS)}, got {reduce!r}")
        feats = self.feature_forward(images)
        views = [v for v in feats if v != "cls"]
        logits = []
        if reduce != "cls":
            logits += [self.pred_head_dict[v](feats[v].mean(dim=1)) for v in views]
        if reduce != "patch":
            logits.append(self.pred_head_dict["cls"](feats["cls"][:, 0]))
        return logits[0] if len(logits) == 1 else torch.stack(logits, dim=1).mean(dim=1)

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | ConvViTModelConfig) -> ConvViT:
        """Build from an official classification / regression / landmark-coordinate config.yaml dict (or its typed
        config)."""
        if not isinstance(config, ConvViTModelConfig):
            config = ConvViTModelConfig.from_dict(config)
        model = cls(**config.model_kwargs())
        model.config = config.to_dict()
        return model
