"""ResNet baseline for classification and regression: 2-D (LAX, torchvision layout) and 3-D (SAX).

State-dict names follow torchvision's ResNet (``conv1``, ``bn1``, ``layer<k>.<i>.{conv,bn}<j>``,
``layer<k>.<i>.downsample.{0,1}``, ``fc``), which the CineMA reference uses for 2-D and mirrors in 3-D, so its
checkpoints load unchanged. The 3-D model is the same network with 3-D convs: its stem (7³ conv, stride 2, then a
3³ max-pool, stride 2) also halves the slice axis twice, as in the reference. Frames (ED, ES) are input channels.

Published sizes with ``layer_inplanes`` (64, 128, 256, 512) and 2 input frames: ResNet-50 3-D with 5 classes has
46,187,269 parameters; 2-D with 6 classes has 23,517,190.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from cinema.config.official import ResNetModelConfig

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet_config", "RESNET_N_BLOCKS"]

# Blocks per stage for each depth; depths below 50 use BasicBlock, 50 and above Bottleneck (as torchvision).
RESNET_N_BLOCKS: dict[int, tuple[int, int, int, int]] = {
    10: (1, 1, 1, 1),
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
    200: (3, 24, 36, 3),
}


def _conv(n_dims: int, in_chans: int, out_chans: int, kernel_size: int, stride: int = 1) -> nn.Module:
    conv = nn.Conv2d if n_dims == 2 else nn.Conv3d
    # Bias-free: every conv is followed by BatchNorm, whose shift makes a bias redundant.
    return conv(in_chans, out_chans, kernel_size, stride=stride, padding=kernel_size // 2, bias=False)


def _batch_norm(n_dims: int, n_chans: int) -> nn.Module:
    return nn.BatchNorm2d(n_chans) if n_dims == 2 else nn.BatchNorm3d(n_chans)


class BasicBlock(nn.Module):
    """Two 3×3(×3) convs with a residual connection (ResNet-10/18/34)."""

    expansion = 1

    def __init__(self, n_dims: int, in_chans: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv(n_dims, in_chans, planes, 3, stride)
        self.bn1 = _batch_norm(n_dims, planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv(n_dims, planes, planes, 3)
        self.bn2 = _batch_norm(n_dims, planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1×1 reduce → 3×3 (carrying the stride, "ResNet v1.5") → 1×1 expand ×4, with a residual connection."""

    expansion = 4

    def __init__(self, n_dims: int, in_chans: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv(n_dims, in_chans, planes, 1)
        self.bn1 = _batch_norm(n_dims, planes)
        self.conv2 = _conv(n_dims, planes, planes, 3, stride)
        self.bn2 = _batch_norm(n_dims, planes)
        self.conv3 = _conv(n_dims, planes, planes * self.expansion, 1)
        self.bn3 = _batch_norm(n_dims, planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def resnet_config(
    view: str = "sax",
    in_chans: int = 1,
    n_frames: int = 2,
    out_chans: int = 5,
    depth: int = 50,
    layer_inplanes: Sequence[int] = (64, 128, 256, 512),
    task: str = "classification",
) -> dict[str, Any]:
    """Official-layout config (``model.name: resnet``) for :meth:`ResNet.from_config`.

    The output size is stored as ``model.out_chans``; official task configs instead derive it from
    ``data.class_column`` (number of classes) or ``data.regression_column`` (1), which :meth:`ResNet.from_config`
    also reads.
    """
    return ResNetModelConfig(
        view=view,
        in_chans=in_chans,
        out_chans=out_chans,
        n_frames=n_frames,
        depth=depth,
        layer_inplanes=list(layer_inplanes),
        task=task,
    ).to_dict()


class ResNet(nn.Module):
    """ResNet for 2-D (``n_dims=2``) or 3-D images: ``forward(x (B, C, *spatial))`` → logits ``(B, out_chans)``.

    Also accepts ``{view: x}`` (exactly one view) like ConvViT, returning the same ``(B, out_chans)`` tensor.
    """

    def __init__(
        self,
        n_dims: int,
        in_chans: int,
        out_chans: int,
        depth: int = 50,
        layer_inplanes: Sequence[int] = (64, 128, 256, 512),
        view: str | None = None,
    ) -> None:
        super().__init__()
        if n_dims not in (2, 3):
            raise ValueError(f"n_dims must be 2 or 3, got {n_dims}")
        if depth not in RESNET_N_BLOCKS:
            raise ValueError(f"ResNet depth must be one of {sorted(RESNET_N_BLOCKS)}, got {depth}")
        layer_inplanes = tuple(int(c) for c in layer_inplanes)
        if len(layer_inplanes) != 4:
            raise ValueError(f"layer_inplanes must list 4 channel counts, got {list(layer_inplanes)}")
        self.n_dims = n_dims
        self.in_chans = int(in_chans)
        self.out_chans = int(out_chans)
        self.view = view if view is not None else ("sax" if n_dims == 3 else "lax_4c")
        block = BasicBlock if depth < 50 else Bottleneck

        self.conv1 = _conv(n_dims, in_chans, layer_inplanes[0], 7, stride=2)
        self.bn1 = _batch_norm(n_dims, layer_inplanes[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = (nn.MaxPool2d if n_dims == 2 else nn.MaxPool3d)(kernel_size=3, stride=2, padding=1)
        chans = layer_inplanes[0]
        for i, (planes, n_blocks) in enumerate(zip(layer_inplanes, RESNET_N_BLOCKS[depth], strict=True)):
            stage, chans = self._make_stage(block, chans, planes, n_blocks, stride=1 if i == 0 else 2)
            self.add_module(f"layer{i + 1}", stage)
        self.avgpool = (nn.AdaptiveAvgPool2d if n_dims == 2 else nn.AdaptiveAvgPool3d)(1)
        self.fc = nn.Linear(chans, out_chans)

        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

        #: official-format config (what :func:`cinema.models.checkpoint.save_model` writes as config.yaml)
        self.config: dict[str, Any] = resnet_config(
            view=self.view,
            in_chans=in_chans,
            n_frames=1,
            out_chans=out_chans,
            depth=depth,
            layer_inplanes=layer_inplanes,
        )

    def _make_stage(
        self, block: type[BasicBlock | Bottleneck], in_chans: int, planes: int, n_blocks: int, stride: int
    ) -> tuple[nn.Sequential, int]:
        out_chans = planes * block.expansion
        downsample = None
        if stride != 1 or in_chans != out_chans:
            downsample = nn.Sequential(
                _conv(self.n_dims, in_chans, out_chans, 1, stride), _batch_norm(self.n_dims, out_chans)
            )
        blocks = [block(self.n_dims, in_chans, planes, stride, downsample)]
        blocks += [block(self.n_dims, out_chans, planes) for _ in range(1, n_blocks)]
        return nn.Sequential(*blocks), out_chans

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | ResNetModelConfig) -> ResNet:
        """Build from an official-layout config (``model.name: resnet``; see :func:`resnet_config`) or its typed config.

        As in the reference: 3-D for the ``sax`` view, 2-D otherwise; input channels are
        ``data.{sax|lax}.in_chans × model.n_frames``; the output size is the length of the class list named by
        ``data.class_column``, else 1 when ``data.regression_column`` is set, else ``model.out_chans``.
        """
        if not isinstance(config, ResNetModelConfig):
            config = ResNetModelConfig.from_dict(config)
        model = cls(**config.model_kwargs())
        model.config = config.to_dict()
        return model

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ValueError unless x is (B, in_chans, *spatial) with this model's number of spatial dims."""
        if x.ndim != self.n_dims + 2:
            raise ValueError(
                f"ResNet ({self.n_dims}-D) expects input (batch, {self.in_chans}, *{self.n_dims} spatial dims), "
                f"got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_chans:
            raise ValueError(
                f"ResNet expects {self.in_chans} input channels (frames × channels), got {x.shape[1]} "
                f"(shape {tuple(x.shape)})"
            )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Globally average-pooled last-stage features, (B, layer_inplanes[3] × expansion)."""
        self.check_input(x)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor | Mapping[str, torch.Tensor]) -> torch.Tensor:
        if isinstance(x, Mapping):
            if len(x) != 1:
                raise ValueError(f"ResNet takes exactly one view, got {len(x)}: {sorted(x)}")
            (x,) = x.values()
        return self.fc(self.forward_features(x))
