"""The exams of a cohort: found under the user's inputs, named by stable, unique, filesystem-safe ids, read on demand.

An INPUT of ``cinema cohort`` is one of:

- an index file written by ``cinema index``: one exam per entry, named by the entry's id;
- a NIfTI file or an exam folder (DICOM, ACDC, M&Ms, ``cinema convert``), or a folder of exams: found with
  `cinema.io.index.find_studies` (the same rules as ``cinema index``), named by their path below the input,
  prefixed with the input's own name (``acdc/patient001``);
- an input in which nothing is found is one failed exam (named after it), so that it shows in the table.

Ids are made filesystem-safe (`safe_exam_id`): path parts joined by ``__``, characters outside ``[A-Za-z0-9._-]``
replaced by ``_``, no leading dot. Two exams whose safe ids would collide (``a b`` and ``a_b``, or the same name under
two inputs; compared case-insensitively) both get a short hash of their full id appended, so ids never depend on
the order the inputs were given in.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cinema.io.errors import InputError

__all__ = ["Exam", "find_exams", "read_exam", "safe_exam_id"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_ID_LENGTH = 120


@dataclass(frozen=True)
class Exam:
    """One exam of a cohort.

    Attributes:
        id: stable, unique, filesystem-safe name (``OUT/exams/<id>/``).
        entry: how to read it: an index entry (`cinema.io.index`: ``kind``, ``path``, ...).
    """

    id: str
    entry: dict[str, Any] = field(hash=False, compare=False)

    @property
    def kind(self) -> str:
        return str(self.entry.get("kind"))

    @property
    def path(self) -> Path:
        return Path(self.entry["path"])

    def sources(self) -> list[Path]:
        """Every file or folder the exam is read from: what its outputs must never replace or hold."""
        paths = [self.path]
        for files in (self.entry.get("files") or {}).values():
            paths.extend(Path(p) for p in files)
        return paths


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]


def safe_exam_id(raw: str) -> str:
    """A one-component, filesystem-safe version of an index-style id (``acdc/patient 1`` -> ``acdc__patient_1``)."""
    parts = [_UNSAFE.sub("_", part).lstrip(".") for part in raw.split("/") if part not in ("", ".", "..")]
    text = "__".join(p for p in parts if p) or "exam"
    if len(text) > MAX_ID_LENGTH:
        text = f"{text[: MAX_ID_LENGTH - 9]}-{_short_hash(raw)}"
    return text


def _unique_ids(raw_ids: Sequence[str], origins: Sequence[str]) -> list[str]:
    """Safe ids; those that would collide get a hash of their full id and origin (what they are read from)."""
    safe = [safe_exam_id(r) for r in raw_ids]
    tags = [_short_hash(f"{r}\0{o}") for r, o in zip(raw_ids, origins, strict=True)]
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(safe):
        groups.setdefault(s.casefold(), []).append(i)
    for members in groups.values():
        if len(members) > 1:
            for i in members:
                safe[i] = f"{safe[i]}-{tags[i]}"
    if len({s.casefold() for s in safe}) != len(safe):  # a hash suffix met another exam's own name
        safe = [f"{s}-{t}" for s, t in zip(safe, tags, strict=True)]
    return safe


def _entries_of(source: Path) -> list[dict[str, Any]]:
    from cinema.io.index import find_studies, is_index_file, read_index
    from cinema.io.nifti import is_nifti_path

    if source.is_file():
        if is_nifti_path(source):
            return find_studies([source])
        if is_index_file(source):
            return read_index(source)
        raise InputError(f"{source}: not an exam, a folder of exams or an index written by `cinema index`")
    found = find_studies([source])
    if not found:
        return [
            {
                "id": source.name or "input",
                "kind": "unreadable",
                "path": str(source.resolve()),
                "error": "no exam found in this folder (DICOM, NIfTI, ACDC, M&Ms or cinema-convert)",
            }
        ]
    return found


def find_exams(inputs: Iterable[str | os.PathLike]) -> list[Exam]:
    """The exams under `inputs`, sorted by id; nothing is read but headers (index files are read whole).

    The same exam reached twice (an exam folder and the folder holding it) is kept once, under its first name.
    """
    entries: list[dict[str, Any]] = []
    origins: list[str] = []
    for given in inputs:
        source = Path(given).expanduser()
        if not source.exists():
            raise FileNotFoundError(f"{given}: no such file or folder")
        for entry in _entries_of(source):
            origin = repr((entry.get("kind"), str(Path(entry.get("path", "")).resolve()), entry.get("study")))
            if entry.get("kind") == "nifti_files":
                origin += repr(sorted((entry.get("files") or {}).items()))
            if origin in origins:
                continue
            origins.append(origin)
            entries.append(entry)
    ids = _unique_ids([str(e["id"]) for e in entries], origins)
    exams = [Exam(id=i, entry={**e, "source_id": e["id"]}) for i, e in zip(ids, entries, strict=True)]
    return sorted(exams, key=lambda e: e.id)


def read_exam(exam: Exam, view: str | None = None) -> tuple[Any, bool]:
    """(the `Study`, whether its SAX cine is a single 3-D NIfTI frame) of an exam; errors name the file.

    A NIfTI file's view follows ``cinema analyze``'s rule: `view` when given, else its file name's
    (``..._lax_4c.nii.gz``), else a stack of several slices is SAX; a single-slice file whose view is not named raises
    InputError (`cinema.io.nifti.read_nifti_cine`), so that a long-axis cine is never measured as a one-slice SAX
    stack (volumes of zero). A cohort measures short-axis cines: an exam without one raises InputError saying so.
    """
    from cinema.io import read_study
    from cinema.io.datasets import nifti_shape
    from cinema.io.index import read_index_entry
    from cinema.io.study import SAX, view_name_for

    if exam.kind == "nifti":
        study = read_study(exam.path, view=None if view is None else view_name_for(view))
        spatial_only = len(nifti_shape(exam.path)) == 3
    else:
        study, spatial_only = read_index_entry(exam.entry), False
    if SAX not in study.views:
        found = ", ".join(study.view_names) or "none"
        raise InputError(
            f"{study.source or exam.path}: no short-axis cine (views: {found}); cinema cohort measures short-axis "
            "cines: analyse a long-axis exam with `cinema analyze EXAM --lax-weights MODEL`"
        )
    return study, spatial_only
