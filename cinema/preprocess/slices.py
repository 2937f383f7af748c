"""2.5-D input for slice-wise SAX networks: each slice together with its neighbours along z as channels.

A 2-D network sees one short-axis slice and cannot tell the last slice below the mitral valve from the atrium above
it, or the apical cap from the slice under it. Giving it ``k`` neighbouring slices on each side (zeros past either
end of the stack, so the network also knows where the stack stops) adds that context at the cost of a wider first
convolution only. The same function builds the training samples, the validation input and `cinema segment`'s input,
so all three agree on the channel order: ``z - k, ..., z, ..., z + k``.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["neighbour_slices"]

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def neighbour_slices(volume: ArrayT, context: int) -> ArrayT:
    """(..., Z) -> (..., Z, 2 * context + 1): entry ``[..., z, j]`` is slice ``z + j - context``, 0 past the ends.

    Works on numpy arrays and torch tensors alike; ``context=0`` just adds the channel axis.
    """
    if context < 0:
        raise ValueError(f"context must be >= 0 slices, got {context}")
    depth = volume.shape[-1]
    if isinstance(volume, torch.Tensor):
        padded = F.pad(volume, (context, context))
        return torch.stack([padded[..., j : j + depth] for j in range(2 * context + 1)], dim=-1)
    pad = [(0, 0)] * (volume.ndim - 1) + [(context, context)]
    padded = np.pad(volume, pad)
    return np.stack([padded[..., j : j + depth] for j in range(2 * context + 1)], axis=-1)
