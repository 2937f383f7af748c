"""Convolutional building blocks shared by every CineMA model family (2-D LAX and 3-D SAX).

State-dict names follow the released CineMA checkpoints (norm1/conv1/norm2/conv2/shortcut, dw_conv, mlp.fc1/fc2, ...),
so official weights load without renaming. Every block takes ``n_dims`` (2 or 3) and builds the matching conv class.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

KernelSize = int | Sequence[int]

__all__ = [
    "ConvLayerNorm",
    "ConvMlp",
    "ConvNormAct",
    "ConvResBlock",
    "DropPath",
    "MaskedConvBlock",
    "conv_cls",
    "conv_norm",
    "conv_transpose_cls",
    "depthwise_conv",
    "drop_path",
    "maybe_checkpoint",
    "set_grad_ckpt",
]


def _check_n_dims(n_dims: int) -> None:
    if n_dims not in (2, 3):
        raise ValueError(f"n_dims must be 2 or 3, got {n_dims}")


def conv_cls(n_dims: int) -> type[nn.Conv2d] | type[nn.Conv3d]:
    """Return nn.Conv2d or nn.Conv3d for ``n_dims`` spatial dimensions."""
    _check_n_dims(n_dims)
    return nn.Conv2d if n_dims == 2 else nn.Conv3d


def conv_transpose_cls(n_dims: int) -> type[nn.ConvTranspose2d] | type[nn.ConvTranspose3d]:
    """Return nn.ConvTranspose2d or nn.ConvTranspose3d for ``n_dims`` spatial dimensions."""
    _check_n_dims(n_dims)
    return nn.ConvTranspose2d if n_dims == 2 else nn.ConvTranspose3d


def maybe_checkpoint(module: nn.Module, fn: Callable[..., torch.Tensor], *args: torch.Tensor | None) -> torch.Tensor:
    """Run ``fn(*args)``, under activation checkpointing when ``module.grad_ckpt`` is set and we are training.

    Checkpointing whole blocks (not single layers) trades one extra forward of the block for not storing its
    internals; at inference (eval mode or no grad) it would only cost time, so it is skipped there.
    """
    if getattr(module, "grad_ckpt", False) and module.training and torch.is_grad_enabled():
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def set_grad_ckpt(model: nn.Module, enable: bool = True) -> None:
    """Switch per-block gradient checkpointing on or off for every block of ``model`` that supports it."""
    for module in model.modules():
        if hasattr(module, "grad_ckpt"):
            module.grad_ckpt = bool(enable)


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop the whole residual branch per sample, rescaling the kept ones."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    return x * x.new_empty(shape).bernoulli_(keep).div_(keep)


class DropPath(nn.Module):
    """Module wrapper of :func:`drop_path` (identity in eval mode or when ``p == 0``)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ConvLayerNorm(nn.LayerNorm):
    """LayerNorm over the channel axis of a (B, C, *spatial) map, 2-D or 3-D (eps 1e-6 as in ConvMAE)."""

    def __init__(self, n_chans: int, eps: float = 1e-6) -> None:
        super().__init__(n_chans, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise channel-last and hand back a channel-first view: a permuted view costs nothing, and convolutions
        # accept it directly (it is channels_last-contiguous), so no copy is made here.
        x = x.movedim(1, -1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.movedim(-1, 1)


def conv_norm(n_dims: int, n_chans: int, norm: str = "layer", eps: float = 1e-6) -> nn.Module:
    """Normalisation layer for conv feature maps: ``"layer"`` (ConvLayerNorm) or ``"instance"`` (no affine)."""
    _check_n_dims(n_dims)
    if norm == "layer":
        return ConvLayerNorm(n_chans, eps=eps)
    if norm == "instance":
        return (nn.InstanceNorm2d if n_dims == 2 else nn.InstanceNorm3d)(n_chans, eps=eps)
    raise ValueError(f"norm must be 'layer' or 'instance', got {norm!r}")


class ConvNormAct(nn.Module):
    """conv → norm → GELU (state keys ``conv``, ``norm``)."""

    def __init__(
        self,
        n_dims: int,
        in_chans: int,
        out_chans: int,
        norm: str = "layer",
        kernel_size: KernelSize = 3,
        stride: KernelSize = 1,
        padding: str | int | Sequence[int] = "same",
    ) -> None:
        super().__init__()
        self.conv = conv_cls(n_dims)(in_chans, out_chans, kernel_size=kernel_size, stride=stride, padding=padding)
        self.norm = conv_norm(n_dims, out_chans, norm)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class ConvResBlock(nn.Module):
    """Pre-activation residual block: norm → GELU → conv → norm → GELU → dropout → conv, plus shortcut.

    The shortcut is a 1×1 conv only when ``in_chans != out_chans`` (e.g. the image block 1 → 32), else identity.
    """

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        n_dims: int,
        norm: str = "layer",
        dropout: float = 0.0,
        kernel_size: KernelSize = 3,
    ) -> None:
        super().__init__()
        conv = conv_cls(n_dims)
        # registration order = state-dict order of the released checkpoints
        self.norm1 = conv_norm(n_dims, in_chans, norm)
        self.norm2 = conv_norm(n_dims, out_chans, norm)
        self.conv1 = conv(in_chans, out_chans, kernel_size=kernel_size, padding="same")
        self.conv2 = conv(out_chans, out_chans, kernel_size=kernel_size, padding="same")
        self.act = nn.GELU()
        self.dropout = nn.Dropout(dropout)
        self.shortcut = conv(in_chans, out_chans, kernel_size=1) if in_chans != out_chans else nn.Identity()
        self.grad_ckpt = False

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act(self.norm1(x)))
        h = self.conv2(self.dropout(self.act(self.norm2(h))))
        return h + self.shortcut(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return maybe_checkpoint(self, self._forward, x)


class ConvMlp(nn.Module):
    """1×1 conv → GELU → dropout → 1×1 conv → dropout (keys ``fc1``, ``fc2``)."""

    def __init__(self, n_dims: int, n_chans: int, hidden_chans: int, dropout: float = 0.0) -> None:
        super().__init__()
        conv = conv_cls(n_dims)
        self.fc1 = conv(n_chans, hidden_chans, kernel_size=1)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(dropout)
        self.fc2 = conv(hidden_chans, n_chans, kernel_size=1)
        self.drop2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class _DepthwiseConvFunction(torch.autograd.Function):
    """Stride-1 'same' depthwise conv whose backward avoids PyTorch's CPU depthwise-3D backward.

    On CPU that backward (oneDNN reference path) is ~25-100× slower than the forward and dominated a CineMA training
    step. Here grad-input is the forward conv with the flipped kernel, and grad-weight is one grouped conv that
    correlates each (sample, channel) of the padded input with its output gradient. Computed in float32; the output
    and input gradient come back in the input's dtype (bf16 under autocast).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        n_dims = x.ndim - 2
        pad = [(k - 1) // 2 for k in weight.shape[2:]]
        conv = F.conv2d if n_dims == 2 else F.conv3d
        with torch.autocast(x.device.type, enabled=False):
            xf, wf = x.float(), weight.float()
            out = conv(xf, wf, None if bias is None else bias.float(), padding=pad, groups=x.shape[1])
        ctx.save_for_backward(xf, wf)
        ctx.has_bias, ctx.x_dtype = bias is not None, x.dtype
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        xf, wf = ctx.saved_tensors
        n_dims, (batch, chans) = xf.ndim - 2, xf.shape[:2]
        pad = [(k - 1) // 2 for k in wf.shape[2:]]
        conv = F.conv2d if n_dims == 2 else F.conv3d
        spatial_dims = list(range(2, 2 + n_dims))
        grad = grad.float()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = conv(grad, wf.flip(spatial_dims), padding=pad, groups=chans).to(ctx.x_dtype)
        if ctx.needs_input_grad[1]:
            padded = F.pad(xf, [p for p in reversed(pad) for _ in range(2)])
            grad_w = conv(
                padded.reshape(1, batch * chans, *padded.shape[2:]),
                grad.reshape(batch * chans, 1, *grad.shape[2:]),
                groups=batch * chans,
            )
            grad_w = grad_w.reshape(batch, chans, *wf.shape[2:]).sum(0).unsqueeze(1)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(dim=[0, *spatial_dims])
        return grad_x, grad_w, grad_b


def depthwise_conv(x: torch.Tensor, conv: nn.Conv2d | nn.Conv3d) -> torch.Tensor:
    """``conv(x)`` for a stride-1, odd-kernel, 'same'-padded depthwise conv; fast backward on CPU when training."""
    if x.device.type == "cpu" and torch.is_grad_enabled() and (x.requires_grad or conv.weight.requires_grad):
        return _DepthwiseConvFunction.apply(x, conv.weight, conv.bias)
    return conv(x)


class MaskedConvBlock(nn.Module):
    """ConvMAE block: x + conv2(dw_conv(mask ⊙ conv1(norm1(x)))), then x + mlp(norm2(x)).

    The mask (1 = visible) zeroes masked positions only at the input of the depthwise 5×5(×5) conv, the one op that
    mixes neighbouring positions, so visible features never see masked content. All others are per-position.
    """

    def __init__(
        self, n_dims: int, n_chans: int, mlp_ratio: int = 4, dropout: float = 0.0, drop_path: float = 0.0
    ) -> None:
        super().__init__()
        conv = conv_cls(n_dims)
        self.norm1 = ConvLayerNorm(n_chans)
        self.norm2 = ConvLayerNorm(n_chans)
        self.conv1 = conv(n_chans, n_chans, kernel_size=1)
        self.conv2 = conv(n_chans, n_chans, kernel_size=1)
        self.dw_conv = conv(n_chans, n_chans, kernel_size=5, padding="same", groups=n_chans)
        self.mlp = ConvMlp(n_dims, n_chans, n_chans * mlp_ratio, dropout=dropout)
        self.drop_path = DropPath(drop_path)
        self.grad_ckpt = False

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, *spatial); mask (B, *spatial), 1/True = visible, or None for no masking."""
        return maybe_checkpoint(self, self._forward, x, mask)

    def _forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        h = self.conv1(self.norm1(x))
        if mask is not None:
            h = h * mask.unsqueeze(1).to(h.dtype)
        x = x + self.drop_path(self.conv2(depthwise_conv(h, self.dw_conv)))
        return x + self.drop_path(self.mlp(self.norm2(x)))
