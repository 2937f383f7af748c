"""Sharded storage of model-space studies for pre-training on 10^5 studies (``cinema shard``).

A shard folder holds plain, uncompressed tar files in the WebDataset layout (members sharing a key before the first
dot form one sample), so standard tools (``tar``, ``webdataset``) read them too::

    shards.json              {"format": "cinema-shards", "version": 1, "n_studies": N, "geometry": {...},
                              "shards": [{"name": "shard-000000.tar", "n_studies": n, "bytes": b}, ...]}
    studies.jsonl            one line per study: key, id, shard, and per view {offset, shape, dtype} of its array
    shard-000000.tar         00000000.json (id, source, views), 00000000.sax.npy (uint8 (T, X, Y, Z)),
                             00000000.lax_4c.npy (uint8 (T, X, Y)), 00000001.json, ...

Arrays are NumPy ``.npy`` members with time first, so frame ``t`` of a view is one contiguous byte range of its tar
file: `ShardStore.frame` reads exactly that range with one ``pread`` (as the reference reads one frame of a NIfTI with
SimpleITK), without touching the rest of the cine. That gives random access to any (study, frame), hence any sample
order, any number of ranks and workers, and an exact resume point.

`ShardWriter` writes everything inside `atomic_directory`: the folder appears complete or not at all. This module
knows nothing about model space; `cinema.train.pretrain_data.write_shards` decides what goes in.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cinema.io.atomic import atomic_directory, write_text_atomic
from cinema.io.errors import InputError

__all__ = ["SHARDS_JSON", "STUDIES_JSONL", "ShardStore", "ShardWriter", "iter_tar_samples", "write_shard_folder"]

SHARDS_FORMAT = "cinema-shards"
SHARDS_JSON = "shards.json"
STUDIES_JSONL = "studies.jsonl"


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


class ShardWriter:
    """Append studies to numbered tar shards in ``folder`` (a fresh folder), then `finish` writes the indexes.

    A new shard starts after ``max_studies`` studies or once a shard exceeds ``max_bytes``.
    """

    def __init__(self, folder: Path, geometry: dict[str, Any], max_studies: int = 1000, max_bytes: int = 2**30):
        if max_studies < 1 or max_bytes < 1:
            raise InputError("shards need max_studies >= 1 and max_bytes >= 1")
        self.folder = Path(folder)
        self.geometry = geometry
        self.max_studies, self.max_bytes = max_studies, max_bytes
        self.shards: list[dict[str, Any]] = []
        self.studies: list[dict[str, Any]] = []
        self._tar: tarfile.TarFile | None = None
        self._in_shard = 0

    def _add_member(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o644
        self._tar.addfile(info, io.BytesIO(data))

    def add(self, study_id: str, arrays: dict[str, np.ndarray], metadata: dict[str, Any] | None = None) -> None:
        """One study: {view: uint8 array (T, *spatial)} plus JSON-able metadata."""
        if not arrays:
            raise InputError(f"study {study_id}: nothing to store (no views)")
        if self._tar is None or self._in_shard >= self.max_studies or self._tar.offset >= self.max_bytes:
            self._close_shard()
            name = f"shard-{len(self.shards):06d}.tar"
            self._tar = tarfile.open(self.folder / name, "w", format=tarfile.USTAR_FORMAT)
            self.shards.append({"name": name, "n_studies": 0, "bytes": 0})
            self._in_shard = 0
        key = f"{len(self.studies):08d}"  # no dots and unique: WebDataset splits member names at the first dot
        views = {view: {"shape": list(a.shape), "dtype": str(a.dtype)} for view, a in arrays.items()}
        meta = {"id": study_id, "views": views, **(metadata or {})}
        self._add_member(f"{key}.json", json.dumps(meta).encode())
        for view, array in arrays.items():
            self._add_member(f"{key}.{view}.npy", _npy_bytes(array))
        self.studies.append({"key": key, "id": study_id, "shard": self.shards[-1]["name"]})
        self.shards[-1]["n_studies"] += 1
        self._in_shard += 1

    def _close_shard(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None

    def finish(self) -> None:
        """Close the last shard, locate every array's bytes, write studies.jsonl and shards.json."""
        self._close_shard()
        by_key = {s["key"]: s for s in self.studies}
        for shard in self.shards:
            path = self.folder / shard["name"]
            shard["bytes"] = path.stat().st_size
            for key, view, offset, shape, dtype in _array_locations(path):
                by_key[key].setdefault("arrays", {})[view] = {"offset": offset, "shape": shape, "dtype": dtype}
        lines = [json.dumps(s) for s in self.studies]
        write_text_atomic(self.folder / STUDIES_JSONL, "\n".join(lines) + "\n")
        summary = {
            "format": SHARDS_FORMAT,
            "version": 1,
            "n_studies": len(self.studies),
            "geometry": self.geometry,
            "shards": self.shards,
        }
        write_text_atomic(self.folder / SHARDS_JSON, json.dumps(summary, indent=1))


