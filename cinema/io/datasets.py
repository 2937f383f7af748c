"""Readers for public dataset layouts (ACDC, M&Ms, M&Ms-2) and for a generic CSV manifest of studies.

All of them return `Study` objects with labels in the CineMA convention: 0 background, 1 RV cavity, 2 LV
myocardium, 3 LV cavity. M&Ms and M&Ms-2 use 1 LV, 2 MYO, 3 RV on disk and are remapped on reading.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from cinema.io.errors import InputError
from cinema.io.nifti import load_nifti, read_label_nifti, read_nifti_cine
from cinema.io.study import SAX, VIEW_NAMES, CineView, Study

# M&Ms / M&Ms-2 label codes -> CineMA codes (LV 1 -> 3, MYO 2 -> 2, RV 3 -> 1).
MNMS_TO_CINEMA_LABELS = np.array([0, 3, 2, 1], dtype=np.uint8)

_ACDC_FRAME = re.compile(r"^(?P<pid>.+)_frame(?P<frame>\d+)\.nii(\.gz)?$")


def parse_number(text: str) -> Any:
    """A CSV or Info.cfg value as int, else float, else the stripped text."""
    text = text.strip()
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _same_geometry(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.allclose(a, b, atol=1e-4)


# --------------------------------------------------------------------------------------------------------- ACDC


def read_acdc_info(folder: str | os.PathLike) -> dict[str, Any]:
    """Parse an ACDC patient folder without reading images.

    Returns ``ed_frame`` / ``es_frame`` (0-based; Info.cfg is 1-based), ``group``, ``height_cm``, ``weight_kg``,
    ``n_frames`` (NbFrame), ``frames`` (0-based frame -> (image path, label path or None)) and ``cine`` (the
    ``_4d.nii.gz`` path or None).
    """
    folder = Path(folder)
    cfg = folder / "Info.cfg"
    if not cfg.is_file():
        raise FileNotFoundError(f"{cfg}: no such file (not an ACDC patient folder)")
    fields: dict[str, str] = {}
    for line_number, line in enumerate(cfg.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        if ":" not in line:
            raise InputError(f"{cfg}: line {line_number} is not 'key: value': {line!r}")
        key, value = line.split(":", 1)
        fields[key.strip()] = value.strip()
    info: dict[str, Any] = {"patient_id": folder.name}
    for key in ("ED", "ES", "NbFrame"):
        if key not in fields:
            raise InputError(f"{cfg}: missing {key}")
        try:
            number = int(float(fields[key]))
        except ValueError as err:
            raise InputError(f"{cfg}: {key} is not a number: {fields[key]!r}") from err
        if number < 1:
            raise InputError(f"{cfg}: {key} must be >= 1 (1-based), got {number}")
        info[key] = number
    info["ed_frame"], info["es_frame"], info["n_frames"] = info.pop("ED") - 1, info.pop("ES") - 1, info.pop("NbFrame")
    info["group"] = fields.get("Group")
    for key, name in (("Height", "height_cm"), ("Weight", "weight_kg")):
        info[name] = float(fields[key]) if fields.get(key) not in (None, "") else None
    frames: dict[int, tuple[Path, Path | None]] = {}
    for path in sorted(folder.iterdir()):
        match = _ACDC_FRAME.match(path.name)
        if match:
            label = path.with_name(path.name.replace(f"_frame{match['frame']}", f"_frame{match['frame']}_gt"))
            frames[int(match["frame"]) - 1] = (path, label if label.is_file() else None)
    cine = [p for p in folder.iterdir() if p.name.endswith(("_4d.nii.gz", "_4d.nii"))]
    info["frames"] = frames
    info["cine"] = cine[0] if cine else None
    if info["cine"] is None and not frames:
        raise InputError(f"{folder}: ACDC folder has neither a _4d cine nor _frameNN images")
    return info


def read_acdc_patient(folder: str | os.PathLike) -> Study:
    """Read an ACDC patient folder.

    With a ``_4d.nii.gz`` cine the SAX view holds every frame; without one (as in the shared copy) it holds the
    ``_frameNN`` volumes in frame order and ``frame_indices`` records their acquisition frames. ED/ES always index
    the stored frames; ``_gt`` files become labels of their frames.
    """
    folder = Path(folder)
    info = read_acdc_info(folder)
    frames = info["frames"]
    if info["cine"] is not None:
        base = read_nifti_cine(info["cine"], view=SAX)
        image, affine, frame_indices = base.image, base.affine, None
        stored = list(range(base.n_frames))
    else:
        stored = sorted(frames)
        volumes = []
        affine = None
        for frame in stored:
            data, frame_affine, _ = load_nifti(frames[frame][0])
            if data.ndim != 3:
                raise InputError(f"{frames[frame][0]}: expected a 3-D frame, got shape {data.shape}")
            if affine is None:
                affine = frame_affine
            elif not _same_geometry(affine, frame_affine) or data.shape != volumes[0].shape:
                raise InputError(f"{frames[frame][0]}: geometry differs from the other frames of {folder}")
            volumes.append(data.astype(np.float32))
        image = np.stack(volumes, axis=-1)
        frame_indices = stored
    position = {frame: i for i, frame in enumerate(stored)}
    for key in ("ed_frame", "es_frame"):
        if info[key] not in position:
            raise InputError(f"{folder}: Info.cfg {key[:2].upper()} frame {info[key] + 1} has no image")
    labels = {}
    for frame, (_, label_path) in frames.items():
        if label_path is not None and frame in position:
            labels[position[frame]] = read_label_nifti(label_path, image.shape[:3], affine)
    view = CineView(
        image=image, affine=affine, labels=labels, frame_indices=frame_indices, source=str(folder), name=SAX
    )
    metadata = {
        "source_format": "acdc",
        "subject_id": info["patient_id"],
        "group": info["group"],
        "height_cm": info["height_cm"],
        "weight_kg": info["weight_kg"],
        "n_frames_acquired": info["n_frames"],
        "ed_frame_acquired": info["ed_frame"],
        "es_frame_acquired": info["es_frame"],
    }
    return Study(
        views={SAX: view},
        ed_frame=position[info["ed_frame"]],
        es_frame=position[info["es_frame"]],
        metadata=metadata,
        source=str(folder),
    )


def is_acdc_folder(path: str | os.PathLike) -> bool:
    return (Path(path) / "Info.cfg").is_file()


# --------------------------------------------------------------------------------------------------------- M&Ms


# the subject column of each published information CSV: M&Ms, M&Ms-2 (dataset_information.csv), CineMA's own
_MNMS_SUBJECT_COLUMNS = ("External code", "SUBJECT_CODE", "pid")


def read_mnms_table(csv_path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """An M&Ms information CSV keyed by subject folder name: M&Ms ("External code"; ED/ES columns are 0-based frame
    indices) or M&Ms-2's ``dataset_information.csv`` as published ("SUBJECT_CODE" numbers 1..360 name the folders
    001..360; DISEASE, VENDOR, SCANNER, FIELD ...)."""
    csv_path = Path(csv_path)
    rows = _read_csv_rows(csv_path)
    column = next((c for c in _MNMS_SUBJECT_COLUMNS if c in rows[0]), None)
    if column is None:
        raise InputError(f"{csv_path}: no subject column (one of {', '.join(_MNMS_SUBJECT_COLUMNS)})")
    table = {}
    for row in rows:
        code = (row.get(column) or "").strip()
        if not code:
            if not any((v or "").strip() for v in row.values()):
                continue  # the published M&Ms-2 CSV ends with empty rows
            raise InputError(f"{csv_path}: a row has no {column!r} (subject) value")
        if column == "SUBJECT_CODE" and code.isdigit():
            code = f"{int(code):03d}"  # M&Ms-2's folders are zero-padded
        table[code] = {k: parse_number(v) for k, v in row.items() if k and k.strip() and v not in (None, "")}
    return table


def _remap_mnms_labels(labels: np.ndarray, path: Path) -> np.ndarray:
    if labels.size and labels.max() > 3:
        raise InputError(f"{path}: M&Ms labels must be in 0..3, found {int(labels.max())}")
    return MNMS_TO_CINEMA_LABELS[labels]


def read_mnms_subject(
    folder: str | os.PathLike,
    table: dict[str, dict[str, Any]] | str | os.PathLike | None = None,
) -> Study:
    """Read an M&Ms subject folder (``<id>_sa.nii.gz`` + ``<id>_sa_gt.nii.gz``) or an M&Ms-2 one.

    M&Ms: ED/ES come from `table` (the information CSV or its parsed form, columns ED and ES, 0-based); labels are
    taken for the frames whose label map is not empty. M&Ms-2 (``<id>_SA_CINE``, ``<id>_SA_ED`` ...,
    ``<id>_LA_*`` = 4-chamber): ED/ES are found as the cine frames identical to the ``_ED`` / ``_ES`` volumes.
    """
    folder = Path(folder)
    subject = folder.name
    if table is not None and not isinstance(table, dict):
        table = read_mnms_table(table)
    row = (table or {}).get(subject, {})
    if (folder / f"{subject}_SA_ED.nii.gz").is_file() or (folder / f"{subject}_SA_CINE.nii.gz").is_file():
        return _read_mnms2_subject(folder, row)
    image_path = folder / f"{subject}_sa.nii.gz"
    view = read_nifti_cine(image_path, view=SAX)
    ed_frame = int(row["ED"]) if "ED" in row else None
    es_frame = int(row["ES"]) if "ES" in row else None
    labels = {}
    label_path = folder / f"{subject}_sa_gt.nii.gz"
    if label_path.is_file():
        stacked = read_label_nifti(label_path, view.spatial_shape, view.affine)
        if stacked.ndim == 3:
            stacked = stacked[..., None]
        if stacked.shape[-1] != view.n_frames:
            raise InputError(f"{label_path}: {stacked.shape[-1]} label frames for {view.n_frames} image frames")
        stacked = _remap_mnms_labels(stacked, label_path)
        labelled = [t for t in range(view.n_frames) if stacked[..., t].any()]
        labels = {t: stacked[..., t] for t in labelled}
    view = CineView(image=view.image, affine=view.affine, labels=labels, source=str(image_path), name=SAX)
    metadata = {"source_format": "mnms", "subject_id": subject}
    metadata.update({k: v for k, v in row.items() if k not in ("ED", "ES", *_MNMS_SUBJECT_COLUMNS)})
    return Study(views={SAX: view}, ed_frame=ed_frame, es_frame=es_frame, metadata=metadata, source=str(folder))


def _matching_frame(cine: CineView, volume: np.ndarray, path: Path) -> int:
    volume = volume.reshape(cine.spatial_shape)
    for t in range(cine.n_frames):
        if np.array_equal(cine.frame(t), volume):
            return t
    raise InputError(f"{path}: no frame of the cine equals this volume, cannot place it in time")


def _read_mnms2_view(folder: Path, subject: str, prefix: str, name: str) -> tuple[CineView, int | None, int | None]:
    cine_path = folder / f"{subject}_{prefix}_CINE.nii.gz"
    phases = {}
    for phase in ("ED", "ES"):
        path = folder / f"{subject}_{prefix}_{phase}.nii.gz"
        if path.is_file():
            phases[phase] = (path, read_nifti_cine(path, view=name))
    if cine_path.is_file():
        view = read_nifti_cine(cine_path, view=name)
        index = {phase: _matching_frame(view, v.image, p) for phase, (p, v) in phases.items()}
        image, frame_indices = view.image, None
    else:
        if not phases:
            raise FileNotFoundError(f"{folder}: no {prefix}_CINE, {prefix}_ED or {prefix}_ES image")
        index = {phase: i for i, phase in enumerate(phases)}
        view = next(iter(phases.values()))[1]
        image, frame_indices = np.concatenate([v.image for _, v in phases.values()], axis=-1), None
    labels = {}
    for phase, (path, _) in phases.items():
        label_path = path.with_name(path.name.replace(".nii.gz", "_gt.nii.gz"))
        if label_path.is_file():
            label = read_label_nifti(label_path, view.spatial_shape, view.affine)
            label = label.reshape(view.spatial_shape)
            labels[index[phase]] = _remap_mnms_labels(label, label_path)
    result = CineView(
        image=image, affine=view.affine, labels=labels, frame_indices=frame_indices, source=str(folder), name=name
    )
    return result, index.get("ED"), index.get("ES")


def _read_mnms2_subject(folder: Path, row: dict[str, Any]) -> Study:
    subject = folder.name
    sax, ed_frame, es_frame = _read_mnms2_view(folder, subject, "SA", SAX)
    views = {SAX: sax}
    if any(folder.glob(f"{subject}_LA_*.nii.gz")):
        views["lax_4c"], _, _ = _read_mnms2_view(folder, subject, "LA", "lax_4c")
    metadata = {"source_format": "mnms2", "subject_id": subject}
    metadata.update({k: v for k, v in row.items() if k not in ("ED", "ES", *_MNMS_SUBJECT_COLUMNS)})
    return Study(views=views, ed_frame=ed_frame, es_frame=es_frame, metadata=metadata, source=str(folder))


def is_mnms_folder(path: str | os.PathLike) -> bool:
    path = Path(path)
    return path.is_dir() and any(
        (path / f"{path.name}_{suffix}.nii.gz").is_file() for suffix in ("sa", "SA_CINE", "SA_ED")
    )


# ------------------------------------------------------------------------------------------------ CSV manifest

MANIFEST_COLUMNS_DOC = """\
One row per study; paths are relative to the CSV's folder. Columns (all optional but at least one image):
  id                         study identifier (default: row number)
  path                       anything `read_study` understands (DICOM folder, study folder, ACDC/M&Ms folder, NIfTI)
  sax, lax_2c, lax_3c, lax_4c NIfTI cine (4-D) or frame (3-D) per view
  ed_frame, es_frame         0-based stored-frame indices
  <view>_label               label cine with the image's shape; frames with any non-zero voxel are labelled
  <view>_label_ed/_label_es  single-frame label maps of the ED / ES frame
  anything else              copied into the study's metadata (numbers parsed)
