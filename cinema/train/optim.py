"""Optimiser pieces of the fine-tuning recipe: layer-wise lr decay groups, warm-up + cosine schedule, early stopping.

Layer-wise decay follows BEiT / MAE as the reference applies it to CineMA (reference §4.1): with L transformer blocks,
parameters get the lr scale ``decay ** (L + 1 - layer_id)`` where layer 0 holds every ``enc_*`` parameter (conv
stems, patch embedding, fusion) and the cls token, ``encoder.blocks.i`` is layer i + 1, and everything else
(``encoder.norm``, decoders, heads) is layer L + 1 with scale 1. One-dimensional parameters (biases, norms) get no
weight decay; the cls token does (as in the reference).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

__all__ = ["EarlyStopping", "layer_id", "lr_at", "param_groups"]


def layer_id(name: str, n_blocks: int) -> int:
    """Layer index of a parameter for layer-wise decay (0 = stem, i + 1 = block i, n_blocks + 1 = the rest)."""
    if name.startswith("enc_"):
        return 0
    if any(key in name for key in ("cls_token", "pos_embed", "patch_embed")):
        return 0
    if name.startswith("encoder.blocks."):
        return int(name.split(".")[2]) + 1
    return n_blocks + 1


def _n_blocks(model: nn.Module) -> int | None:
    encoder = getattr(model, "encoder", None)
    blocks = getattr(encoder, "blocks", None)
    return len(blocks) if isinstance(blocks, nn.ModuleList | nn.Sequential) else None


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float | None = None) -> list[dict]:
    """AdamW parameter groups with an ``lr_scale`` each; frozen parameters are left out.

    ``layer_decay`` None or 1 (or a model without ``encoder.blocks``, e.g. UNet / ResNet) gives scale 1 everywhere.
    Groups are keyed by (layer, decay) so the optimiser state has a stable layout for checkpoints.
    """
    n_blocks = _n_blocks(model)
    use_layers = layer_decay is not None and layer_decay != 1.0 and n_blocks is not None
    groups: dict[str, dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim <= 1
        layer = layer_id(name, n_blocks) if use_layers else 0
        scale = layer_decay ** (n_blocks + 1 - layer) if use_layers else 1.0
        key = f"layer_{layer}_{'no_decay' if no_decay else 'decay'}"
        if key not in groups:
            groups[key] = {
                "name": key,
                "lr_scale": scale,
                "weight_decay": 0.0 if no_decay else weight_decay,
                "params": [],
                "param_names": [],
            }
        groups[key]["params"].append(param)
        groups[key]["param_names"].append(name)
    if not groups:
        raise ValueError("the model has no trainable parameters (everything is frozen)")
    return list(groups.values())


def lr_at(epoch: float, lr: float, min_lr: float, warmup_epochs: float, n_epochs: float) -> float:
    """Linear warm-up then half-cycle cosine to ``min_lr``, at a fractional epoch (evaluated every iteration)."""
    if epoch < warmup_epochs:
        return lr * epoch / warmup_epochs
    progress = min(1.0, (epoch - warmup_epochs) / max(n_epochs - warmup_epochs, 1e-12))
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class EarlyStopping:
    """Stop after ``patience`` evaluations without an improvement of at least ``min_delta``.

    ``improved`` is set when the metric beats the best by any margin (the checkpoint is saved then, as in the
    reference), while the patience counter only resets on an improvement of at least ``min_delta``.
    """

    mode: str = "max"
    patience: int = 5
    min_delta: float = 1e-4
    best: float | None = None
    best_epoch: int = -1
    count: int = 0
    improved: bool = False

    def __post_init__(self) -> None:
        if self.mode not in ("max", "min"):
            raise ValueError(f"early-stopping mode must be max or min, got {self.mode!r}")

    def update(self, value: float, epoch: int) -> None:
        if not math.isfinite(value):
            self.improved = False
            self.count += 1
            return
        sign = 1.0 if self.mode == "max" else -1.0
        gain = math.inf if self.best is None else sign * (value - self.best)
        self.improved = gain > 0
        if self.improved:
            self.best, self.best_epoch = value, epoch
        self.count = 0 if gain >= self.min_delta else self.count + 1

    @property
    def should_stop(self) -> bool:
        return self.count >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch, self.count = state["best"], state["best_epoch"], state["count"]
