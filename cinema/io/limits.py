"""How many bytes a reader may decode from one input file: memory bounded by the data, not by a header's claim.

A 1 kB NIfTI header can claim a 2048×2048×16×32 array; a small zip can hold DICOM pixel data that inflates to
gigabytes. Readers check the size a header announces against two bounds before allocating anything:

- the file itself: uncompressed voxel data can never be larger than the bytes that follow the header, and a
  compressed stream is decoded in chunks and stopped as soon as it passes the announced size;
- a cap on the decoded bytes of one image file: `CINEMA_MAX_IMAGE_MB` (default 4096 MB), lowered inside a
  `decoded_byte_limit(...)` block (the web server runs each job under its `--max-unpacked-mb`).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator

from cinema.io.errors import InputError

MB = 1024 * 1024
DEFAULT_MAX_IMAGE_MB = 4096
ENV_MAX_IMAGE_MB = "CINEMA_MAX_IMAGE_MB"

_limit: contextvars.ContextVar[int | None] = contextvars.ContextVar("cinema_decoded_byte_limit", default=None)


def max_decoded_bytes() -> int:
    """The largest number of bytes one image file may decode to here (the tighter of the block's and the env's)."""
    text = os.environ.get(ENV_MAX_IMAGE_MB, "").strip()
    try:
        env_bytes = int(float(text) * MB) if text else DEFAULT_MAX_IMAGE_MB * MB
    except ValueError as err:
        raise InputError(f"{ENV_MAX_IMAGE_MB}={text!r} is not a number of megabytes") from err
    block = _limit.get()
    return env_bytes if block is None else min(env_bytes, block)


@contextlib.contextmanager
def decoded_byte_limit(n_bytes: int) -> Iterator[None]:
    """Within this block no single image file may decode to more than `n_bytes` (nested blocks keep the tighter)."""
    current = _limit.get()
    token = _limit.set(n_bytes if current is None else min(current, n_bytes))
    try:
        yield
    finally:
        _limit.reset(token)


def format_bytes(n_bytes: float) -> str:
    """A size a person reads at a glance ("1.5 GB", "312 kB"), whatever its magnitude."""
    value = float(n_bytes)
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if abs(value) < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def check_decoded_size(source: object, n_bytes: int, what: str = "image data") -> None:
    """Refuse (ValueError naming `source`) before allocating `n_bytes` above the decoded-size cap."""
    limit = max_decoded_bytes()
    if n_bytes > limit:
        raise InputError(
            f"{source}: {what} would take {format_bytes(n_bytes)} in memory, more than the limit of "
            f"{format_bytes(limit)} per image file (raise it with {ENV_MAX_IMAGE_MB} if the file is genuine)"
        )


def read_error(source: object, err: OSError) -> InputError:
    """The error for a file the system will not let us read: named to the user, never silently skipped."""
    if isinstance(err, PermissionError):
        reason = "permission denied"
    else:
        reason = (err.strerror or str(err) or type(err).__name__).rstrip(".").lower()
    return InputError(f"{source}: cannot read: {reason}")


def out_of_memory(source: object, n_bytes: int, what: str = "image data") -> ValueError:
    """The ValueError for a MemoryError while decoding `source`: says what it tried to allocate."""
    return ValueError(
        f"{source}: not enough memory for {what} ({format_bytes(n_bytes)}); free memory or read a smaller file"
    )