"""


def _read_csv_rows(csv_path: Path) -> list[dict[str, str]]:
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path}: no such file")
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"{csv_path}: not a readable CSV file ({err})") from err
    if not rows:
        raise InputError(f"{csv_path}: CSV has no rows")
    return rows


def _resolve(base: Path, value: str) -> Path:
    path = Path(value.strip()).expanduser()
    return path if path.is_absolute() else base / path


def read_manifest_row(row: dict[str, str], base_dir: str | os.PathLike, where: str = "manifest") -> Study:
    """Build one `Study` from a manifest row (see `MANIFEST_COLUMNS_DOC`)."""
    from cinema.io.read import read_study  # late import: read.py dispatches back to this module

    base = Path(base_dir)
    row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
    used = {"id", "path", "ed_frame", "es_frame"}
    study_id = row.get("id", "")
    if row.get("path"):
        loaded = read_study(_resolve(base, row["path"]))
        views, metadata = dict(loaded.views), dict(loaded.metadata)
        ed_frame, es_frame = loaded.ed_frame, loaded.es_frame
    else:
        views, metadata, ed_frame, es_frame = {}, {}, None, None
    for key in ("ed_frame", "es_frame"):
        if row.get(key):
            try:
                value = int(float(row[key]))
            except ValueError as err:
                raise InputError(f"{where}: {key} is not a frame index: {row[key]!r}") from err
            ed_frame, es_frame = (value, es_frame) if key == "ed_frame" else (ed_frame, value)
    for name in VIEW_NAMES:
        label_columns = (f"{name}_label", f"{name}_label_ed", f"{name}_label_es")
        used.update((name, *label_columns))
        if row.get(name):
            views[name] = read_nifti_cine(_resolve(base, row[name]), view=name)
        if not any(row.get(c) for c in label_columns):
            continue
        if name not in views:
            raise InputError(f"{where}: labels given for {name} but no {name} image")
        view = views[name]
        labels = dict(view.labels)
        if row.get(f"{name}_label"):
            path = _resolve(base, row[f"{name}_label"])
            stacked = read_label_nifti(path, view.spatial_shape, view.affine)
            if stacked.ndim == len(view.spatial_shape):
                stacked = stacked[..., None]
            if stacked.shape[-1] != view.n_frames:
                raise InputError(f"{path}: {stacked.shape[-1]} label frames for {view.n_frames} image frames")
            labels.update({t: stacked[..., t] for t in range(view.n_frames) if stacked[..., t].any()})
        for phase, frame in (("ed", ed_frame), ("es", es_frame)):
            if row.get(f"{name}_label_{phase}"):
                path = _resolve(base, row[f"{name}_label_{phase}"])
                if frame is None:
                    raise InputError(f"{path}: {phase.upper()} label given but the row has no {phase}_frame")
                labels[frame] = read_label_nifti(path, view.spatial_shape, view.affine).reshape(view.spatial_shape)
        views[name] = CineView(
            image=view.image,
            affine=view.affine,
            frame_times_ms=view.frame_times_ms,
            labels=labels,
            frame_indices=view.frame_indices,
            source=view.source,
            name=name,
        )
    if not views:
        raise InputError(f"{where}: row has no image column (path, sax, lax_2c, lax_3c, lax_4c)")
    metadata.update({k: parse_number(v) for k, v in row.items() if k not in used and v != ""})
    if study_id:
        metadata["study_id"] = study_id
    return Study(views=views, ed_frame=ed_frame, es_frame=es_frame, metadata=metadata, source=where)


def read_manifest(csv_path: str | os.PathLike) -> Iterator[Study]:
    """Yield one `Study` per row of a CSV manifest (lazily: a cohort need not fit in memory)."""
    csv_path = Path(csv_path)
    rows = _read_csv_rows(csv_path)
    columns = set(rows[0])
    if not columns & {"path", *VIEW_NAMES}:
        raise InputError(f"{csv_path}: manifest needs a 'path' or a view column ({', '.join(VIEW_NAMES)})")
    for number, row in enumerate(rows, start=2):  # line 1 is the header
        yield read_manifest_row(row, csv_path.parent, where=f"{csv_path}:{number}")


def nifti_shape(path: str | os.PathLike) -> tuple[int, ...]:
    """Image shape from the header only (cheap checks over many files)."""
    try:
        return tuple(int(n) for n in nib.load(str(path)).shape)
    except Exception as err:
        raise InputError(f"{path}: unreadable NIfTI header ({type(err).__name__}: {err})") from err


# ------------------------------------------------------------------------------------------------ CineMA preprocessed

CINEMA_LAYOUT_DOC = """\
The layout CineMA's own preprocessing writes (and its Hugging Face dataset copies, e.g. mathpluscode/ACDC):
  <root>/<split>_metadata.csv or <root>/<split>.csv   one row per subject, column pid (+ pathology, vendor, ...)
  <root>/<split>/<pid>/<pid>_<view>_ed.nii.gz, _es    ED / ES frames of a view (sax, lax_2c, lax_3c, lax_4c)
  <root>/<split>/<pid>/<pid>_<view>_ed_gt.nii.gz, _es_gt   their labels (0 bg, 1 RV, 2 MYO, 3 LV)
  <root>/<split>/<pid>/<pid>_<view>_t.nii.gz          the whole cine, where it was kept (ACDC, Kaggle DSB)
