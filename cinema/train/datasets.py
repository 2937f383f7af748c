"""Studies -> training samples, for every task, from the dataset layout the config names.

Three steps, all before training starts, so that bad data fails early with the study named:

1. list the studies with their cheap metadata (ACDC ``Info.cfg``, an M&Ms table, a CSV manifest) and choose the
   train / validation split (``split_column``, ``val_ids`` or a seeded, class-stratified ``val_fraction``), after
   ``max_subjects`` and before ``proportion``;
2. read each chosen study with `cinema.io` and check what the task needs: label maps for segmentation (values inside
   the class list, one labelled frame at least), ED/ES frames for two-frame inputs, a known class, a finite
   regression value, survival time and event, landmark coordinates;
3. bring the frames into model space with `cinema.preprocess` (resample, label-free heart crop, intensity scaling)
   and keep them in memory.

`TrainDataset` yields patch-size samples (random crop / end padding per sample, seeded by the sampler so workers and
resumes reproduce them); `ValDataset` yields whole studies padded at the end to at least the patch size. With
``data.slice_2d`` every slice of every labelled SAX frame is a training sample and validation still scores volumes.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from cinema.config import FinetuneConfig
from cinema.config.parse import resolve_path
from cinema.io.datasets import parse_number
from cinema.io.errors import InputError
from cinema.io.study import CineView, Study
from cinema.preprocess.augment import crop_or_pad
from cinema.preprocess.slices import neighbour_slices

logger = logging.getLogger(__name__)

# Targets derived from ED/ES label maps when the metadata has no such column.
FUNCTION_TARGETS = ("lv_edv", "lv_esv", "lv_ef", "rv_edv", "rv_esv", "rv_ef", "lv_mass")
STACKED_TASKS = ("classification", "regression", "survival")


@dataclass
class Entry:
    """A study before it is read: id, metadata available without reading images, and how to read it."""

    id: str
    metadata: dict[str, Any]
    load: Callable[[], Study]
    source: str


@dataclass
class Subject:
    """A study in model space, ready to cut samples from.

    ``images[view]``: (F, *spatial) float32 in [0, 1] for the task's frames (F = 2 for ED, ES stacked tasks);
    ``labels[view]``: (F, *spatial) uint8 (segmentation); ``points[view]``: (3, 2) model-space voxel (x, y).
    """

    id: str
    images: dict[str, np.ndarray]
    frames: list[int]
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    points: dict[str, np.ndarray] = field(default_factory=dict)
    target: float | None = None
    time: float | None = None
    event: float | None = None


# ---------------------------------------------------------------------------------------------------------------------
# 1. Listing and splitting
# ---------------------------------------------------------------------------------------------------------------------


def _acdc_entries(root: Path) -> list[Entry]:
    from cinema.io.datasets import is_acdc_folder, read_acdc_info, read_acdc_patient

    folders = sorted(p for p in root.iterdir() if p.is_dir() and is_acdc_folder(p))
    if not folders:
        raise InputError(f"{root}: no ACDC patient folders (folders with Info.cfg)")
    entries = []
    for folder in folders:
        info = read_acdc_info(folder)
        meta = {"group": info["group"], "height_cm": info["height_cm"], "weight_kg": info["weight_kg"]}
        entries.append(Entry(folder.name, meta, lambda f=folder: read_acdc_patient(f), str(folder)))
    return entries


def _mnms_entries(root: Path, table_path: Path) -> list[Entry]:
    from cinema.io.datasets import is_mnms_folder, read_mnms_subject, read_mnms_table

    table = read_mnms_table(table_path)
    folders = sorted(p for p in root.iterdir() if is_mnms_folder(p))
    if not folders:
        raise InputError(f"{root}: no M&Ms subject folders")
    return [
        Entry(f.name, dict(table.get(f.name, {})), lambda f=f: read_mnms_subject(f, table), str(f)) for f in folders
    ]


def _manifest_entries(path: Path) -> list[Entry]:
    from cinema.io.datasets import read_manifest_row

    if not path.is_file():
        raise FileNotFoundError(f"config key 'data.manifest': {path} does not exist")
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise InputError(f"{path}: the manifest has no rows")
    entries = []
    for number, row in enumerate(rows, start=2):
        where = f"{path}:{number}"
        study_id = (row.get("id") or "").strip() or f"row{number - 1:04d}"
        meta = {k.strip(): parse_number(v) for k, v in row.items() if k and (v or "").strip() != ""}
        entries.append(Entry(study_id, meta, lambda r=row, w=where: read_manifest_row(r, path.parent, w), where))
    ids = [e.id for e in entries]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise InputError(f"{path}: duplicate study ids {duplicates[:5]}")
    return entries


def _cinema_entries(root: Path, manifest: Path | None = None) -> list[Entry]:
    """The subjects of CineMA's preprocessed layout under ``root`` (see `cinema.io.datasets.CINEMA_LAYOUT_DOC`):
    those of the split whose metadata CSV ``manifest`` is (``train_metadata.csv``: the folder ``train``), else of every
    split folder beside its CSV except ``test`` (the split's name becomes the ``split`` column), else of ``root``
    itself. The test split is read only when its CSV is named as ``manifest``: never mixed into training data."""
    from cinema.io.datasets import (
        cinema_preprocessed_table,
        cinema_table_row,
        is_cinema_preprocessed_folder,
        read_cinema_preprocessed,
    )

    if manifest is not None and not manifest.is_file():
        raise FileNotFoundError(f"config key 'data.manifest': {manifest} does not exist")
    splits = {}
    for csv_path in [manifest] if manifest is not None else sorted(root.glob("*.csv")):
        split = csv_path.name.removesuffix(".csv").removesuffix("_metadata")
        if manifest is None and split == "test":
            continue
        if (csv_path.parent / split).is_dir():
            splits[split] = (csv_path.parent / split, cinema_preprocessed_table(csv_path))
        elif manifest is not None:
            raise InputError(f"{manifest}: no folder {split}/ beside it holding the split's subject folders")
    groups = [(folder, table, s) for s, (folder, table) in splits.items()] or [(root, {}, None)]
    entries = []
    for folder, table, split in groups:
        subjects = {p.name: p for p in folder.iterdir() if is_cinema_preprocessed_folder(p)}
        for row in table.values():  # Rescan's nested ids (A/s_0000) name folders below the split's
            pid = str(row["pid"])
            if "/" in pid and is_cinema_preprocessed_folder(folder / pid):
                subjects[pid] = folder / pid
        for pid, subject in sorted(subjects.items()):
            row = dict(cinema_table_row(table, pid))
            meta = {k: v for k, v in row.items() if k != "pid"} | ({"split": split} if split else {})
            entries.append(Entry(pid, meta, lambda f=subject, r=row: read_cinema_preprocessed(f, r), str(subject)))
    if not entries:
        raise InputError(f"{root}: no subject folders of CineMA's preprocessed layout (<pid>/<pid>_sax_ed.nii.gz ...)")
    ids = [e.id for e in entries]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise InputError(f"{root}: subject ids in several splits {duplicates[:5]}")
    return entries


def _kaggle_entries(root: Path, manifest: Path) -> list[Entry]:
    """The studies of one Kaggle DSB split (`cinema.io.datasets.KAGGLE_LAYOUT_DOC`): ``manifest`` is its volumes CSV
    (train.csv, validate.csv, or solution.csv for the test split); each study's DICOM folder is read as it is, its
    reference LV volumes become the ``Diastole`` / ``Systole`` metadata (there are no masks)."""
    from cinema.io.datasets import kaggle_study_folders, read_kaggle_table
    from cinema.io.read import read_study

    if not manifest.is_file():
        raise FileNotFoundError(f"config key 'data.manifest': {manifest} does not exist")
    with open(manifest, newline="", encoding="utf-8-sig") as f:
        header = next(csv.reader(f), [])
    if "pid" in header:
        return _kaggle_preprocessed_entries(root, manifest)
    split = {"solution": "test"}.get(manifest.stem, manifest.stem)
    table = read_kaggle_table(manifest)
    folders = kaggle_study_folders(root, split)
    if not folders:
        raise InputError(f"{root}: no {split}/{split}/<pid>/study folders beside {manifest.name}")

    def load(folder: Path, meta: dict[str, Any]) -> Study:
        study = read_study(folder)
        study.metadata.update(meta)
        return study

    entries = []
    for pid in sorted(folders, key=lambda p: (len(p), p)):
        meta = {**table.get(pid, {}), "split": split}
        entries.append(Entry(pid, meta, lambda f=folders[pid], m=meta: load(f, m), str(folders[pid])))
    return entries


# the reference's Kaggle preprocessing renames train.csv's Diastole / Systole; Rescan's paired split has edv / esv
_VOLUME_COLUMNS = (("diastole_volume", "systole_volume"), ("edv", "esv"))


def _kaggle_preprocessed_entries(root: Path, manifest: Path) -> list[Entry]:
    """The Kaggle DSB after CineMA's preprocessing (`cinema.io.datasets.CINEMA_LAYOUT_DOC`): ``manifest`` is a split's
    ``<split>_metadata.csv``, its subjects ``<split>/<pid>/<pid>_sax_t.nii.gz`` ...; the reference LV volumes become
    the ``Diastole`` / ``Systole`` metadata the evaluation without masks compares with."""
    entries = _cinema_entries(root, manifest)
    for entry in entries:
        columns = next((c for c in _VOLUME_COLUMNS if all(k in entry.metadata for k in c)), None)
        if columns is None:
            raise InputError(
                f"{manifest}: pid {entry.id} has no reference volumes (columns diastole_volume and systole_volume)"
            )
        for name, column in zip(("Diastole", "Systole"), columns, strict=True):
            entry.metadata[name] = _number(entry.metadata, column, f"{manifest}: pid {entry.id}", "LV volume, ml")
    return entries


def _landmark_entries(root: Path, manifest: Path) -> list[Entry]:
    """The frames of CineMA's landmark set (`cinema.io.datasets.LANDMARK_LAYOUT_DOC`) that ``manifest`` (one of its
    ``<view>_<split>.csv``) lists; each frame is a one-frame study of that view, its row the metadata (x1 ... y3)."""
    from cinema.io.datasets import landmark_view_of, read_landmark_png

    if not manifest.is_file():
        raise FileNotFoundError(f"config key 'data.manifest': {manifest} does not exist")
    view = landmark_view_of(manifest)
    with open(manifest, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    if not rows or "uid" not in rows[0]:
        raise InputError(f"{manifest}: a landmark CSV has rows with a 'uid' column")

    def load(png: Path, meta: dict[str, Any]) -> Study:
        return Study(views={view: read_landmark_png(png, view)}, metadata={"source_format": "landmark", **meta})

    entries = []
    for row in rows:
        uid = (row.get("uid") or "").strip()
        png = root / view / "images" / f"{uid}.png"
        if not png.is_file():
            raise FileNotFoundError(f"{manifest}: no image {png} for uid {uid!r}")
        meta = {k: parse_number(v) for k, v in row.items() if k and k not in ("uid", "view") and (v or "").strip()}
        entries.append(Entry(uid, meta, lambda p=png, m=meta: load(p, m), str(png)))
    return entries


def list_entries(config: FinetuneConfig) -> list[Entry]:
    """Every study the config's dataset layout lists (before the train / validation split), less those of a class
    outside ``data.classes`` when ``data.unlisted_classes`` is ``drop``."""
    data = config.data
    root = resolve_path(data.dir)
    if not root.is_dir():
        raise FileNotFoundError(f"config key 'data.dir': {root} is not a folder")
    manifest = Path(data.manifest) if data.manifest else None
    manifest = manifest if manifest is None or manifest.is_absolute() else root / manifest
    if data.format == "acdc":
        entries = _acdc_entries(root)
    elif data.format == "cinema":
        entries = _cinema_entries(root, manifest)
    elif data.format == "kaggle":
        entries = _kaggle_entries(root, manifest)
    elif data.format == "landmark":
        entries = _landmark_entries(root, manifest)
    elif data.format == "mnms":
        entries = _mnms_entries(root, manifest)
    else:
        entries = _manifest_entries(manifest)
    if config.task == "classification" and data.unlisted_classes == "drop":
        entries = drop_unlisted_classes(entries, config)
    return entries


def drop_unlisted_classes(entries: list[Entry], config: FinetuneConfig) -> list[Entry]:
    """The studies whose class is in ``data.classes``; how many of each split were left out is logged.

    Decided on the listing's metadata (a CSV, Info.cfg): a study without a class value there is kept, and
    `prepare_subject` still refuses it if its class turns out to be missing or unlisted.
    """
    column, classes = config.data.class_column, config.data.classes
    split_column = config.data.split_column or "split"
    kept: list[Entry] = []
    dropped: dict[str, dict[str, int]] = {}  # split -> class -> count
    totals: dict[str, int] = {}
    for entry in entries:
        split = str(entry.metadata.get(split_column, "all"))
        totals[split] = totals.get(split, 0) + 1
        if column in entry.metadata and str(entry.metadata[column]) not in classes:
            per_class = dropped.setdefault(split, {})
            value = str(entry.metadata[column])
            per_class[value] = per_class.get(value, 0) + 1
        else:
            kept.append(entry)
    for split, per_class in sorted(dropped.items()):
        counts = ", ".join(f"{name} {n}" for name, n in sorted(per_class.items()))
        logger.warning(
            "data.unlisted_classes=drop: left out %d of %d studies of split %s (class not in data.classes: %s)",
            sum(per_class.values()),
            totals[split],
            split,
            counts,
        )
    return kept


def _class_of(meta: dict[str, Any], config: FinetuneConfig, where: str) -> str:
    column = config.data.class_column
    if column not in meta:
        raise InputError(f"{where}: no value in class column {column!r} (needed for classification)")
    value = str(meta[column])
    if value not in config.data.classes:
        raise InputError(
            f"{where}: class {value!r} of column {column!r} is not in data.classes {config.data.classes} "
            "(set data.unlisted_classes: drop to leave such studies out)"
        )
    return value


def spread_subjects(entries: list[Entry], n: int, config: FinetuneConfig) -> list[Entry]:
    """The first ``n`` studies, taken round-robin over classes for classification so every class is present."""
    if config.task != "classification" or not config.data.stratify:
        return entries[:n]
    by_class: dict[str, list[Entry]] = {}
    for entry in entries:
        by_class.setdefault(_class_of(entry.metadata, config, entry.source), []).append(entry)
    chosen: list[Entry] = []
    queues = [by_class[c] for c in config.data.classes if c in by_class]
    while len(chosen) < n and any(queues):
        for queue in queues:
            if queue and len(chosen) < n:
                chosen.append(queue.pop(0))
    return sorted(chosen, key=lambda e: e.id)


def split_entries(entries: list[Entry], config: FinetuneConfig) -> tuple[list[Entry], list[Entry]]:
    """Train / validation studies, as the config says; deterministic given ``seed``."""
    data = config.data
    entries = sorted(entries, key=lambda e: e.id)
    if data.max_subjects > 0:
        entries = spread_subjects(entries, data.max_subjects, config)
    rng = np.random.default_rng(config.seed)
    if data.split_column is not None:
        for entry in entries:
            if data.split_column not in entry.metadata:
                raise InputError(f"{entry.source}: no value in split column {data.split_column!r}")
        train = [e for e in entries if str(e.metadata[data.split_column]).lower() == "train"]
        val = [e for e in entries if str(e.metadata[data.split_column]).lower() in ("val", "validation")]
    elif data.val_ids is not None:
        known = {e.id for e in entries}
        missing = [i for i in data.val_ids if i not in known]
        if missing:
            raise InputError(f"config key 'data.val_ids': unknown study ids {missing[:5]}")
        val = [e for e in entries if e.id in set(data.val_ids)]
        train = [e for e in entries if e.id not in set(data.val_ids)]
    else:
        groups: dict[str, list[Entry]] = {"": entries}
        if config.task == "classification" and data.stratify:
            groups = {}
            for entry in entries:
                groups.setdefault(_class_of(entry.metadata, config, entry.source), []).append(entry)
        val = []
        for members in groups.values():
            n_val = int(round(data.val_fraction * len(members)))
            if data.val_fraction > 0 and len(members) >= 2:
                n_val = min(max(n_val, 1), len(members) - 1)
            order = rng.permutation(len(members))
            val += [members[i] for i in order[:n_val]]
        val_ids = {e.id for e in val}
        train = [e for e in entries if e.id not in val_ids]
        val = sorted(val, key=lambda e: e.id)
    if data.proportion < 1.0 and train:
        keep = max(1, int(data.proportion * len(train)))
        chosen = set(rng.permutation(len(train))[:keep].tolist())
        train = [e for i, e in enumerate(train) if i in chosen]
    if not train:
        raise InputError("no training studies left after the split (check data.val_* / split_column / proportion)")
    return train, val


# ---------------------------------------------------------------------------------------------------------------------
# 2-3. Reading, checking, model space
# ---------------------------------------------------------------------------------------------------------------------


def _crop_center(study: Study, view_name: str, config: FinetuneConfig) -> np.ndarray | None:
    """World point of the in-plane crop centre: the label-free heart location for SAX, else the image centre."""
    if view_name != "sax" or config.data.crop_center != "heart":
        return None
    from cinema.preprocess import locate_study_heart

    return np.asarray(locate_study_heart(study, view_name).center_mm, dtype=np.float64)


def config_to_model_space(
    image: np.ndarray, affine: np.ndarray, view_name: str, config: Any, center: np.ndarray | None
) -> tuple[np.ndarray, Any]:
    """`to_model_space` with a training config's geometry for one view (its spacing, patch size, z spacing and
    intensity scope): the one mapping from config keys to model space, shared by fine-tuning and pre-training.

    ``config``: a `FinetuneConfig` or `PretrainConfig` (anything with ``data`` and ``view_data``).
    """
    from cinema.preprocess.model_space import to_model_space

    data = config.data
    geometry = config.view_data(view_name)
    z_spacing: Any = {"auto": "auto", "native": "native", "fixed": float(data.sax.spacing[-1])}[data.z_spacing]
    return to_model_space(
        image,
        affine,
        "sax" if view_name == "sax" else "lax",
        center_mm=center,
        intensity=data.intensity,
        z_spacing=z_spacing,
        min_slices=None,
        in_plane_shape=tuple(geometry.patch_size[:2]),
        in_plane_spacing=tuple(geometry.spacing[:2]),
    )


def _to_model_space(
    view_name: str,
    view: CineView,
    frames: list[int],
    config: FinetuneConfig,
    labels: bool,
    center: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray | None, Any]:
    """(F, *spatial) model-space images (and labels) of the given frames, plus the transform."""
    from cinema.preprocess.model_space import resample_to_model

    images, transform = config_to_model_space(view.image[..., frames], view.affine, view_name, config, center)
    label_maps = None
    if labels:
        stacked = np.stack([view.labels[f] for f in frames], axis=-1)
        label_maps = np.moveaxis(resample_to_model(stacked, transform, "label"), -1, 0)
    return np.moveaxis(images, -1, 0).astype(np.float32), label_maps, transform


def _number(meta: dict[str, Any], column: str, where: str, what: str) -> float:
    if column not in meta:
        raise InputError(f"{where}: no value in column {column!r} ({what})")
    try:
        value = float(meta[column])
    except (TypeError, ValueError):
        raise InputError(f"{where}: column {column!r} ({what}) is not a number: {meta[column]!r}") from None
    if not math.isfinite(value):
        raise InputError(f"{where}: column {column!r} ({what}) is not finite: {meta[column]!r}")
    return value


def _regression_value(study: Study, meta: dict[str, Any], column: str, where: str) -> float:
    if column in meta:
        return _number(meta, column, where, "regression target")
    if column == "bmi" and meta.get("height_cm") and meta.get("weight_kg"):
        return float(meta["weight_kg"]) / (float(meta["height_cm"]) / 100.0) ** 2
    if column in FUNCTION_TARGETS:
        from cinema.metrics import ventricular_function

        sax = study.view("sax")
        if study.ed_frame not in sax.labels or study.es_frame not in sax.labels:
            raise InputError(f"{where}: {column} needs SAX label maps at ED and ES")
        function = ventricular_function(sax.labels[study.ed_frame], sax.labels[study.es_frame], sax.affine)
        if not math.isfinite(function[column]):
            raise InputError(f"{where}: {column} is undefined (empty ventricle in the labels)")
        return float(function[column])
    raise InputError(f"{where}: no value in column {column!r} (regression target)")


def _task_frames(study: Study, config: FinetuneConfig, where: str) -> list[int]:
    if config.task == "segmentation":
        common = None
        for name in config.views:
            labelled = set(study.view(name).labels)
            if not labelled:
                raise InputError(f"{where}: no {name} label maps; segmentation needs labelled frames")
            common = labelled if common is None else common & labelled
        if not common:
            raise InputError(f"{where}: no frame is labelled in every view {config.views}")
        return sorted(common)
    if config.task in STACKED_TASKS:
        needed = [("ED", study.ed_frame), ("ES", study.es_frame)][: config.n_frames]
        for phase, frame in needed:
            if frame is None:
                raise InputError(f"{where}: the {phase} frame is unknown ({config.n_frames}-frame input needs it)")
        return [frame for _, frame in needed]
    return [study.ed_frame if study.ed_frame is not None else 0]


def prepare_subject(entry: Entry, config: FinetuneConfig) -> Subject:
    """Read one study, check it for the task, and bring it into model space."""
    study = entry.load()
    where = entry.source
    meta = {**entry.metadata, **study.metadata}
    for name in config.views:
        study.view(name)  # raises naming the study when the view is missing
    frames = _task_frames(study, config, where)
    subject = Subject(entry.id, images={}, frames=frames)
    segmentation = config.task == "segmentation"
    for name in config.views:
        view = study.views[name]
        for frame in frames:
            if frame >= view.n_frames:
                raise InputError(f"{where}: frame {frame} is outside the {view.n_frames} frames of {name}")
        if segmentation:
            for frame in frames:
                values = np.unique(view.labels[frame])
                bad = values[values >= config.out_chans]
                if bad.size:
                    raise InputError(
                        f"{where}: {name} labels of frame {frame} hold {bad.tolist()}, outside the "
                        f"{config.out_chans} classes 0..{config.out_chans - 1} (model.out_chans)"
                    )
        center = _crop_center(study, name, config)
        images, labels, transform = _to_model_space(name, view, frames, config, segmentation, center)
        subject.images[name] = images
        if labels is not None:
            subject.labels[name] = labels
        if config.task.startswith("landmark"):
            columns = config.data.landmark_columns
            native = np.array([_number(meta, c, where, "landmark coordinate") for c in columns]).reshape(-1, 2)
            subject.points[name] = transform.native_to_model_index(native).astype(np.float32)
    if config.task == "classification":
        subject.target = float(config.data.classes.index(_class_of(meta, config, where)))
    elif config.task == "regression":
        subject.target = _regression_value(study, meta, config.data.regression_column, where)
    elif config.task == "survival":
        subject.time = _number(meta, config.data.time_column, where, "survival time")
        subject.event = _number(meta, config.data.event_column, where, "event indicator")
        if subject.time < 0 or subject.event not in (0.0, 1.0):
            raise InputError(
                f"{where}: survival time must be >= 0 and event 0 or 1, got {subject.time}, {subject.event}"
            )
    return subject


# ---------------------------------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------------------------------


def derive_seed(*parts: int) -> int:
    """A well-mixed 31-bit seed from integers (seed, epoch, stream), stable across platforms."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


