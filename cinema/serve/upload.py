"""Turning an untrusted upload into an exam on disk, or one plain reason why not.

An upload is a zip archive (a DICOM folder, an ACDC / M&Ms folder, a `cinema convert` folder or one NIfTI file,
zipped) or a single NIfTI file (.nii or .nii.gz, recognised by its content, not its name). Everything is unpacked
into a folder the caller created for the job, and every archive member is checked before a byte is written:

- no absolute paths, drive letters, ``..`` components, NUL bytes or duplicate paths (zip slip);
- regular files and folders only: symlinks, devices and FIFOs are refused (checked in ``external_attr``);
- no encrypted members; at most `Limits.max_members` members;
- the declared uncompressed total, the bytes actually written and the decompressed size of any gzip file inside
  (a .nii.gz in the archive) are all bounded by `Limits.max_unpacked_bytes` (zip and gzip bombs).

Rejection messages never quote a member's name, since file and folder names in exams often carry patient names:
members are referred to by their position in the archive.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import stat
import struct
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Limits", "UploadRejected", "find_exam", "redact", "remove_tree", "unpack_upload"]

MB = 1024 * 1024
CHUNK = 1024 * 1024
GZIP_MAGIC = b"\x1f\x8b"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header; the end record of an empty archive
# Folders that archivers add and that are never part of an exam (macOS resource forks)
IGNORED_TOP_FOLDERS = {"__MACOSX"}
_DRIVE = re.compile(r"^[A-Za-z]:")


class UploadRejected(ValueError):
    """An upload that will not be unpacked or analysed; the message is safe to show and to log."""


@dataclass(frozen=True)
class Limits:
    """Size limits for one upload (bytes)."""

    max_upload_bytes: int = 512 * MB
    max_unpacked_bytes: int = 2048 * MB
    max_members: int = 20000


def _is_nifti1_or_2_header(head: bytes) -> bool:
    """A NIfTI-1 (348-byte header, magic at 344) or NIfTI-2 (540-byte header, magic at 4) file, either byte order."""
    if len(head) >= 348 and head[344:348] in (b"n+1\x00", b"ni1\x00"):
        return struct.unpack("<i", head[:4])[0] == 348 or struct.unpack(">i", head[:4])[0] == 348
    if len(head) >= 12 and head[4:8] in (b"n+2\x00", b"ni2\x00"):
        return struct.unpack("<i", head[:4])[0] == 540 or struct.unpack(">i", head[:4])[0] == 540
    return False


def _member_path(name: str, index: int) -> tuple[str, ...]:
    """The safe relative path components of archive member `index`, or UploadRejected."""
    where = f"archive member {index + 1}"
    if "\x00" in name:
        raise UploadRejected(f"{where} has a NUL byte in its name")
    # zip names use "/", but archivers on Windows have written "\" too: both count as separators here.
    name = name.replace("\\", "/")
    if name.startswith("/"):
        raise UploadRejected(f"{where} has an absolute path")
    if _DRIVE.match(name):
        raise UploadRejected(f"{where} has a drive letter in its path")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise UploadRejected(f"{where} has a '..' component in its path (it would be written outside the upload)")
    return parts


def _member_kind(info: zipfile.ZipInfo, index: int) -> str:
    """Whether the member is a "file" or a "folder"; UploadRejected for symlinks, devices, FIFOs, sockets."""
    mode = (info.external_attr >> 16) & 0xFFFF
    kind = stat.S_IFMT(mode)
    if kind == stat.S_IFLNK:
        raise UploadRejected(f"archive member {index + 1} is a symbolic link (links are not accepted)")
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):  # 0: no Unix mode recorded (archives made on Windows)
        raise UploadRejected(f"archive member {index + 1} is not a regular file or folder")
    return "folder" if info.is_dir() or kind == stat.S_IFDIR else "file"


def _copy_bounded(source, target, budget: int, too_big: str) -> int:
    """Copy a stream in chunks; UploadRejected(too_big) as soon as more than `budget` bytes come out of it."""
    written = 0
    while chunk := source.read(CHUNK):
        written += len(chunk)
        if written > budget:
            raise UploadRejected(too_big)
        target.write(chunk)
    return written


def _gzip_size_bounded(path: Path, budget: int, too_big: str) -> int:
    """Decompressed size of a gzip file, reading at most `budget` + 1 decompressed bytes (a gzip bomb stops early)."""
    total = 0
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                total += len(chunk)
                if total > budget:
                    raise UploadRejected(too_big)
    except (OSError, EOFError, zlib.error):
        return total  # a corrupt .gz is the reader's business: it reports it as an unreadable file
    return total


def _unpack_zip(upload: Path, dest: Path, limits: Limits) -> int:
    too_big = f"the archive unpacks to more than the {limits.max_unpacked_bytes // MB} MB limit"
    try:
        archive = zipfile.ZipFile(upload)
    except (zipfile.BadZipFile, OSError) as err:
        raise UploadRejected(f"the upload is not a readable zip archive ({type(err).__name__})") from None
    with archive:
        members = archive.infolist()
        if len(members) > limits.max_members:
            raise UploadRejected(f"the archive has {len(members)} members; the limit is {limits.max_members}")
        plan: list[tuple[zipfile.ZipInfo, tuple[str, ...], str]] = []
        seen: set[tuple[str, ...]] = set()
        declared = 0
        # Validate every member before writing anything: a hostile archive is refused whole, never half-unpacked.
        for index, info in enumerate(members):
            parts = _member_path(info.filename, index)
            kind = _member_kind(info, index)
            if info.flag_bits & 0x1:
                raise UploadRejected(f"archive member {index + 1} is encrypted")
            if not parts or parts[0] in IGNORED_TOP_FOLDERS:
                continue
            if kind == "file":
                if parts in seen:
                    raise UploadRejected(f"archive member {index + 1} repeats the path of an earlier member")
                seen.add(parts)
                declared += info.file_size
                if declared > limits.max_unpacked_bytes:
                    raise UploadRejected(too_big)
            plan.append((info, parts, kind))
        if not any(kind == "file" for _, _, kind in plan):
            raise UploadRejected("the archive holds no files")

        root = dest.resolve()
        written = 0
        for index, (info, parts, kind) in enumerate(plan):
            target = root.joinpath(*parts)
            # Belt and braces: the checks above already exclude every way out of `root`.
            if root not in target.resolve().parents:
                raise UploadRejected(f"archive member {index + 1} would be written outside the upload")
            try:
                if kind == "folder":
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as source, open(target, "xb") as out:
                    written += _copy_bounded(source, out, limits.max_unpacked_bytes - written, too_big)
            except UploadRejected:
                raise
            except (zipfile.BadZipFile, zlib.error, EOFError) as err:
                raise UploadRejected(f"archive member {index + 1} is corrupt ({type(err).__name__})") from None
            except (OSError, NotImplementedError) as err:
                # e.g. a file and a folder of the same name, a name too long, an unsupported compression method
                raise UploadRejected(f"archive member {index + 1} cannot be unpacked ({type(err).__name__})") from None
    # A .nii.gz inside the archive is decompressed again by the reader: bound that too.
    for path in _gzip_files(dest):
        written += _gzip_size_bounded(path, limits.max_unpacked_bytes - written, too_big)
    return written


def _gzip_files(folder: Path) -> Iterable[Path]:
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            with open(path, "rb") as f:
                if f.read(2) == GZIP_MAGIC:
                    yield path


def _unpack_nifti(upload: Path, dest: Path, limits: Limits, compressed: bool) -> int:
    """A single NIfTI upload, stored uncompressed as ``dest/sax.nii`` (gunzipped here, within the limit)."""
    too_big = f"the NIfTI file decompresses to more than the {limits.max_unpacked_bytes // MB} MB limit"
    target = dest / "sax.nii"
    try:
        source = gzip.open(upload, "rb") if compressed else open(upload, "rb")  # closed by the with below
        with source, open(target, "xb") as out:
            written = _copy_bounded(source, out, limits.max_unpacked_bytes, too_big)
    except (OSError, EOFError, zlib.error) as err:
        raise UploadRejected(f"the gzip upload is corrupt or truncated ({type(err).__name__})") from None
    with open(target, "rb") as f:
        if not _is_nifti1_or_2_header(f.read(348)):
            raise UploadRejected("the gzip upload does not hold a NIfTI file")
    return written


def unpack_upload(upload: str | os.PathLike, dest: str | os.PathLike, limits: Limits = Limits()) -> int:
    """Unpack the uploaded file into the empty folder `dest`; returns the unpacked size in bytes.

    Raises:
        UploadRejected: not a zip or NIfTI, or a member or size check failed; `dest` may then hold part of the
            upload (the caller removes the job folder).
    """
    upload, dest = Path(upload), Path(dest)
    with open(upload, "rb") as f:
        head = f.read(348)
    if not head:
        raise UploadRejected("the upload is empty")
    if head[:4] in ZIP_MAGICS:
        return _unpack_zip(upload, dest, limits)
    if head[:2] == GZIP_MAGIC:
        return _unpack_nifti(upload, dest, limits, compressed=True)
    if _is_nifti1_or_2_header(head):
        return _unpack_nifti(upload, dest, limits, compressed=False)
    raise UploadRejected("the upload is neither a zip archive nor a NIfTI file (.nii, .nii.gz)")


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.name not in IGNORED_TOP_FOLDERS)


def find_exam(root: str | os.PathLike) -> Path:
    """The exam inside an unpacked upload: a NIfTI file, or the folder to hand to `cinema.io.read_study`.

    Folders that only wrap one other folder (``exam.zip`` -> ``exam/``) are stepped into; a folder holding exactly
    one NIfTI file and nothing else yields that file; any other folder is read as it is (a `cinema convert`,
    ACDC or M&Ms folder by its marker files, else DICOM, searched recursively).
    """
    from cinema.io.nifti import is_nifti_path

    folder = Path(root)
    while True:
        entries = _visible(folder)
        if len(entries) == 1 and entries[0].is_dir():
            folder = entries[0]
            continue
        break
    if not entries:
        raise UploadRejected("the upload holds no files")
    if len(entries) == 1 and entries[0].is_file() and is_nifti_path(entries[0]):
        return entries[0]
    return folder


def redact(message: str, root: str | os.PathLike) -> str:
    """`message` without the job folder's path and without any file or folder name found below `root`.

    Reader errors name the offending file; names in an exam often carry patient names, so pages and logs get
    "<a file in the upload>" instead.
    """
    root = Path(root)
    names: set[str] = set()
    if root.is_dir():
        for path in root.rglob("*"):
            names.update(path.relative_to(root).parts)
    for prefix in {str(root.resolve()), str(root)}:
        message = re.sub(re.escape(prefix) + r"[^\s:,;'\"]*", "<a file in the upload>", message)
    for name in sorted(names, key=len, reverse=True):
        if len(name) > 2:  # one- and two-character names ("1", "a") would mangle ordinary words and numbers
            message = message.replace(name, "<a file in the upload>")
    return message


def remove_tree(folder: str | os.PathLike) -> None:
    """Remove a job folder, ignoring one that is already gone."""
    shutil.rmtree(folder, ignore_errors=True)
