"""Atomic file and folder writes: outputs appear complete or not at all.

Everything is first written under a hidden temporary name in the destination's own folder (so the final rename
stays on one file system and is atomic), then moved into place with `os.replace`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO


def _temporary_sibling(path: Path, tag: str) -> Path:
    # Keep the real suffixes (".nii.gz") last so tools that pick a format from the name still work on the temp file.
    return path.with_name(f".{tag}-{uuid.uuid4().hex[:12]}-{path.name}")


def write_stream_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> Path:
    """Call ``write(file)`` on a temporary file in `path`'s folder, flush it to disk, then rename it into place: a
    process killed at any instant (SIGKILL included) leaves the old file or the new one, never a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_sibling(path, "tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return path


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file in the same folder, then rename it into place."""
    return write_stream_atomic(path, lambda f: f.write(data))


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def is_nonempty_dir(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


@contextlib.contextmanager
def atomic_directory(out_dir: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `out_dir`; on success it replaces `out_dir`, on failure it is removed.

    An existing non-empty `out_dir` is refused unless `force`; with `force` it is swapped out only after the new
    content is complete, so a failure leaves the old content untouched.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir}: output path exists and is not a folder")
    if is_nonempty_dir(out_dir) and not force:
        raise ValueError(f"{out_dir}: output folder exists and is not empty (use --force to overwrite)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_sibling(out_dir, "tmp")
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out_dir.exists():
        old = _temporary_sibling(out_dir, "old")
        os.replace(out_dir, old)
    try:
        os.replace(tmp, out_dir)
    except BaseException:
        if old is not None:
            os.replace(old, out_dir)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