def _array_locations(path: Path) -> Iterator[tuple[str, str, int, list[int], str]]:
    """(key, view, absolute byte offset of the array data, shape, dtype) of every .npy member of a tar."""
    with open(path, "rb") as raw, tarfile.open(fileobj=raw, mode="r:") as tar:
        for member in tar:
            parts = member.name.split(".")
            if len(parts) != 3 or parts[2] != "npy":
                continue
            raw.seek(member.offset_data)
            version = np.lib.format.read_magic(raw)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(raw)
            if fortran:
                raise InputError(f"{path}: {member.name} is Fortran-ordered; frames would not be contiguous")
            yield parts[0], parts[1], raw.tell(), list(shape), dtype.str


@contextlib.contextmanager
def write_shard_folder(
    out_dir: str | os.PathLike,
    geometry: dict[str, Any],
    force: bool = False,
    inputs: Iterable[str | os.PathLike] = (),
    **limits: int,
) -> Iterator[ShardWriter]:
    """``with write_shard_folder(out, geometry) as writer: writer.add(...)`` — complete folder or nothing; never
    replacing one of `inputs` (the index and its data), a folder holding one, or a folder cinema did not write."""
    with atomic_directory(out_dir, force=force, inputs=inputs, command="shard") as tmp:
        writer = ShardWriter(tmp, geometry, **limits)
        try:
            yield writer
        finally:
            writer._close_shard()
        writer.finish()


class ShardStore:
    """Random access to the frames of a shard folder: ``store.frame(i, "sax", t)`` → uint8 (X, Y, Z).

    Opens tar files lazily, once per process (DataLoader workers each get their own descriptors).
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        summary_path = self.folder / SHARDS_JSON
        if not summary_path.is_file():
            raise FileNotFoundError(f"{summary_path}: no such file (not a folder written by `cinema shard`)")
        try:
            summary = json.loads(summary_path.read_text())
        except json.JSONDecodeError as err:
            raise InputError(f"{summary_path}: not valid JSON ({err})") from err
        if summary.get("format") != SHARDS_FORMAT:
            raise InputError(f"{summary_path}: not a cinema shard index")
        self.geometry: dict[str, Any] = summary["geometry"]
        sizes = {}
        for shard in summary["shards"]:
            path = self.folder / shard["name"]
            if not path.is_file():
                raise FileNotFoundError(f"{path}: shard listed in {SHARDS_JSON} is missing")
            sizes[shard["name"]] = path.stat().st_size
            if sizes[shard["name"]] != shard["bytes"]:
                raise InputError(f"{path}: {sizes[shard['name']]} bytes, {SHARDS_JSON} says {shard['bytes']}")
        studies_path = self.folder / STUDIES_JSONL
        if not studies_path.is_file():
            raise FileNotFoundError(f"{studies_path}: no such file")
        self.studies = [json.loads(line) for line in studies_path.read_text().splitlines() if line.strip()]
        if len(self.studies) != summary["n_studies"]:
            raise InputError(f"{studies_path}: {len(self.studies)} studies, {SHARDS_JSON} says {summary['n_studies']}")
        for study in self.studies:
            for view, array in study["arrays"].items():
                end = array["offset"] + math.prod(array["shape"]) * np.dtype(array["dtype"]).itemsize
                if end > sizes[study["shard"]]:
                    raise InputError(f"{self.folder / study['shard']}: truncated ({study['id']} {view} is cut off)")
        self._fds: dict[str, int] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.studies)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fds"] = {}  # descriptors do not travel to spawned workers
        return state

    def study_id(self, index: int) -> str:
        return self.studies[index]["id"]

    def n_frames(self, index: int) -> dict[str, int]:
        return {view: a["shape"][0] for view, a in self.studies[index]["arrays"].items()}

    def _fd(self, shard: str) -> int:
        if self._pid != os.getpid():  # forked worker: never share the parent's descriptors
            self._fds, self._pid = {}, os.getpid()
        if shard not in self._fds:
            self._fds[shard] = os.open(self.folder / shard, os.O_RDONLY)
        return self._fds[shard]

    def frame(self, index: int, view: str, t: int) -> np.ndarray:
        """Frame ``t`` of ``view`` of study ``index``: one read of exactly its bytes."""
        study = self.studies[index]
        array = study["arrays"][view]
        shape, dtype = array["shape"], np.dtype(array["dtype"])
        if not 0 <= t < shape[0]:
            raise IndexError(f"{study['id']}: frame {t} of {view} is outside its {shape[0]} frames")
        n_bytes = math.prod(shape[1:]) * dtype.itemsize
        data = os.pread(self._fd(study["shard"]), n_bytes, array["offset"] + t * n_bytes)
        if len(data) != n_bytes:
            raise InputError(f"{self.folder / study['shard']}: short read for {study['id']} {view} (truncated?)")
        return np.frombuffer(data, dtype=dtype).reshape(shape[1:])

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}


def iter_tar_samples(path: str | os.PathLike) -> Iterator[tuple[str, dict[str, Any]]]:
    """Stream one shard sequentially, WebDataset style: (key, {"json": dict, view: array}) per study."""
    sample: dict[str, Any] = {}
    key = None
    with tarfile.open(path, "r:") as tar:
        for member in tar:
            member_key, _, rest = member.name.partition(".")
            if key is not None and member_key != key:
                yield key, sample
                sample = {}
            key = member_key
            data = tar.extractfile(member).read()
            if rest == "json":
                sample["json"] = json.loads(data)
            elif rest.endswith(".npy"):
                sample[rest[: -len(".npy")]] = np.load(io.BytesIO(data), allow_pickle=False)
    if key is not None:
        yield key, sample
