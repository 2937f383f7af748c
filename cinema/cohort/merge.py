"""``cinema cohort --merge``: the shards of a cohort joined into one folder, after checking that every planned exam
is there exactly once.

Each shard folder's marker records the command (inputs, weights, shard I of N) and the exams planned for it; its
manifest records the exams finished. The merge refuses, naming them, shards that are missing or given twice, shards
of another command, exams planned or finished in more than one shard, and exams planned but not finished (run that
shard again). The merged folder holds ``cohort.csv`` (+ ``cohort.parquet``), ``cohort.html``, ``manifest.jsonl``
and ``exams/<id>``: relative links into the shard folders (no copy of the images), so keep them side by side.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cinema.cohort.state import MANIFEST, read_marker, read_records, write_marker
from cinema.io.errors import InputError

__all__ = ["MergeSummary", "merge_cohorts", "shard_folders"]

MAX_NAMED = 10


@dataclass
class MergeSummary:
    folder: Path
    shards: int
    exams: int
    done: int
    failed: int


def _named(ids: Sequence[str]) -> str:
    ids = sorted(ids)
    more = f" and {len(ids) - MAX_NAMED} more" if len(ids) > MAX_NAMED else ""
    return ", ".join(ids[:MAX_NAMED]) + more


def shard_folders(sources: Sequence[str | os.PathLike]) -> list[Path]:
    """The shard folders named by `sources`: shard folders themselves, or a cohort's OUT holding them."""
    folders: list[Path] = []
    for source in sources:
        path = Path(source)
        if not path.is_dir():
            raise FileNotFoundError(f"{source}: no such cohort folder")
        marker = read_marker(path)
        if marker is None:
            raise InputError(f"{source}: not a cohort folder (written by `cinema cohort`)")
        if "shard" in marker:
            folders.append(path)
        elif "shards" in marker:
            children = sorted(p for p in path.glob("shard-*-of-*") if p.is_dir() and read_marker(p) is not None)
            if not children:
                raise InputError(f"{source}: holds no shard folder yet (shard-I-of-N)")
            folders.extend(children)
        else:
            raise InputError(f"{source}: a merged cohort; merge the shard folders it came from instead")
    return folders


def merge_cohorts(sources: Sequence[str | os.PathLike], out: str | os.PathLike, *, force: bool = False) -> MergeSummary:
    """Check and join the shards under `sources` into the new folder `out` (atomic; `force` replaces only an
    earlier cinema output)."""
    from cinema.cohort.run import write_cohort_outputs
    from cinema.io.atomic import atomic_directory, check_output

    folders = shard_folders(sources)
    out = Path(out)
    check_output(out, folders, folder=True, force=force)
    markers = {f: read_marker(f) or {} for f in folders}
    first = markers[folders[0]]
    count = int(first["shard"][1])
    problems = []
    for folder, marker in markers.items():
        for key in ("inputs", "weights"):
            if marker.get(key) != first.get(key):
                problems.append(f"{folder} is a shard of another command ({key} differ from {folders[0]})")
        if int(marker["shard"][1]) != count:
            problems.append(f"{folder} is shard {marker['shard'][0]}/{marker['shard'][1]}, the others of {count}")
    if problems:
        raise InputError("cannot merge: " + "; ".join(dict.fromkeys(problems)))
    by_index: dict[int, list[Path]] = {}
    for folder, marker in markers.items():
        by_index.setdefault(int(marker["shard"][0]), []).append(folder)
    missing_shards = [i for i in range(count) if i not in by_index]
    twice = {i: fs for i, fs in by_index.items() if len(fs) > 1}
    if missing_shards:
        problems.append(
            "missing shard(s) " + ", ".join(f"{i}/{count}" for i in missing_shards) + " (their exams are not in the "
            "table: run them, or name their folders)"
        )
    for index, fs in sorted(twice.items()):
        problems.append(f"shard {index}/{count} given twice ({', '.join(str(f) for f in fs)})")

    owners: dict[str, list[Path]] = {}
    records: dict[str, dict[str, Any]] = {}
    unfinished: dict[Path, list[str]] = {}
    for folder in folders:
        finished = read_records(folder / MANIFEST)
        planned = list(markers[folder].get("exams") or [])
        for exam_id in dict.fromkeys(planned):
            owners.setdefault(exam_id, []).append(folder)
            if exam_id in finished:
                records[exam_id] = {**finished[exam_id], "_folder": str(folder)}
        left = [i for i in planned if i not in finished]
        if left:
            unfinished[folder] = left
    duplicated = sorted(i for i, fs in owners.items() if len(fs) > 1)
    if duplicated:
        places = sorted({str(f) for i in duplicated for f in owners[i]})
        problems.append(f"duplicated exam(s) {_named(duplicated)} (in more than one of {', '.join(places)})")
    for folder, left in unfinished.items():
        problems.append(f"missing exam(s) {_named(left)}: planned for {folder} but not finished (run that shard again)")
    if problems:
        raise InputError("cannot merge: " + "; ".join(problems))

    merged = sorted(records.values(), key=lambda r: r["exam_id"])
    home = {r["exam_id"]: Path(r["_folder"]) for r in merged}
    clean = [{k: v for k, v in r.items() if k != "_folder"} for r in merged]
    final_exams = out.resolve() / "exams"
    with atomic_directory(out, force=force, inputs=folders, command="cohort --merge") as tmp:
        (tmp / "exams").mkdir()
        for record in clean:
            exam_id = record["exam_id"]
            target = home[exam_id] / "exams" / exam_id
            if record["status"] == "done" and target.is_dir():
                os.symlink(os.path.relpath(target.resolve(), final_exams), tmp / "exams" / exam_id)
        (tmp / MANIFEST).write_text("".join(json.dumps(r) + "\n" for r in clean), encoding="utf-8")
        write_marker(
            tmp,
            {
                "inputs": first.get("inputs"),
                "weights": first.get("weights"),
                "merged_from": [str(f.resolve()) for f in folders],
            },
        )
        write_cohort_outputs(tmp, clean, thumbnail_folder=lambda exam_id: home.get(exam_id))
    return MergeSummary(
        folder=out,
        shards=count,
        exams=len(clean),
        done=sum(1 for r in clean if r["status"] == "done"),
        failed=sum(1 for r in clean if r["status"] == "failed"),
    )