Images are already in model space (1 x 1 x 10 mm SAX cropped to 192 x 192, LAX 1 x 1 mm 256 x 256 stored as
(x, y, 1)). ED / ES of a cine: the row's ed_frame / es_frame (ACDC's Info.cfg numbers, 1-based), else the cine frame
equal to the ED / ES file; where neither places them, the view is the ED and ES files (frames 0 and 1).
Variants of the same preprocessing, read alike:
  Kaggle DSB   <pid>_sax_t (x, y, z, t) and <pid>_lax_2c_t / _lax_4c_t stored as (x, y, t); no masks and no ED / ES:
               the metadata CSV holds the reference LV volumes (diastole_volume, systole_volume, ml) and ef
  Rescan       files without the pid prefix (sax_t, sax_gt_t = pseudo-labels of every frame, lax_2c_t, lax_4c_t as
               (x, y, 1, t)); pids may be nested (train: A/s_0000); ED / ES = the row's ed_index / es_index (0-based);
               the paired test_retest_100 split has edv / esv / ef and no masks, and scan_NN_A / scan_NN_B share the
               pair_id scan_NN (scan-rescan coefficient of variation in `cinema evaluate`)
"""

_CINEMA_PHASES = ("ed", "es", "t")


# the reference's Rescan preprocessing names the paired scans scan_<NN>_A and scan_<NN>_B
_RESCAN_PAIR = re.compile(r"^(?P<pair>scan_\d+)_[AB]$")
# row columns that place frames (read into ed_frame / es_frame), not metadata
_FRAME_COLUMNS = ("pid", "ed_frame", "es_frame", "ed_index", "es_index")


def _cinema_file(folder: Path, view: str, part: str) -> Path:
    """``<pid>_<view>_<part>.nii.gz``, or Rescan's ``<view>_<part>.nii.gz`` where only that one exists."""
    prefixed = folder / f"{folder.name}_{view}_{part}.nii.gz"
    bare = folder / f"{view}_{part}.nii.gz"
    return bare if not prefixed.is_file() and bare.is_file() else prefixed


