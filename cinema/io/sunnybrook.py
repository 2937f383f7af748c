"""Manual LV contours of the Sunnybrook Cardiac Data, rasterised onto a `Study`'s short-axis grid.

Layout of an exam: ``dicom/NNNN.dcm`` (no zero padding) and ``contours/i-contours/IM-0001-NNNN-icontour-manual.txt``
(endocardium, i.e. LV cavity) / ``contours/o-contours/IM-0001-NNNN-ocontour-manual.txt`` (epicardium), one
"x y" point per line in pixel units, x along DICOM columns and y along rows. Our image axes are (x = column,
y = row), so a point (x, y) is voxel (i, j) = (x, y) and pixel centres sit at integer coordinates.

Each contoured DICOM image is placed in the study by geometry, not by file order: its ImagePositionPatient gives
the slice, its TriggerTime the frame, and the pixels must then equal the study's pixels at that (slice, frame).
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
import pydicom

from cinema.io.dicom import LPS_TO_RAS
from cinema.io.errors import InputError
from cinema.io.study import Study

_CONTOUR_NAME = re.compile(r"^IM-\d+-(?P<number>\d+)-(?P<kind>[io])contour-manual\.txt$")


def read_contour_points(path: str | os.PathLike) -> np.ndarray:
    """Polygon points (n, 2) as pixel (x, y) = (column, row)."""
    path = Path(path)
    try:
        points = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except ValueError as err:
        raise InputError(f"{path}: not a list of 'x y' points ({err})") from err
    if points.shape[1] != 2 or len(points) < 3 or not np.isfinite(points).all():
        raise InputError(f"{path}: a contour needs at least 3 finite 'x y' points, got shape {points.shape}")
    return points


def rasterise_polygon(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Boolean (X, Y) mask of the pixel centres (i, j) inside the polygon of (x, y) points."""
    from matplotlib.path import Path as PolygonPath  # deferred: matplotlib is only needed here

    mask = np.zeros(shape, dtype=bool)
    # Only centres inside the polygon's bounding box can be inside it; testing just those is ~50x faster.
    low = np.clip(np.floor(points.min(axis=0)).astype(int), 0, np.asarray(shape) - 1)
    high = np.clip(np.ceil(points.max(axis=0)).astype(int), 0, np.asarray(shape) - 1)
    if (points.max(axis=0) < 0).any() or (points.min(axis=0) > np.asarray(shape) - 1).any():
        return mask
    i, j = np.meshgrid(np.arange(low[0], high[0] + 1), np.arange(low[1], high[1] + 1), indexing="ij")
    inside = PolygonPath(points).contains_points(np.stack([i.ravel(), j.ravel()], axis=1)).reshape(i.shape)
    mask[low[0] : high[0] + 1, low[1] : high[1] + 1] = inside
    return mask


def _find_dicom(exam_dir: Path, number: int) -> Path:
    for name in (f"{number}.dcm", f"{number:04d}.dcm", f"IM-0001-{number:04d}.dcm"):
        if (exam_dir / "dicom" / name).is_file():
            return exam_dir / "dicom" / name
    raise FileNotFoundError(f"{exam_dir / 'dicom'}: no DICOM image number {number} for its contour")


def _locate(study: Study, dicom_path: Path) -> tuple[int, int]:
    """(slice, frame) of a DICOM image in the study's SAX view."""
    sax = study.sax
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dataset = pydicom.dcmread(dicom_path)
        position_lps = np.array([float(v) for v in dataset.ImagePositionPatient])
        trigger = float(dataset.TriggerTime) if dataset.get("TriggerTime") not in (None, "") else None
        pixels = dataset.pixel_array.T
    position = (LPS_TO_RAS[:3, :3] @ position_lps).astype(np.float64)
    i, j, k = sax.world_to_voxel(position)
    slice_index = int(round(k))
    if abs(i) > 0.01 or abs(j) > 0.01 or abs(k - slice_index) > 0.01 or not 0 <= slice_index < sax.image.shape[2]:
        raise InputError(f"{dicom_path}: image does not lie on the study's SAX grid (voxel {i:.3f}, {j:.3f}, {k:.3f})")
    candidates = list(range(sax.n_frames))
    trigger_table = study.metadata.get("views", {}).get("sax", {}).get("trigger_times_ms")
    if trigger is not None and trigger_table:
        times = np.asarray(trigger_table[slice_index], dtype=np.float64)
        candidates.sort(key=lambda t: abs(times[t] - trigger))
    # The trigger time proposes the frame; the pixels decide (rescaling aside, they must be identical).
    slope = float(dataset.get("RescaleSlope", 1) or 1)
    intercept = float(dataset.get("RescaleIntercept", 0) or 0)
    expected = pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    for frame in candidates:
        if np.array_equal(sax.image[:, :, slice_index, frame], expected):
            return slice_index, frame
    raise InputError(f"{dicom_path}: no frame of SAX slice {slice_index} has this image's pixels")


def read_sunnybrook_contours(exam_dir: str | os.PathLike, study: Study) -> dict[tuple[int, int], dict[str, np.ndarray]]:
    """Rasterised manual contours: {(slice, frame): {"endo": mask, "epi": mask}} on the study's SAX grid.

    Masks are boolean (X, Y) arrays of `study.sax`'s in-plane shape; "endo" (LV cavity) is present for every
    contoured image, "epi" (endocardium plus myocardium) only where an epicardial contour exists.
    """
    exam_dir = Path(exam_dir)
    contour_root = exam_dir / "contours"
    if not contour_root.is_dir():
        raise FileNotFoundError(f"{contour_root}: no such folder (not a Sunnybrook exam)")
    shape = study.sax.image.shape[:2]
    result: dict[tuple[int, int], dict[str, np.ndarray]] = {}
    locations: dict[int, tuple[int, int]] = {}
    for path in sorted(contour_root.glob("*-contours/*.txt")):
        match = _CONTOUR_NAME.match(path.name)
        if match is None:
            continue
        number = int(match["number"])
        if number not in locations:
            locations[number] = _locate(study, _find_dicom(exam_dir, number))
        key = "endo" if match["kind"] == "i" else "epi"
        result.setdefault(locations[number], {})[key] = rasterise_polygon(read_contour_points(path), shape)
    if not result:
        raise InputError(f"{contour_root}: no IM-*-[io]contour-manual.txt files")
    missing_endo = [location for location, masks in result.items() if "endo" not in masks]
    if missing_endo:
        raise InputError(f"{contour_root}: epicardial contour without an endocardial one at {missing_endo[0]}")
    return result
