"""What machine a benchmark ran on, for the line every benchmark prints above its table."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux)."""
    for line in _cpuinfo():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def bf16_flags() -> list[str]:
    """Which of the native-bf16 CPU flags (`cinema.models.precision.BF16_CPU_FLAGS`) this CPU has."""
    from cinema.models.precision import BF16_CPU_FLAGS, cpu_flags

    return [flag for flag in BF16_CPU_FLAGS if flag in cpu_flags()]


def describe() -> str:
    """One line: CPU, logical CPUs, bf16 support and the load average when the benchmark started."""
    bf16 = ", ".join(bf16_flags()) or "no bf16 instructions"
    return f"CPU: {cpu_name()} ({os.cpu_count()} logical CPUs; {bf16}), load average {os.getloadavg()[0]:.1f}"


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []
