"""Which numeric precision inference runs in: fp32, or bf16 autocast where the hardware computes bf16 natively.

On a CPU, bf16 pays off only with AMX (Intel Sapphire Rapids and later) or AVX-512 BF16 (e.g. AMD Zen 4); elsewhere
PyTorch emulates it and is several times slower than fp32, so "auto" never picks it there. On CUDA "auto" keeps fp32:
GPU users choose bf16 explicitly. Speed and accuracy of each choice for the shipped model: docs/model-card.md.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

__all__ = ["BF16_CPU_FLAGS", "PRECISIONS", "cpu_has_native_bf16", "resolve_precision"]

PRECISIONS = ("auto", "fp32", "bf16")
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.cache
def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU computes bf16 natively (AMX or AVX-512 BF16), read from the kernel's CPU flags (Linux).

    Elsewhere (macOS, Windows, an unreadable cpuinfo) the answer is False: fp32 is never the slow choice.
    """
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return any(flag in line.split(":", 1)[-1].split() for flag in BF16_CPU_FLAGS)
    return False


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``fp32`` or ``bf16`` for `precision` (``auto``, ``fp32`` or ``bf16``) on `device`.

    ``auto`` is bf16 on a CPU with native bf16 and fp32 everywhere else.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    return "bf16" if torch.device(device).type == "cpu" and cpu_has_native_bf16() else "fp32"