def is_cinema_preprocessed_folder(path: str | os.PathLike) -> bool:
    """A subject folder of CineMA's preprocessed layout (``<pid>/<pid>_sax_ed.nii.gz``, Rescan's ``sax_t.nii.gz``
    ...)."""
    path = Path(path)
    return path.is_dir() and any(
        _cinema_file(path, view, part).is_file() for view in VIEW_NAMES for part in _CINEMA_PHASES
    )


def _pid_key(pid: str) -> str:
    # the reference writes M&Ms-2 and Kaggle ids as numbers: 1 names the folder 001 (M&Ms-2) and 7 the folder 7
    # (Kaggle), so numeric ids are compared as numbers
    return str(int(pid)) if pid.isdigit() else pid


def cinema_table_row(table: dict[str, dict[str, Any]], pid: str) -> dict[str, Any]:
    """The row of subject folder ``pid`` (a path relative to its split folder) in a `cinema_preprocessed_table`, or
    {}."""
    return table.get(_pid_key(pid), {})


def _cinema_table_beside(folder: Path) -> dict[str, Any]:
    """The metadata row of a subject folder from its split's CSV (``<root>/<split>_metadata.csv`` or
    ``<root>/<split>.csv``), or {} when there is none. The split folder is the subject's parent, or its grandparent
    for Rescan's nested ids (``train/A/s_0000``)."""
    for split_dir in list(folder.parents)[:2]:
        root, split = split_dir.parent, split_dir.name
        for csv_path in (root / f"{split}_metadata.csv", root / f"{split}.csv"):
            if csv_path.is_file():
                return cinema_table_row(cinema_preprocessed_table(csv_path), folder.relative_to(split_dir).as_posix())
    return {}


