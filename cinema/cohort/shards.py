"""Which exams this process analyses when a cohort is spread over many nodes, and on which device.

The shard is ``--shard I/N`` (0-based I) when given, else taken from the environment of a SLURM job array
(``SLURM_ARRAY_TASK_ID`` / ``SLURM_ARRAY_TASK_COUNT``, with ``SLURM_ARRAY_TASK_MIN`` and ``SLURM_ARRAY_TASK_STEP`` so
that ``--array=1-8`` or ``--array=0-14:2`` work), else from torchrun (``RANK`` / ``WORLD_SIZE``), else 0/1. Shard I of
N takes the exams whose position in the id-sorted list is I modulo N: every process computes the same split from the
same inputs, with no coordination. ``--device cuda`` under torchrun picks ``cuda:LOCAL_RANK``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from cinema.io.errors import InputError

__all__ = ["Shard", "parse_shard", "resolve_device", "select_shard", "shard_items"]

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count` (0-based), and where that came from (for messages)."""

    index: int
    count: int
    source: str = field(default="--shard", compare=False)

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise InputError(f"shard {self.index}/{self.count} ({self.source}): expected 0 <= I < N")

    @property
    def folder_name(self) -> str:
        """Where a shard of a cohort split in several writes, inside OUT (a cohort of one shard is OUT itself)."""
        return f"shard-{self.index}-of-{self.count}"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """``"I/N"`` -> `Shard` (0-based I)."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if match is None:
        raise InputError(f"--shard {text!r}: expected I/N with 0 <= I < N, e.g. --shard 0/4")
    return Shard(int(match.group(1)), int(match.group(2)), "--shard")


def _int(environ: Mapping[str, str], name: str, default: int | None = None) -> int | None:
    value = environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise InputError(f"environment variable {name}={value!r} is not an integer") from None


def select_shard(shard: str | None = None, environ: Mapping[str, str] | None = None) -> Shard:
    """The shard of this process: ``--shard``, else a SLURM array task, else a torchrun rank, else 0/1."""
    environ = os.environ if environ is None else environ
    if shard:
        return parse_shard(shard)
    task, count = _int(environ, "SLURM_ARRAY_TASK_ID"), _int(environ, "SLURM_ARRAY_TASK_COUNT")
    if task is not None and count is not None:
        low = _int(environ, "SLURM_ARRAY_TASK_MIN", 0)
        step = _int(environ, "SLURM_ARRAY_TASK_STEP", 1) or 1
        if (task - low) % step:
            raise InputError(
                f"SLURM array task {task} is not on the array's grid (min {low}, step {step}); pass --shard I/N"
            )
        index = (task - low) // step
        if not 0 <= index < count:
            raise InputError(
                f"SLURM array task {task} is task {index} of an array of {count} (min {low}, step {step}): use a "
                "contiguous array such as --array=0-{count - 1}, or pass --shard I/N"
            )
        return Shard(index, count, "SLURM array")
    rank, world = _int(environ, "RANK"), _int(environ, "WORLD_SIZE")
    if rank is not None and world is not None:
        return Shard(rank, world, "torchrun")
    return Shard(0, 1, "single")


def shard_items(ids: Sequence[T], shard: Shard, key=None) -> list[T]:  # noqa: ANN001 (a sort key like sorted's)
    """The items of `shard`: every N-th of the sorted items, starting at I."""
    return sorted(ids, key=key)[shard.index :: shard.count]


def resolve_device(device: str, environ: Mapping[str, str] | None = None) -> str:
    """``cuda`` under torchrun means ``cuda:LOCAL_RANK`` (one GPU per rank); any other device is kept as given."""
    environ = os.environ if environ is None else environ
    local = _int(environ, "LOCAL_RANK")
    if device == "cuda" and local is not None:
        return f"cuda:{local}"
    return device
