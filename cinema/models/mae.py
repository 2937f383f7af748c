"""CineMA pre-training model: a multi-view ConvMAE-style masked autoencoder with a CrossMAE decoder.

Per view: conv stem → tokens (``enc_down_dict``). Visible tokens of all views are concatenated behind one cls token and
run through one shared ViT encoder, so attention is joint across views. Each view's encoder output gets multi-scale conv
features added (``enc_fusion_dict``), is projected to the decoder width (``dec_linear``) and gets decoder positions.
The decoder's queries are [cls, mask token + position of every masked token]; they cross-attend to the visible tokens
only. A per-view linear head predicts the 16×16(×1) pixels of each masked token; the loss is the MSE on masked tokens,
averaged per view and then over views (raw [0, 1] intensities, as in the release).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cinema.config.official import MAEModelConfig
from cinema.models.conv import set_grad_ckpt
from cinema.models.conv_stem import DownsampleEncoder, MultiScaleFusion, check_images, view_n_dims
from cinema.models.pos_embed import interpolate_pos_embed, sincos_pos_embed
from cinema.models.vit import ViTDecoder, ViTEncoder, init_weights, patchify, unpatchify, vit_size

__all__ = ["CineMA", "DecoderEmbedding", "random_token_mask"]


def random_token_mask(
    batch: int,
    n_tokens: int,
    mask_ratio: float,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(B, N) bool, True = masked: per sample, the ``int(N·(1−ratio))`` tokens with the smallest noise are kept.

    ``generator`` draws the noise from a given stream (pre-training draws each sample's mask from its own seed).
    """
    if not 0.0 <= mask_ratio <= 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1], got {mask_ratio}")
    n_keep = int(n_tokens * (1 - mask_ratio))
    noise = torch.rand(batch, n_tokens, device=device, generator=generator)
    keep = noise.argsort(dim=1)[:, :n_keep]
    mask = torch.ones(batch, n_tokens, dtype=torch.bool, device=device)
    return mask.scatter_(1, keep, False)


class DecoderEmbedding(nn.Module):
    """Per-view decoder position table and learnable mask token (no extra embedding token)."""

    def __init__(self, grid_size: Sequence[int], dim: int) -> None:
        super().__init__()
        self.grid_size = tuple(grid_size)
        self.pos_embed = nn.Parameter(sincos_pos_embed(dim, self.grid_size), requires_grad=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(
        self, visible: torch.Tensor, mask: torch.Tensor, grid_size: Sequence[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """visible (B, n_keep, D), mask (B, N) → (visible + positions, mask token + masked positions)."""
        batch, n_keep, dim = visible.shape
        pos = interpolate_pos_embed(self.pos_embed, self.grid_size, grid_size).to(visible.dtype)
        pos = pos.expand(batch, -1, -1)
        visible = visible + pos[~mask].view(batch, n_keep, dim)
        masked = self.mask_token.to(visible.dtype) + pos[mask].view(batch, -1, dim)
        return visible, masked


class CineMA(nn.Module):
    """Multi-view masked autoencoder (the released pre-trained CineMA).

    Args:
        image_size: {view: spatial size}, e.g. {"sax": (192, 192, 16), "lax_4c": (256, 256)}; the order of the
            dict is the order of the views in the state dict.
        in_chans: input channels, one number for every view or {view: n}.
        size: transformer size, tiny / small / base / large / huge.
        patch_size, scale_factor: first conv-stage and later down-sampling factors (3-D; LAX uses the first two).
        conv_chans, conv_n_blocks: channels of the conv stages and MaskedConvBlocks per stage.
        grad_ckpt: per-block gradient checkpointing during training.
    """

    def __init__(
        self,
        image_size: Mapping[str, Sequence[int]],
        in_chans: int | Mapping[str, int] = 1,
        size: str = "base",
        patch_size: Sequence[int] = (4, 4, 1),
        scale_factor: Sequence[int] = (2, 2, 1),
        conv_chans: Sequence[int] = (64, 128),
        conv_n_blocks: int = 2,
        drop_path: float = 0.0,
        grad_ckpt: bool = False,
    ) -> None:
        super().__init__()
        dims = vit_size(size)
        self.views = list(image_size)
        for view in self.views:
            if len(image_size[view]) != view_n_dims(view):
                raise ValueError(f"{view}: image size {tuple(image_size[view])} must have {view_n_dims(view)} dims")
        chans = {v: in_chans if isinstance(in_chans, int) else in_chans[v] for v in self.views}
        self.enc_down_dict = nn.ModuleDict()
        self.enc_fusion_dict = nn.ModuleDict()
        for view in self.views:
            n = view_n_dims(view)
            self.enc_down_dict[view] = DownsampleEncoder(
                image_size[view],
                chans[view],
                patch_size[:n],
                scale_factor[:n],
                conv_chans,
                conv_n_blocks,
                dims["enc_dim"],
            )
            self.enc_fusion_dict[view] = MultiScaleFusion(
                n, patch_size[:n], scale_factor[:n], conv_chans, dims["enc_dim"]
            )
        self.encoder = ViTEncoder(dims["enc_dim"], dims["enc_depth"], dims["enc_heads"], drop_path=drop_path)
        self.dec_linear = nn.Linear(dims["enc_dim"], dims["dec_dim"])
        self.dec_embed_dict = nn.ModuleDict(
            {v: DecoderEmbedding(self.enc_down_dict[v].grid_size, dims["dec_dim"]) for v in self.views}
        )
        self.decoder = ViTDecoder(dims["dec_dim"], dims["dec_depth"], dims["dec_heads"])
        self.pred_head_dict = nn.ModuleDict(
            {v: nn.Linear(dims["dec_dim"], math.prod(self.enc_down_dict[v].token_size) * chans[v]) for v in self.views}
        )
        init_weights(self.dec_linear)
        for head in self.pred_head_dict.values():
            init_weights(head)
        set_grad_ckpt(self, grad_ckpt)
        #: official-format config (what :func:`cinema.models.checkpoint.save_model` writes as config.yaml)
        self.config: dict[str, Any] = MAEModelConfig(
            image_size={v: list(image_size[v]) for v in self.views},
            in_chans=chans,
            size=size,
            patch_size=list(patch_size),
            scale_factor=list(scale_factor),
            enc_conv_chans=list(conv_chans),
            enc_conv_n_blocks=conv_n_blocks,
            grad_ckpt=bool(grad_ckpt),
        ).to_dict()

    @property
    def dec_patch_size(self) -> dict[str, tuple[int, ...]]:
        """Pixel patch predicted per token, per view: 16×16×1 for SAX, 16×16 for LAX with the released config."""
        return {v: self.enc_down_dict[v].token_size for v in self.views}

    def patchify(self, image: torch.Tensor, view: str) -> torch.Tensor:
        """(B, C, *spatial) → (B, N, prod(token size)·C), the pixel targets of each token of ``view``."""
        return patchify(image, self.enc_down_dict[view].token_size)

    def unpatchify(self, patches: torch.Tensor, view: str, grid_size: Sequence[int] | None = None) -> torch.Tensor:
        """Inverse of :meth:`patchify`; ``grid_size`` defaults to the configured token grid of ``view``."""
        stem = self.enc_down_dict[view]
        return unpatchify(patches, stem.token_size, grid_size or stem.grid_size)

    def reconstruct(self, image: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, view: str) -> torch.Tensor:
        """Image with its masked tokens replaced by the predictions (visible tokens keep the input pixels)."""
        stem = self.enc_down_dict[view]
        patches = self.patchify(image, view).clone()
        patches[mask] = pred.reshape(-1, patches.shape[-1]).to(patches.dtype)
        return unpatchify(patches, stem.token_size, stem.input_grid(image))

    def _encode(
        self, images: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor] | None
    ) -> tuple[list[str], int, dict[str, torch.Tensor]]:
        """Stems, shared encoder and fusion; returns {"cls": (B,1,E), view: (B, n_visible, E)}."""
        views, batch = check_images(images, self.enc_down_dict, "CineMA")
        skips, tokens, counts = {}, [], []
        for view in views:
            mask = None if masks is None else masks[view]
            skips[view], x = self.enc_down_dict[view](images[view], mask)
            if mask is not None:
                x = x[~mask].view(batch, -1, x.shape[-1])
            tokens.append(x)
            counts.append(x.shape[1])
        x = self.encoder(torch.cat(tokens, dim=1))
        parts = torch.split(x, [1, *counts], dim=1)
        out = {"cls": parts[0]}
        for view, part in zip(views, parts[1:], strict=True):
            out[view] = self.enc_fusion_dict[view](skips[view], part, None if masks is None else masks[view])
        return views, batch, out

    def feature_forward(self, images: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Unmasked features: {"cls": (B, 1, E), view: (B, N_view, E)} after multi-scale fusion."""
        return self._encode(images, None)[2]

    def _check_masks(
        self, images: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor] | None, mask_ratio: float
    ) -> dict[str, torch.Tensor]:
        extra = sorted(set(masks or {}) - set(images))
        if extra:
            raise ValueError(f"masks given for views without an image: {extra}")
        out = {}
        for view, image in images.items():
            stem = self.enc_down_dict[view]
            n_tokens = math.prod(stem.input_grid(image))
            if masks is None or view not in masks:
                out[view] = random_token_mask(image.shape[0], n_tokens, mask_ratio, image.device)
                continue
            mask = torch.as_tensor(masks[view], device=image.device)
            if tuple(mask.shape) != (image.shape[0], n_tokens):
                raise ValueError(f"{view}: mask must have shape {(image.shape[0], n_tokens)}, got {tuple(mask.shape)}")
            mask = mask.bool()
            n_masked = mask.sum(dim=1)
            if bool((n_masked != n_masked[0]).any()):
                raise ValueError(f"{view}: every sample must mask the same number of tokens, got {n_masked.tolist()}")
            out[view] = mask
        return out

    def forward(
        self,
        images: Mapping[str, torch.Tensor],
        masks: Mapping[str, torch.Tensor] | None = None,
        mask_ratio: float = 0.75,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Masked reconstruction.

        Args:
            images: {view: (B, C, *spatial)}, intensities in [0, 1].
            masks: optional {view: (B, N) bool, True = masked}; views without one get a random mask.
            mask_ratio: fraction of tokens masked when a mask is drawn.

        Returns:
            loss (scalar), pred {view: (B, n_masked, prod(patch)·C)} in ascending token order,
            masks {view: (B, N) bool}, metrics {name: scalar tensor}.
        """
        check_images(images, self.enc_down_dict, "CineMA")
        masks = self._check_masks(images, masks, mask_ratio)
        views, batch, feats = self._encode(images, masks)

        x = self.dec_linear(torch.cat([feats["cls"], *(feats[v] for v in views)], dim=1))
        parts = torch.split(x, [1] + [feats[v].shape[1] for v in views], dim=1)
        contexts, queries, n_masked = [], [parts[0]], []
        for view, part in zip(views, parts[1:], strict=True):
            grid = self.enc_down_dict[view].input_grid(images[view])
            visible, masked = self.dec_embed_dict[view](part, masks[view], grid)
            contexts.append(visible)
            queries.append(masked)
            n_masked.append(masked.shape[1])
        # queries = [cls, masked tokens of each view]; the cls query is dropped after decoding
        decoded = self.decoder(torch.cat(queries, dim=1), torch.cat(contexts, dim=1))[:, 1:]

        preds, losses, metrics = {}, [], {}
        for view, dec in zip(views, torch.split(decoded, n_masked, dim=1), strict=True):
            pred = self.pred_head_dict[view](dec)
            target = self.patchify(images[view], view)
            metrics[f"{view}_target_mean"] = target.mean().detach()
            metrics[f"{view}_target_std"] = target.var(dim=-1).sqrt().mean().detach()
            target = target[masks[view]].view(pred.shape)
            loss = F.mse_loss(pred.float(), target.float())  # NaN when nothing is masked in this view
            metrics[f"{view}_mse_loss"] = loss.detach()
            if torch.isfinite(loss):
                losses.append(loss)
            preds[view] = pred
        loss = torch.stack(losses).mean() if losses else decoded.new_tensor(float("nan"))
        metrics["loss"] = loss.detach()
        return loss, preds, masks, metrics

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | MAEModelConfig) -> CineMA:
        """Build from an official pre-training config.yaml dict (or its typed config, see
        :mod:`cinema.config.official`)."""
        if not isinstance(config, MAEModelConfig):
            config = MAEModelConfig.from_dict(config)
        model = cls(**config.model_kwargs())
        model.config = config.to_dict()
        return model
