"""What a cohort folder remembers between runs: the marker naming the command that owns it, and the manifest of
finished exams.

- ``.cinema-cohort.json``: the command's identity (inputs, weights, shard) and the ids of the exams planned for it.
  A run resumes a folder only when the identity matches; a folder without the marker is never written into.
- ``manifest.jsonl``: append-only, one JSON object per finished exam (done or failed), each line flushed and
  fsynced before the next exam counts as finished. A line torn by a kill is skipped when read (and sealed with a
  newline before the next append), so a killed run loses at most the exams that were in flight. The latest line of
  an exam wins (``--retry-failed`` appends a new one).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cinema.io.atomic import OUTPUT_MARKER, OutputRefused, is_nonempty_dir, write_text_atomic

__all__ = [
    "COHORT_MARKER",
    "MANIFEST",
    "append_record",
    "prepare_cohort_folder",
    "read_marker",
    "read_records",
    "release_cohort_folder",
    "write_marker",
]

COHORT_MARKER = ".cinema-cohort.json"
MANIFEST = "manifest.jsonl"
FORMAT = "cinema-cohort"
# identity keys: the same command has the same values for these
IDENTITY_KEYS = ("inputs", "weights", "shard")
# what a cohort writes in its top folder (OUT) when split in shards: anything else there is not ours
_OWN_PREFIXES = (".tmp-", ".old-")


def read_marker(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The cohort marker of `folder`, or None when it has none (or an unreadable one)."""
    try:
        marker = json.loads((Path(folder) / COHORT_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("format") == FORMAT else None


def write_marker(folder: str | os.PathLike, marker: Mapping[str, Any]) -> None:
    write_text_atomic(Path(folder) / COHORT_MARKER, json.dumps({"format": FORMAT, "version": 1, **marker}) + "\n")


def _differences(found: Mapping[str, Any], wanted: Mapping[str, Any], keys: Iterable[str]) -> list[str]:
    return [f"{k} {found.get(k)!r} here, {wanted.get(k)!r} now" for k in keys if found.get(k) != wanted.get(k)]


def _claim(folder: Path, identity: Mapping[str, Any], keys: tuple[str, ...], *, shared: bool) -> None:
    """Create `folder` as a cohort folder of `identity`, or check that it already is one.

    ``shared``: the top folder of a sharded cohort, which shards started at the same moment create together: while
    it holds only cinema's own names (shard folders, markers, temporaries) it is still being set up, not a user's.
    """
    if folder.exists() and not folder.is_dir():
        raise OutputRefused(f"{folder}: exists and is not a folder")
    marker = read_marker(folder)
    if marker is None and is_nonempty_dir(folder):
        ours = all(
            p.name in (COHORT_MARKER, OUTPUT_MARKER) or p.name.startswith(_OWN_PREFIXES) or p.name.startswith("shard-")
            for p in folder.iterdir()
        )
        if not (shared and ours):
            raise OutputRefused(
                f"{folder}: folder exists and is not a cohort folder (no {COHORT_MARKER} in it); cinema cohort only "
                "resumes its own folders and never writes into anything else: choose another output"
            )
    if marker is not None:
        differences = _differences(marker, identity, keys)
        if differences:
            raise OutputRefused(
                f"{folder}: a cohort folder of another command ({'; '.join(differences)}); resume it with the same "
                "inputs, weights and shard, or choose another output"
            )
        return
    folder.mkdir(parents=True, exist_ok=True)
    (folder / OUTPUT_MARKER).write_text(
        json.dumps({"written_by": "cinema", "command": "cohort"}) + "\n", encoding="utf-8"
    )
    write_marker(folder, identity)


def prepare_cohort_folder(
    out: str | os.PathLike, identity: Mapping[str, Any], shard_count: int, shard_folder: str
) -> tuple[Path, bool]:
    """The folder this shard writes (OUT for a single shard, else ``OUT/shard-I-of-N``), created or checked; and
    whether it already held a cohort (a resumed run)."""
    out = Path(out)
    if shard_count == 1:
        resumed = read_marker(out) is not None
        _claim(out, identity, IDENTITY_KEYS, shared=False)
        return out, resumed
    top = {k: v for k, v in identity.items() if k != "shard"} | {"shards": shard_count}
    _claim(out, top, ("inputs", "weights", "shards"), shared=True)
    folder = out / shard_folder
    resumed = read_marker(folder) is not None
    _claim(folder, identity, IDENTITY_KEYS, shared=False)
    return folder, resumed


def release_cohort_folder(folder: str | os.PathLike, out: str | os.PathLike) -> None:
    """Remove a cohort folder this run created and left empty (only its markers in it; then OUT likewise), so that
    a command that failed before any exam (weights that do not load) can be run again with other options."""
    for path in dict.fromkeys([Path(folder), Path(out)]):
        try:
            names = {p.name for p in path.iterdir()}
        except OSError:
            return
        if not names <= {COHORT_MARKER, OUTPUT_MARKER}:
            return
        for name in names:
            (path / name).unlink(missing_ok=True)
        try:
            path.rmdir()
        except OSError:
            return


def append_record(manifest: str | os.PathLike, record: Mapping[str, Any]) -> None:
    """Append one exam's record as a JSON line, flushed and fsynced (and the folder entry, for a new file)."""
    path = Path(manifest)
    new = not path.exists()
    line = json.dumps(record, allow_nan=False, sort_keys=False) + "\n"
    with open(path, "ab") as f:
        if not new and f.tell() > 0:
            with open(path, "rb") as check:
                check.seek(-1, os.SEEK_END)
                if check.read(1) != b"\n":  # a line torn by a killed writer: seal it, it is skipped when read
                    f.write(b"\n")
        f.write(line.encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())
    if new:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_records(manifest: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """exam id -> its latest record; torn or foreign lines are skipped."""
    records: dict[str, dict[str, Any]] = {}
    try:
        data = Path(manifest).read_bytes()
    except FileNotFoundError:
        return records
    for line in data.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("exam_id"), str) and record.get("status"):
            records[record["exam_id"]] = record
    return records