class EpochSampler(Sampler):
    """Shuffled indices paired with per-sample seeds, both a pure function of (seed, epoch).

    Yields ``(index, sample_seed)``; the dataset draws its random crop from ``sample_seed``, so any number of loader
    workers and any resume point give the same samples.
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, 2))
        order = torch.randperm(self.n, generator=generator).tolist()
        seeds = torch.randint(0, 2**31 - 1, (self.n,), generator=generator).tolist()
        return iter(zip(order, seeds, strict=True))


class _SubjectDataset(Dataset):
    def __init__(self, subjects: list[Subject], config: FinetuneConfig) -> None:
        self.subjects = subjects
        self.config = config
        self.views = config.views

    @property
    def subject_ids(self) -> list[str]:
        return [s.id for s in self.subjects]

    def _targets(self, subject: Subject, sample: dict[str, Any]) -> None:
        if subject.target is not None:
            dtype = torch.long if self.config.task == "classification" else torch.float32
            sample["target"] = torch.tensor(subject.target, dtype=dtype)
        if subject.time is not None:
            sample["time"] = torch.tensor(subject.time, dtype=torch.float32)
            sample["event"] = torch.tensor(subject.event, dtype=torch.float32)


class TrainDataset(_SubjectDataset):
    """Patch-size training samples: one per labelled frame (segmentation), slice (``slice_2d``) or study."""

    def __init__(self, subjects: list[Subject], config: FinetuneConfig) -> None:
        super().__init__(subjects, config)
        self.samples: list[tuple[int, int | None, int | None]] = []
        for i, subject in enumerate(subjects):
            if config.task in STACKED_TASKS:
                self.samples.append((i, None, None))
                continue
            for f in range(len(subject.frames)):
                if config.data.slice_2d:
                    depth = subject.images["sax"].shape[-1]
                    self.samples += [(i, f, z) for z in range(depth)]
                else:
                    self.samples.append((i, f, None))

    def _flip_context(self, rng: np.random.Generator) -> bool:
        transform = self.config.transform
        return transform.enabled and rng.random() < transform.context_flip

    def sampler(self, seed: int) -> EpochSampler:
        return EpochSampler(len(self), seed)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, seed = key if isinstance(key, tuple) else (key, 0)
        rng = np.random.default_rng(seed)
        subject_index, frame, depth = self.samples[index]
        subject = self.subjects[subject_index]
        sample_id = subject.id if frame is None else f"{subject.id}:{subject.frames[frame]}"
        if depth is not None:
            sample_id += f":{depth}"
        sample: dict[str, Any] = {"id": sample_id, "image": {}, "size": {}}
        for view in self.views:
            frames = slice(None) if frame is None else slice(frame, frame + 1)
            image = subject.images[view][frames]
            label = subject.labels[view][frames] if view in subject.labels else None
            if depth is not None:
                image = _slice_input(image, depth, self.config.data.context_slices)
                label = label[..., depth] if label is not None else None
            patch = self.config.patch_size(view)
            image_patch, starts = crop_or_pad(image, patch, rng)
            if depth is not None and self.config.data.context_slices and self._flip_context(rng):
                image_patch = _reverse_context(image_patch, self.config.data.context_slices)
            sample["image"][view] = torch.from_numpy(image_patch)
            sample["size"][view] = torch.tensor([min(e, p) for e, p in zip(image.shape[1:], patch, strict=True)])
            if label is not None:
                sample.setdefault("label", {})[view] = torch.from_numpy(crop_or_pad(label, patch, starts=starts)[0])
            if view in subject.points:
                offset = np.asarray(starts[:2], dtype=np.float32)
                sample.setdefault("points", {})[view] = torch.from_numpy(subject.points[view] - offset)
        self._targets(subject, sample)
        return sample


def _slice_input(image: np.ndarray, depth: int, context: int) -> np.ndarray:
    """(F, X, Y, Z) -> (F * (1 + 2 * context), X, Y): slice ``depth`` of each frame with its neighbours as channels."""
    if not context:
        return image[..., depth]
    stacked = neighbour_slices(image, context)[..., depth, :]  # (F, X, Y, C)
    return np.moveaxis(stacked, -1, 1).reshape(-1, *image.shape[1:3])


def _reverse_context(image: np.ndarray, context: int) -> np.ndarray:
    """(F * (1 + 2k), X, Y) with every frame's neighbours in the opposite order (the stack read the other way)."""
    width = 1 + 2 * context
    grouped = image.reshape(-1, width, *image.shape[1:])
    return np.ascontiguousarray(grouped[:, ::-1].reshape(image.shape))


