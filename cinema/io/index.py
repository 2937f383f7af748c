"""A manifest of the studies in one or more data folders (``cinema index``), for pre-training at scale.

`find_studies` walks folders and recognises, in this order of precedence per folder:

- a `cinema convert` folder (``study.json``), an ACDC patient folder (``Info.cfg``) or an M&Ms subject folder: one
  study each (not descended into);
- NIfTI files: grouped into studies by their name with the view and phase words removed, so ``1000_2_sax.nii.gz``
  and ``1000_2_lax_4c.nii.gz`` are one study with two views, and ``sax_ed`` / ``sax_es`` / ``lax_4c_ed`` ... in one
  folder are one study whose SAX and LAX views each have an ED and an ES frame (in that order). Files named as label
  maps (``gt``, ``seg``, ``label``, ``mask``) are left out: pre-training needs images only;
- DICOM files (found by their preamble, whatever their names): every folder holding DICOM files is one series; the
  series of one DICOM study (StudyInstanceUID of the folder's first file) are one exam, read from their common
  folder. Exams whose folders nest inside each other are kept per folder.

`build_index` reads every study found (so unreadable files fail here, before any sharding or training, with the file
named) and writes a JSON-lines index, one study per line, atomically::

    {"id": "acdc/patient001", "kind": "acdc", "path": "/data/acdc/patient001",
     "views": {"sax": {"shape": [216, 256, 10], "n_frames": 2, "spacing": [1.56, 1.56, 10.0]}}}

``kind`` is what `read_index_entry` needs to read it again: ``acdc``, ``mnms``, ``study_folder``, ``dicom``, ``nifti``
(one file) or ``nifti_files`` (with ``files``: {view: [paths in frame order]}); a ``dicom`` entry carries ``study``
(the study's keyed pseudonym, `cinema.io.privacy`: valid on this installation) when its folder also holds another
study's images. A study that cannot even be recognised (a damaged NIfTI whose name gives no view, an unreadable
DICOM header) is an ``unreadable`` entry with its ``error``, so that `build_index` reports it or, with
``skip_bad``, leaves it out like any other bad study. Study ids are the path below the data folder, prefixed by the
data folder's name, so several data folders give distinct ids.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from cinema.io.atomic import write_text_atomic
from cinema.io.datasets import is_acdc_folder, is_mnms_folder
from cinema.io.dicom import has_dicom_preamble
from cinema.io.errors import InputError
from cinema.io.nifti import guess_view_name, is_nifti_path, nifti_stem, read_nifti_cine
from cinema.io.privacy import pseudonymise_uid
from cinema.io.read import read_study
from cinema.io.study import SAX, CineView, Study
from cinema.io.study_folder import is_study_folder

__all__ = [
    "build_index",
    "find_studies",
    "index_input_paths",
    "is_index_file",
    "read_index",
    "read_index_entry",
    "write_index",
]

INDEX_FORMAT = "cinema-index"
_LABEL_WORDS = {"gt", "seg", "label", "labels", "mask", "segmentation"}
_VIEW_WORDS = {"sax", "sa", "lax", "2c", "3c", "4c", "2ch", "3ch", "4ch", "lvot", "shortaxis", "cine"}
_PHASE = re.compile(r"^(ed|es|frame\d+|phase\d+|t\d+)$")


def _words(path: Path) -> list[str]:
    return [w for w in re.split(r"[^a-z0-9]+", nifti_stem(path).lower()) if w]


def _phase_order(path: Path) -> tuple[int, str]:
    """ED before ES, numbered frames in number order; ties by name."""
    for word in _words(path):
        if word == "ed":
            return 0, path.name
        if word == "es":
            return 1, path.name
        match = re.match(r"^(?:frame|phase|t)(\d+)$", word)
        if match:
            return int(match.group(1)), path.name
    return 0, path.name


def _dicom_study_uid(path: Path) -> str:
    import pydicom

    try:
        with warnings.catch_warnings():  # real headers often break VR rules (UIDs with leading zeros)
            warnings.simplefilter("ignore", UserWarning)
            dataset = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
            return str(dataset.get("StudyInstanceUID", "") or "")
    except Exception as err:  # pydicom raises many types for a damaged file
        raise InputError(f"{path}: unreadable DICOM file ({type(err).__name__}: {err})") from err


def _nifti_entries(root: Path, folder: Path, files: list[Path], prefix: str) -> list[dict[str, Any]]:
    groups: dict[str, dict[str, list[Path]]] = {}
    unreadable: dict[str, str] = {}
    for path in files:
        words = _words(path)
        if _LABEL_WORDS & set(words):
            continue
        key = "_".join(w for w in words if w not in _VIEW_WORDS and not _PHASE.match(w))
        view = guess_view_name(path)
        if view is None:
            from cinema.io.datasets import nifti_shape

            try:
                shape = nifti_shape(path)
                if len(shape) < 3 or shape[2] == 1:
                    raise InputError(
                        f"{path}: cannot tell the view of this single-slice NIfTI file from its name "
                        "(name it with sax, lax_2c, lax_3c or lax_4c)"
                    )
            except (ValueError, OSError) as err:
                # reported when the study is read, where --skip-bad can leave it out, not here where it cannot
                unreadable[key] = str(err)
                continue
            view = SAX
        groups.setdefault(key, {}).setdefault(view, []).append(path)
    entries = []
    relative = folder.relative_to(root).as_posix()
    base = prefix if relative == "." else f"{prefix}/{relative}"
    for key, error in sorted(unreadable.items()):
        study_id = f"{base}/{key}" if key else base
        entries.append({"id": study_id, "kind": "unreadable", "path": str(folder), "error": error})
        groups.pop(key, None)
    for key, views in sorted(groups.items()):
        study_id = f"{base}/{key}" if key else base
        ordered = {view: [str(p) for p in sorted(paths, key=_phase_order)] for view, paths in sorted(views.items())}
        entries.append({"id": study_id, "kind": "nifti_files", "path": str(folder), "files": ordered})
    return entries


def find_studies(data_dirs: Iterable[str | os.PathLike]) -> list[dict[str, Any]]:
    """Study entries (id, kind, path[, files]) under the given folders or files, sorted by id; nothing is read."""
    entries: list[dict[str, Any]] = []
    for data_dir in data_dirs:
        root = Path(data_dir).expanduser().resolve()
        if not root.exists():
            raise FileNotFoundError(f"{data_dir}: no such file or folder")
        prefix = root.name if root.is_dir() else nifti_stem(root)
        if root.is_file():
            if not is_nifti_path(root):
                raise InputError(f"{root}: not a folder or a NIfTI file")
            entries.append({"id": prefix, "kind": "nifti", "path": str(root)})
            continue
        dicom_folders: dict[str, list[Path]] = {}
        bad_dicom: list[dict[str, Any]] = []
        visited: set[Path] = set()
        for folder, subdirs, names in os.walk(root, followlinks=True):  # archives are often trees of links
            folder_path = Path(folder)
            real = folder_path.resolve()
            if real in visited:  # a link loop, or the same folder linked twice
                subdirs[:] = []
                continue
            visited.add(real)
            subdirs.sort()
            relative = folder_path.relative_to(root).as_posix()
            study_id = prefix if relative == "." else f"{prefix}/{relative}"
            kind = None
            if is_study_folder(folder_path):
                kind = "study_folder"
            elif is_acdc_folder(folder_path):
                kind = "acdc"
            elif is_mnms_folder(folder_path):
                kind = "mnms"
            if kind is not None:
                entries.append({"id": study_id, "kind": kind, "path": str(folder_path)})
                subdirs[:] = []  # the reader takes the whole folder
                continue
            files = [folder_path / n for n in sorted(names) if not n.startswith(".")]
            niftis = [p for p in files if is_nifti_path(p)]
            if niftis:
                entries += _nifti_entries(root, folder_path, niftis, prefix)
            dicoms = [p for p in files if not is_nifti_path(p) and has_dicom_preamble(p)]
            try:
                uids = {_dicom_study_uid(p) for p in dicoms}
            except ValueError as err:  # read again (and reported, or skipped) with the study
                bad_dicom.append({"id": study_id, "kind": "unreadable", "path": str(folder_path), "error": str(err)})
                continue
            for uid in uids:
                dicom_folders.setdefault(uid, []).append(folder_path)
        entries += _dicom_entries(root, prefix, dicom_folders) + bad_dicom
    ids = [e["id"] for e in entries]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise InputError(f"two studies would get the same id {duplicates[:3]}; index the data folders separately")
    return sorted(entries, key=lambda e: e["id"])


def _dicom_entries(root: Path, prefix: str, by_uid: dict[str, list[Path]]) -> list[dict[str, Any]]:
    """One exam per StudyInstanceUID, read from the common folder of its series (if no other exam lives there).

    A folder holding images of several studies gives one entry per study, named and read with the study's
    pseudonym (``study``), so two patients filed together are split, never merged."""
    entries = []
    for uid, folders in by_uid.items():
        common = Path(os.path.commonpath([str(f) for f in folders]))
        others = [f for other, fs in by_uid.items() if other != uid for f in fs]
        shared = uid == "" or any(common == f or common in f.parents for f in others)
        for folder in [common] if not shared else folders:
            relative = folder.relative_to(root).as_posix()
            study_id = prefix if relative == "." else f"{prefix}/{relative}"
            entry = {"id": study_id, "kind": "dicom", "path": str(folder)}
            if uid and folder in others:  # another study's images lie in this very folder
                entry["study"] = pseudonymise_uid(uid)
                entry["id"] = f"{study_id}/{entry['study'].replace(':', '-')}"
            entries.append(entry)
    return entries


def _concat_frames(views: list[CineView], view: str) -> CineView:
    first = views[0]
    for other in views[1:]:
        if other.spatial_shape != first.spatial_shape or not np.allclose(other.affine, first.affine, atol=1e-3):
            raise InputError(f"{other.source}: grid differs from {first.source} (frames of one {view} view)")
    if len(views) == 1:
        return first
    return CineView(
        image=np.concatenate([v.image for v in views], axis=-1),
        affine=first.affine,
        source=first.source,
        name=view,
    )


def read_index_entry(entry: dict[str, Any]) -> Study:
    """Read the study an index entry describes (errors name the file)."""
    kind = entry.get("kind")
    if kind == "nifti_files":
        views = {}
        for view, paths in entry["files"].items():
            views[view] = _concat_frames([read_nifti_cine(p, view=view) for p in paths], view)
        return Study(views=views, metadata={"source_format": "nifti"}, source=entry["path"])
    if kind == "unreadable":
        raise InputError(entry["error"])
    if kind == "dicom":
        return read_study(entry["path"], study=entry.get("study"))
    if kind in ("acdc", "mnms", "study_folder", "nifti"):
        return read_study(entry["path"])
    raise InputError(f"index entry {entry.get('id')!r}: unknown kind {kind!r}")


def _describe(entry: dict[str, Any]) -> dict[str, Any]:
    study = read_index_entry(entry)
    views = {}
    for name in study.view_names:
        view = study.views[name]
        views[name] = {
            "shape": list(view.spatial_shape),
            "n_frames": view.n_frames,
            "spacing": [round(s, 4) for s in view.spacing],
        }
    return {**entry, "views": views}


def _describe_or_error(entry: dict[str, Any]) -> dict[str, Any] | str:
    try:
        return _describe(entry)
    except (ValueError, FileNotFoundError, OSError) as err:
        return str(err)


def build_index(
    data_dirs: Iterable[str | os.PathLike],
    workers: int = 1,
    skip_bad: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Find and read every study; returns (entries with their views, messages about skipped studies).

    Without ``skip_bad`` the first unreadable study raises ValueError naming it; with it, it is left out and its
    message returned. ``workers`` > 1 reads studies in parallel processes (DICOM exams are slow to read).
    """
    found = find_studies(data_dirs)
    if not found:
        raise InputError(f"no studies found under {', '.join(str(d) for d in data_dirs)}")
    results: Iterator[dict[str, Any] | str]
    if workers > 1:
        pool = ProcessPoolExecutor(workers)
        results = pool.map(_describe_or_error, found, chunksize=4)
    else:
        pool = None
        results = map(_describe_or_error, found)
    entries, skipped = [], []
    try:
        for i, result in enumerate(results):
            if isinstance(result, str):
                if not skip_bad:
                    raise InputError(f"study {found[i]['id']}: {result}")
                skipped.append(f"{found[i]['id']}: {result}")
            else:
                entries.append(result)
            if progress is not None:
                progress(i + 1, len(found))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    if not entries:
        raise InputError("no readable study found")
    return entries, skipped


