"""Atomic, owned outputs: files and folders appear complete or not at all, and nothing a user made is ever replaced.

Everything is first written under a hidden temporary name in the destination's own folder (so the final rename
stays on one file system and is atomic), then moved into place with `os.replace`. Temporary names carry the
writer's host and process id, so a later run removes the leftovers of a writer that was killed (SIGKILL, node
loss) and never those of a writer still running.

The output-safety rule every command that writes follows (`check_output`):

- an output never is or holds one of the command's inputs, and an output folder never lies inside an input
  folder (`cinema analyze EXAM -o .. --force` must not swap out the folder that holds EXAM);
- an existing non-empty output is refused without ``force``; with ``force`` a folder is replaced only when it holds
  the `OUTPUT_MARKER` file that every folder written here carries, and a file only when the caller recognises it
  as its own (a NIfTI cinema wrote, an index `cinema index` wrote);
- a file output that is an existing folder (or the reverse) is one clear error before any work starts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from cinema.io.errors import InputError

__all__ = [
    "OUTPUT_MARKER",
    "OutputRefused",
    "atomic_directory",
    "check_apart_from_inputs",
    "check_output",
    "clean_stale_temporaries",
    "is_cinema_output_folder",
    "is_nonempty_dir",
    "write_bytes_atomic",
    "write_stream_atomic",
    "write_text_atomic",
]

OUTPUT_MARKER = ".cinema-output"
_TEMP_TAGS = ("tmp", "old")


class OutputRefused(InputError):
    """An output path that would replace or hold something cinema did not write; nothing has been written."""


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _temporary_sibling(path: Path, tag: str) -> Path:
    # Keep the real suffixes (".nii.gz") last so tools that pick a format from the name still work on the temp file.
    return path.with_name(f".{tag}-{_host_tag()}-{os.getpid()}-{uuid.uuid4().hex[:12]}-{path.name}")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def clean_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary siblings of `path` left by killed writers on this host; returns what was removed.

    Only names of our own pattern for this exact `path`, made on this host by a process that no longer exists, are
    touched: a writer still running (or one on another node of a shared file system) keeps its temporaries.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    pattern = re.compile(rf"^\.({'|'.join(_TEMP_TAGS)})-([0-9a-f]{{8}})-(\d+)-[0-9a-f]{{12}}-{re.escape(path.name)}$")
    removed = []
    host = _host_tag()
    for sibling in path.parent.iterdir():
        match = pattern.match(sibling.name)
        if match is None or match.group(2) != host or _process_alive(int(match.group(3))):
            continue
        if sibling.is_dir() and not sibling.is_symlink():
            shutil.rmtree(sibling, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                sibling.unlink()
        removed.append(sibling)
    return removed


def write_stream_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> Path:
    """Call ``write(file)`` on a temporary file in `path`'s folder, flush it to disk, then rename it into place: a
    process killed at any instant (SIGKILL included) leaves the old file or the new one, never a torn file."""
    path = Path(path)
    if path.is_dir():
        raise OutputRefused(f"{path}: is a folder, expected a file name to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(path)
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


def is_cinema_output_folder(path: str | os.PathLike) -> bool:
    """True for a folder a cinema command wrote (it holds `OUTPUT_MARKER`)."""
    return (Path(path) / OUTPUT_MARKER).is_file()


def _related(output: Path, source: Path, folder: bool) -> str | None:
    """How `output` (resolved) would touch input `source` (resolved), or None when it would not.

    A new file inside an input folder changes nothing that is read; a folder output there is refused all the same,
    because replacing it with --force would swap out part of the input."""
    if output == source:
        return "is the input"
    if output in source.parents:
        return "holds the input"
    if folder and source.is_dir() and source in output.parents:
        return "lies inside the input folder"
    return None


def check_apart_from_inputs(output: str | os.PathLike, inputs: Iterable[str | os.PathLike], *, folder: bool) -> None:
    """Refuse an output that is or holds one of `inputs` (or, for a folder, lies inside an input folder).

    Commands that add files to a folder over time (training runs) check this alone: they never replace a folder.
    """
    output = Path(output)
    resolved = output.resolve()
    for source in inputs:
        relation = _related(resolved, Path(source).resolve(), folder)
        if relation is not None:
            raise OutputRefused(f"{output}: the output {relation} ({source}); choose an output outside the input")


def check_output(
    output: str | os.PathLike,
    inputs: Iterable[str | os.PathLike] = (),
    *,
    folder: bool,
    force: bool = False,
    is_own_file: Callable[[Path], bool] | None = None,
) -> Path:
    """Refuse (`OutputRefused`, naming the path) an output that would break the output-safety rule (module notes).

    Call it before any work, so a bad OUT costs nothing; the atomic writers call it again at write time.
    `inputs` are every file or folder the command reads; `folder` says whether the output is a folder or a file;
    `is_own_file` tells whether an existing output file is one this command wrote (without it, files are never
    replaced).
    """
    output = Path(output)
    check_apart_from_inputs(output, inputs, folder=folder)
    if folder:
        if output.exists() and not output.is_dir():
            raise OutputRefused(f"{output}: exists and is not a folder")
        if is_nonempty_dir(output):
            if not force:
                raise OutputRefused(f"{output}: folder exists and is not empty (use --force to replace it)")
            if not is_cinema_output_folder(output):
                raise OutputRefused(
                    f"{output}: folder exists and was not written by cinema (no {OUTPUT_MARKER} file in it); "
                    "--force only replaces cinema's own outputs: remove it yourself or choose another output"
                )
    else:
        if output.is_dir():
            raise OutputRefused(f"{output}: is a folder, expected a file name to write")
        if output.exists():
            if not force:
                raise OutputRefused(f"{output}: exists (use --force to replace it)")
            if is_own_file is None or not is_own_file(output):
                raise OutputRefused(
                    f"{output}: exists and was not written by this command; --force only replaces cinema's own "
                    "outputs: remove it yourself or choose another name"
                )
    # Outputs are made beside their final name and renamed into place: the folder they go in must be writable.
    home = output.absolute().parent
    while not home.exists() and home != home.parent:
        home = home.parent
    if not home.is_dir():
        raise OutputRefused(f"{output}: cannot be created: {home} is not a folder")
    if not os.access(home, os.W_OK | os.X_OK):
        raise OutputRefused(f"{output}: cannot write in {home} (permission denied)")
    return output


def _marker_text(command: str | None) -> str:
    from cinema import __version__

    return json.dumps({"written_by": "cinema", "version": __version__, "command": command}) + "\n"


@contextlib.contextmanager
def atomic_directory(
    out_dir: str | os.PathLike,
    force: bool = False,
    inputs: Iterable[str | os.PathLike] = (),
    command: str | None = None,
) -> Iterator[Path]:
    """Yield a temporary folder beside `out_dir`; on success it replaces `out_dir`, on failure it is removed.

    `out_dir` is checked with `check_output` (folder, `inputs`, `force`): an existing non-empty folder is replaced
    only with `force` and only when cinema wrote it, and it is swapped out only after the new content is complete,
    so a failure leaves the old content untouched. The new folder carries `OUTPUT_MARKER`.
    """
    out_dir = Path(out_dir)
    inputs = list(inputs)
    check_output(out_dir, inputs, folder=True, force=force)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(out_dir)
    tmp = _temporary_sibling(out_dir, "tmp")
    tmp.mkdir()
    try:
        yield tmp
        (tmp / OUTPUT_MARKER).write_text(_marker_text(command), encoding="utf-8")
        check_output(out_dir, inputs, folder=True, force=force)  # the world may have changed during the work
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