class ValDataset(_SubjectDataset):
    """Whole studies (one sample per labelled frame for segmentation), padded at the end to >= the patch size."""

    def __init__(self, subjects: list[Subject], config: FinetuneConfig) -> None:
        super().__init__(subjects, config)
        self.samples: list[tuple[int, int | None]] = []
        for i, subject in enumerate(subjects):
            if config.task == "segmentation":
                self.samples += [(i, f) for f in range(len(subject.frames))]
            elif config.task in STACKED_TASKS:
                self.samples.append((i, None))
            else:
                self.samples.append((i, 0))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        subject_index, frame = self.samples[index]
        subject = self.subjects[subject_index]
        sample_id = subject.id if frame is None else f"{subject.id}:{subject.frames[frame]}"
        sample: dict[str, Any] = {"id": sample_id, "image": {}, "size": {}}
        for view in self.views:
            frames = slice(None) if frame is None else slice(frame, frame + 1)
            image = subject.images[view][frames]
            patch = self.config.patch_size(view)
            # a 2-D network sees SAX slices: pad in-plane only and keep every slice
            extent = image.shape[1:]
            target = [max(e, p) for e, p in zip(extent, patch, strict=False)] + list(extent[len(patch) :])
            sample["image"][view] = torch.from_numpy(crop_or_pad(image, target)[0])
            sample["size"][view] = torch.tensor(image.shape[1:])
            if view in subject.labels:
                sample.setdefault("label", {})[view] = torch.from_numpy(
                    crop_or_pad(subject.labels[view][frames], target)[0]
                )
            if view in subject.points:
                sample.setdefault("points", {})[view] = torch.from_numpy(subject.points[view])
        self._targets(subject, sample)
        return sample


def build_datasets(config: FinetuneConfig) -> tuple[TrainDataset, ValDataset | None]:
    """Read, check and preprocess every chosen study; z-score regression targets (stats stored in the config)."""
    train_entries, val_entries = split_entries(list_entries(config), config)
    logger.info("reading %d training and %d validation studies", len(train_entries), len(val_entries))
    train = [prepare_subject(e, config) for e in train_entries]
    val = [prepare_subject(e, config) for e in val_entries]
    if config.task == "regression":
        if config.data.regression_mean is None:
            values = np.array([s.target for s in train], dtype=np.float64)
            std = float(values.std()) if len(values) > 1 else 0.0
            config.data.regression_mean = float(values.mean())
            config.data.regression_std = std if std > 0 else 1.0
        for subject in train + val:
            subject.target = (subject.target - config.data.regression_mean) / config.data.regression_std
    return TrainDataset(train, config), (ValDataset(val, config) if val else None)