def write_index(entries: list[dict[str, Any]], path: str | os.PathLike) -> Path:
    """JSON lines (first line a header), written atomically."""
    header = {"format": INDEX_FORMAT, "version": 1, "n_studies": len(entries)}
    lines = [json.dumps(header)] + [json.dumps(e, sort_keys=False) for e in entries]
    return write_text_atomic(path, "\n".join(lines) + "\n")


def is_index_file(path: str | os.PathLike) -> bool:
    """True for a file `write_index` wrote (its first line is the index header): `--force` may replace it."""
    try:
        with open(path, encoding="utf-8") as f:
            header = json.loads(f.readline(4096))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(header, dict) and header.get("format") == INDEX_FORMAT


def index_input_paths(entries: Iterable[dict[str, Any]]) -> list[Path]:
    """Every file or folder the index's entries are read from (what an output must never replace or hold)."""
    paths = []
    for entry in entries:
        if entry.get("path"):
            paths.append(Path(entry["path"]))
        for files in (entry.get("files") or {}).values():
            paths.extend(Path(p) for p in files)
    return paths


def read_index(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Entries of an index written by `write_index` (errors name the file and line)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such index file")
    lines = path.read_text(encoding="utf-8").splitlines()
    try:
        header = json.loads(lines[0]) if lines else {}
    except json.JSONDecodeError:
        header = {}
    if header.get("format") != INDEX_FORMAT:
        raise InputError(f"{path}: not a study index written by `cinema index`")
    entries = []
    for number, line in enumerate(lines[1:], start=2):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"{path}:{number}: not valid JSON ({err})") from err
        if not isinstance(entry, dict) or "id" not in entry or "kind" not in entry:
            raise InputError(f"{path}:{number}: an index entry needs 'id' and 'kind'")
        entries.append(entry)
    if len(entries) != header.get("n_studies"):
        raise InputError(f"{path}: {len(entries)} studies but the header says {header.get('n_studies')} (truncated?)")
    return entries
