"""Which numeric precision inference runs in: fp32, or bf16 autocast where the CPU computes bf16 natively.

On a CPU, bf16 can pay off only with AMX (Intel Sapphire Rapids and later) or AVX-512 BF16 (e.g. AMD Zen 4 and
later); elsewhere PyTorch emulates it and it is several times slower than fp32, so ``auto`` never picks it there.
Measured with the shipped ensemble on a 2-core AMD EPYC with AVX-512 BF16 (docs/model-card.md, "Precision and
engines"): 1.7-2.0x faster end to end on 20- and 30-frame cines, held-out ACDC mean Dice unchanged at 4 decimals and
LVEF / RVEF mean absolute errors within 0.02 points of fp32, so ``auto`` -- the default -- picks bf16 on CPUs with
either instruction set. ``--precision fp32`` gives the same numbers on every machine; on CUDA ``auto`` keeps fp32.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

__all__ = ["AUTO_BF16_FLAGS", "BF16_CPU_FLAGS", "PRECISIONS", "cpu_flags", "cpu_has_native_bf16", "resolve_precision"]

PRECISIONS = ("auto", "fp32", "bf16")
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # native bf16 arithmetic
AUTO_BF16_FLAGS = BF16_CPU_FLAGS  # where `auto` picks bf16: every native-bf16 CPU, as measured


@functools.cache
def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags from the kernel (Linux); empty elsewhere or when unreadable."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[-1].split())
    return frozenset()


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU computes bf16 natively (AMX or AVX-512 BF16); False where the flags cannot be read."""
    return any(flag in cpu_flags(cpuinfo) for flag in BF16_CPU_FLAGS)


def _auto_picks_bf16() -> bool:
    return any(flag in cpu_flags() for flag in AUTO_BF16_FLAGS)


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``fp32`` or ``bf16`` for `precision` (``auto``, ``fp32`` or ``bf16``) on `device`.

    ``auto`` is bf16 on a CPU with AMX or AVX-512 BF16 and fp32 everywhere else.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    return "bf16" if torch.device(device).type == "cpu" and _auto_picks_bf16() else "fp32"
