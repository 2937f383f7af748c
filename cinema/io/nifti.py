"""NIfTI reading and writing for cines, single frames and label maps.

Arrays are used in nibabel's order, (x, y, z[, t]), with nibabel's RAS+ voxel-to-world affine. Writers are atomic
and deterministic (gzip without a time stamp or file name) and leave every free-text header field empty so nothing
identifying can ride along in `descrip`, `aux_file`, `db_name` or `intent_name`.
"""

from __future__ import annotations

import gzip
import os
import re
from pathlib import Path

import nibabel as nib
import numpy as np

from cinema.io.atomic import write_bytes_atomic
from cinema.io.study import LAX_VIEWS, SAX, CineView, view_name_for

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def is_nifti_path(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def nifti_stem(path: str | os.PathLike) -> str:
    """File name without .nii / .nii.gz."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def load_nifti(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Header]:
    """Read a NIfTI file fully: (data with scaling applied, 4x4 float64 affine, header).

    Raises FileNotFoundError for a missing file and ValueError naming the file for anything unreadable
    (truncated gzip, corrupt header, a non-NIfTI file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        image = nib.load(str(path))
        data = np.asanyarray(image.dataobj)
    except Exception as err:  # nibabel and gzip raise many unrelated types for a damaged file
        raise ValueError(f"{path}: unreadable NIfTI file ({type(err).__name__}: {err})") from err
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        raise ValueError(f"{path}: not a NIfTI image ({type(image).__name__})")
    return np.asarray(data), np.asarray(image.affine, dtype=np.float64), image.header


def _time_step_ms(header: nib.Nifti1Header) -> float | None:
    zooms = header.get_zooms()
    if len(zooms) < 4 or not zooms[3] or zooms[3] <= 0:
        return None
    _, time_unit = header.get_xyzt_units()
    scale = {"sec": 1000.0, "msec": 1.0, "usec": 1e-3}.get(time_unit)
    return None if scale is None else float(zooms[3]) * scale


def guess_view_name(path: str | os.PathLike) -> str | None:
    """The view a file name announces ("lax_4c_ed", "4CH", "_sa", "sax_es" ...), or None when it says nothing."""
    name = nifti_stem(path).lower()
    compact = re.sub(r"[^a-z0-9]", "", name)
    for chambers, view in (("2", "lax_2c"), ("3", "lax_3c"), ("4", "lax_4c")):
        if re.search(rf"(^|[^0-9]){chambers}(c|ch|chamber)([^a-z]|$)", name) or f"lax{chambers}c" in compact:
            return view
    tokens = set(re.split(r"[^a-z0-9]+", name))
    if tokens & {"sa", "sax", "shortaxis"}:
        return SAX
    if "lvot" in tokens:
        return "lax_3c"
    return None


def read_nifti_cine(path: str | os.PathLike, view: str | None = None) -> CineView:
    """Read one view from a NIfTI file: a 4-D cine (x, y, z, t) or a 3-D single frame (x, y, z).

    The view is `view` when given, else taken from the file name ("sax", "lax_4c", "2ch", ...), else from the
    shape: several slices make a short-axis stack. A single-slice file whose name does not say which long-axis view
    it is raises ValueError. A long-axis view must have exactly one slice. 2-D files are only accepted for an
    explicitly long-axis view (a single frame).
    """
    path = Path(path)
    data, affine, header = load_nifti(path)
    name = view_name_for(view) if view is not None else guess_view_name(path)
    if data.ndim == 5 and data.shape[3] == 1:
        data = data[:, :, :, 0, :]  # some tools store time in the 5th axis with an empty 4th
    if data.ndim == 2:
        if name not in LAX_VIEWS:
            raise ValueError(
                f"{path}: 2-D image {data.shape} where a 3-D stack or 4-D cine is needed "
                "(pass a long-axis view name to read it as one long-axis frame)"
            )
        data = data[:, :, None]
    if data.ndim == 3:
        data = data[..., None]
    if data.ndim != 4:
        raise ValueError(f"{path}: expected a 3-D frame or a 4-D cine (x, y, z, t), got shape {data.shape}")
    if name is None:
        if data.shape[2] == 1:
            raise ValueError(
                f"{path}: single-slice image and the file name does not say which long-axis view it is "
                "(name it lax_2c/lax_3c/lax_4c or pass the view)"
            )
        name = SAX
    if name in LAX_VIEWS:
        if data.shape[2] != 1:
            raise ValueError(f"{path}: a long-axis view must have one slice, got {data.shape[2]} slices")
        data = data[:, :, 0, :]
    step = _time_step_ms(header) if data.shape[-1] > 1 else None
    frame_times = None if step is None else [t * step for t in range(data.shape[-1])]
    if not np.issubdtype(data.dtype, np.number):
        raise ValueError(f"{path}: unsupported voxel type {data.dtype}")
    return CineView(
        image=data.astype(np.float32), affine=affine, frame_times_ms=frame_times, source=str(path), name=name
    )


def read_label_nifti(
    path: str | os.PathLike, spatial_shape: tuple[int, ...] | None = None, affine: np.ndarray | None = None
) -> np.ndarray:
    """Read an integer label map as uint8, squeezing a single-slice third axis when `spatial_shape` is 2-D.

    The result keeps any time axis; `spatial_shape` and `affine`, when given, must match the image's: a label map on
    another grid of the same shape (flipped, shifted) would otherwise be paired with the wrong voxels silently.
    """
    path = Path(path)
    data, label_affine, _ = load_nifti(path)
    if affine is not None and not np.allclose(label_affine, affine, atol=1e-3):
        raise ValueError(
            f"{path}: label geometry differs from the image's (label affine {label_affine.round(3).tolist()}, "
            f"image affine {np.asarray(affine).round(3).tolist()})"
        )
    if not np.isfinite(data).all() or (data < 0).any() or (data > 255).any() or (data % 1 != 0).any():
        raise ValueError(f"{path}: label map must hold integers in [0, 255]")
    if spatial_shape is not None and len(spatial_shape) == 2 and data.ndim >= 3 and data.shape[2] == 1:
        data = data[:, :, 0, ...]
    if spatial_shape is not None and tuple(data.shape[: len(spatial_shape)]) != tuple(spatial_shape):
        raise ValueError(f"{path}: label shape {data.shape} does not match image shape {tuple(spatial_shape)}")
    return data.astype(np.uint8)


def _storage_dtype(array: np.ndarray) -> np.dtype:
    """Smallest lossless type among uint8/int16/float32 (DICOM pixels are integers: keep them exact and small)."""
    if array.dtype == np.uint8:
        return np.dtype(np.uint8)
    if array.size and np.array_equal(np.rint(array), array):
        low, high = float(array.min()), float(array.max())
        if 0 <= low and high <= 255:
            return np.dtype(np.uint8)
        if -32768 <= low and high <= 32767:
            return np.dtype(np.int16)
    return np.dtype(np.float32)


def nifti_bytes(
    array: np.ndarray, affine: np.ndarray, dtype: np.dtype | None = None, time_step_ms: float | None = None
) -> bytes:
    """Encode an array as gzipped NIfTI-1 bytes with sform and qform set to `affine` (scanner coordinates)."""
    array = np.asarray(array)
    dtype = _storage_dtype(array) if dtype is None else np.dtype(dtype)
    image = nib.Nifti1Image(array.astype(dtype), np.asarray(affine, dtype=np.float64))
    header = image.header
    header.set_sform(affine, code=1)
    header.set_qform(affine, code=1)
    header.set_xyzt_units(xyz="mm", t="msec" if time_step_ms else "unknown")
    if array.ndim >= 4:
        zooms = list(header.get_zooms())
        zooms[3] = float(time_step_ms) if time_step_ms else 1.0
        header.set_zooms(zooms)
    for field_name in ("descrip", "aux_file", "db_name", "intent_name"):
        header[field_name] = b""
    # mtime=0 and no file name in the gzip header: identical input gives identical bytes. Level 1 (nibabel's
    # default too): noisy MR pixels barely compress further, and level 6 is ~5x slower.
    return gzip.compress(image.to_bytes(), compresslevel=1, mtime=0)


def write_nifti(
    array: np.ndarray,
    affine: np.ndarray,
    path: str | os.PathLike,
    dtype: np.dtype | None = None,
    time_step_ms: float | None = None,
) -> Path:
    """Atomically write an array as a .nii.gz file (the type is chosen losslessly unless `dtype` is given)."""
    path = Path(path)
    if not str(path).lower().endswith(".nii.gz"):
        raise ValueError(f"{path}: NIfTI outputs are written gzipped and must end in .nii.gz")
    return write_bytes_atomic(path, nifti_bytes(array, affine, dtype=dtype, time_step_ms=time_step_ms))


def write_cine_nifti(view: CineView, path: str | os.PathLike) -> Path:
    """Write a view as a 4-D (x, y, z, t) NIfTI; long-axis views get a single-slice third axis."""
    step = None
    if view.frame_times_ms is not None and view.n_frames > 1:
        steps = np.diff(view.frame_times_ms)
        step = float(np.median(steps)) if (steps > 0).all() else None
    return write_nifti(view.as_4d(), view.affine, path, time_step_ms=step)


def write_label_nifti(labels: np.ndarray, affine: np.ndarray, path: str | os.PathLike) -> Path:
    """Atomically write an integer label map (x, y[, z[, t]]) as uint8 NIfTI with exactly `affine`.

    A 2-D (long-axis) map is stored with a single-slice third axis, so the file's shape is (x, y, 1).
    """
    path = Path(path)
    labels = np.asarray(labels)
    if labels.ndim < 2 or labels.ndim > 4:
        raise ValueError(f"{path}: label map must be 2-D to 4-D, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.number) or labels.dtype == np.bool_:
        labels = labels.astype(np.uint8)
    if labels.size and (
        not np.isfinite(labels).all() or labels.min() < 0 or labels.max() > 255 or (labels % 1 != 0).any()
    ):
        raise ValueError(f"{path}: label map must hold integers in [0, 255]")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise ValueError(f"{path}: affine must be a finite 4x4 matrix, got shape {affine.shape}")
    if labels.ndim == 2:
        labels = labels[:, :, None]
    return write_nifti(labels, affine, path, dtype=np.dtype(np.uint8))