def cinema_preprocessed_table(csv_path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """pid -> the row of a CineMA metadata CSV (numbers parsed); look rows up with `cinema_table_row`.

    A Rescan pair (``scan_NN_A`` / ``scan_NN_B``) gets ``pair_id`` ``scan_NN`` unless the CSV has that column.
    """
    csv_path = Path(csv_path)
    rows = _read_csv_rows(csv_path)
    if "pid" not in rows[0]:
        raise InputError(f"{csv_path}: a CineMA metadata CSV has a 'pid' column")
    table = {}
    for row in rows:
        pid = (row.get("pid") or "").strip()
        if pid:
            values = {k: parse_number(v) for k, v in row.items() if k and (v or "").strip() != ""}
            values["pid"] = pid  # as written: "001" stays text
            pair = _RESCAN_PAIR.match(pid)
            if pair and "pair_id" not in values:
                values["pair_id"] = pair["pair"]
            # a later row of the same pid wins: the reference's Rescan writes a second B scan over the first
            table[_pid_key(pid)] = values
    return table


def _read_cinema_cine(path: Path, view: str) -> CineView:
    """A ``_t`` cine; the Kaggle preprocessing stores a long-axis cine as a 3-D (x, y, t) image, not (x, y, 1, t)."""
    shape = nifti_shape(path)
    if view != SAX and len(shape) == 3 and shape[2] > 1:
        data, affine, _ = load_nifti(path)
        return CineView(image=np.asarray(data, dtype=np.float32), affine=affine, source=str(path), name=view)
    return read_nifti_cine(path, view=view)


def _row_frame(row: dict[str, Any], phase: str, n_frames: int) -> int | None:
    """The 0-based frame of ``phase`` from a row: ed_frame / es_frame (1-based, ACDC) or ed_index / es_index
    (0-based, Rescan)."""
    frame = row.get(f"{phase}_frame")
    if isinstance(frame, int) and 1 <= frame <= n_frames:
        return frame - 1
    index = row.get(f"{phase}_index")
    if isinstance(index, int) and 0 <= index < n_frames:
        return index
    return None


def _cinema_view(folder: Path, view: str, row: dict[str, Any]) -> tuple[CineView, int | None, int | None] | None:
    phases = {}
    for phase in ("ed", "es"):
        path = _cinema_file(folder, view, phase)
        if path.is_file():
            image = read_nifti_cine(path, view=view)
            label_path = _cinema_file(folder, view, f"{phase}_gt")
            label = None
            if label_path.is_file():
                label = read_label_nifti(label_path, image.spatial_shape, image.affine).reshape(image.spatial_shape)
            phases[phase] = (path, image, label)
    cine_path = _cinema_file(folder, view, "t")
    if cine_path.is_file():
        cine = _read_cinema_cine(cine_path, view)
        index: dict[str, int] = {}
        for phase in phases:
            frame = _row_frame(row, phase, cine.n_frames) if view == SAX else None
            if frame is not None:
                index[phase] = frame
            else:
                try:
                    index[phase] = _matching_frame(cine, phases[phase][1].image, phases[phase][0])
                except InputError:
                    break
        if not phases and view == SAX:  # Rescan: no ED / ES files, the row names the frames
            for phase in ("ed", "es"):
                frame = _row_frame(row, phase, cine.n_frames)
                if frame is not None:
                    index[phase] = frame
        if len(index) >= len(phases):
            labels = {index[p]: lab for p, (_, _, lab) in phases.items() if lab is not None}
            labels_path = _cinema_file(folder, view, "gt_t")
            if labels_path.is_file():  # Rescan's labels of every frame
                stacked = read_label_nifti(labels_path, cine.spatial_shape, cine.affine)
                stacked = stacked.reshape(*cine.spatial_shape, -1)
                if stacked.shape[-1] != cine.n_frames:
                    raise InputError(
                        f"{labels_path}: {stacked.shape[-1]} label frames for {cine.n_frames} image frames"
                    )
                labels.update({t: stacked[..., t] for t in range(cine.n_frames) if stacked[..., t].any()})
            view_ = CineView(image=cine.image, affine=cine.affine, labels=labels, source=str(folder), name=view)
            return view_, index.get("ed"), index.get("es")
    if not phases:
        return None
    first = next(iter(phases.values()))[1]
    for path, image, _ in phases.values():
        if image.spatial_shape != first.spatial_shape or image.n_frames != 1:
            raise InputError(f"{path}: ED and ES of {view} must be single frames of one grid")
    order = list(phases)
    labels = {i: phases[p][2] for i, p in enumerate(order) if phases[p][2] is not None}
    image = np.concatenate([phases[p][1].image for p in order], axis=-1)
    stacked = CineView(image=image, affine=first.affine, labels=labels, source=str(folder), name=view)
    return stacked, order.index("ed") if "ed" in phases else None, order.index("es") if "es" in phases else None


def read_cinema_preprocessed(folder: str | os.PathLike, row: dict[str, Any] | None = None) -> Study:
    """One subject folder of CineMA's preprocessed layout (see `CINEMA_LAYOUT_DOC`) as a `Study`.

    ``row``: its metadata row; None reads it from the split's CSV beside the folder when there is one.
    """
    folder = Path(folder)
    if not is_cinema_preprocessed_folder(folder):
        raise InputError(f"{folder}: no {folder.name}_<view>_ed/_es/_t.nii.gz files (CineMA preprocessed layout)")
    row = dict(_cinema_table_beside(folder) if row is None else row)
    views, phases = {}, {}
    for view in VIEW_NAMES:
        found = _cinema_view(folder, view, row)
        if found is not None:
            views[view], *phases[view] = found
    reference = SAX if SAX in views else next(iter(views))
    ed, es = phases[reference]
    metadata = {"source_format": "cinema_preprocessed", "subject_id": folder.name}
    metadata.update({k: v for k, v in row.items() if k not in _FRAME_COLUMNS})
    return Study(views=views, ed_frame=ed, es_frame=es, metadata=metadata, source=str(folder))


# ------------------------------------------------------------------------------------------------ Kaggle DSB

KAGGLE_LAYOUT_DOC = """\
The Second Annual Data Science Bowl (Kaggle) as downloaded:
  <root>/train.csv, validate.csv          Id, Systole, Diastole (LV volumes in ml; no masks)
  <root>/solution.csv                     the test split's volumes: Id "<pid>_Diastole" / "<pid>_Systole", Volume
  <root>/<split>/<split>/<pid>/study/     sax_<n>/, 2ch_<n>/, 4ch_<n>/ folders of DICOM files (one series each)
"""


def read_kaggle_table(csv_path: str | os.PathLike) -> dict[str, dict[str, float]]:
    """pid -> {"Diastole": ml, "Systole": ml} from a Kaggle DSB volumes CSV (train.csv / validate.csv, or the test
    split's solution.csv with one row per pid and phase)."""
    csv_path = Path(csv_path)
    rows = _read_csv_rows(csv_path)
    table: dict[str, dict[str, float]] = {}
    for number, row in enumerate(rows, start=2):
        pid = (row.get("Id") or "").strip()
        try:
            if "Volume" in row:  # solution.csv: "<pid>_Diastole", Volume
                pid, _, phase = pid.partition("_")
                if phase not in ("Diastole", "Systole"):
                    raise ValueError(f"Id {row.get('Id')!r} is not <pid>_Diastole or <pid>_Systole")
                table.setdefault(pid, {})[phase] = float(row["Volume"])
            else:
                table[pid] = {"Diastole": float(row["Diastole"]), "Systole": float(row["Systole"])}
        except (KeyError, ValueError) as err:
            raise InputError(f"{csv_path}:{number}: not a Kaggle DSB volumes row ({err})") from None
        if not pid:
            raise InputError(f"{csv_path}:{number}: no Id")
    return table


def kaggle_study_folders(root: str | os.PathLike, split: str) -> dict[str, Path]:
    """pid -> its ``study`` folder of DICOM series, under ``<root>/<split>/<split>/`` (as unzipped) or
    ``<root>/<split>/``."""
    root = Path(root)
    for base in (root / split / split, root / split):
        found = {p.parent.name: p for p in base.glob("*/study") if p.is_dir()}
        if found:
            return found
    return {}


# ------------------------------------------------------------------------------------------------ landmark set

LANDMARK_LAYOUT_DOC = """\
CineMA's landmark set as its preprocessing writes it (PNG images and coordinate CSVs, no NIfTI geometry):
  <root>/<view>_train.csv, <view>_val.csv, <view>_test.csv (or <view>.csv)   cohort_name, uid, view, x1, y1, ..., y3
  <root>/<view>/images/<uid>.png                                              8-bit greyscale LAX frame
x is the PNG's column and y its row, so (x, y) are voxel indices of the image read as (x, y) = (column, row). A PNG
carries no pixel size: it is read as 1 x 1 mm (the reference trains on the PNG grid), so distances are in pixels.
"""


def read_landmark_png(path: str | os.PathLike, view: str) -> CineView:
    """A landmark-set PNG as a one-frame long-axis view: (x, y, 1) = (column, row, frame), identity affine."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("L"), dtype=np.float32)  # (rows, columns)
    except (OSError, UnidentifiedImageError) as err:
        raise InputError(f"{path}: unreadable PNG ({err})") from None
    return CineView(image=pixels.T[:, :, None], affine=np.eye(4), source=str(path), name=view)


def landmark_view_of(csv_path: str | os.PathLike) -> str:
    """The view a landmark CSV's name announces (``lax_4c_train.csv`` -> ``lax_4c``)."""
    name = Path(csv_path).name
    view = next((v for v in VIEW_NAMES if v != SAX and name.startswith(v)), None)
    if view is None:
        raise InputError(f"{csv_path}: a landmark CSV is named <view>[_<split>].csv (lax_2c_train.csv, lax_4c.csv)")
    return view
