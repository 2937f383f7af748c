"""NIfTI reading and writing for cines, single frames and label maps.

Arrays are used in nibabel's order, (x, y, z[, t]), with nibabel's RAS+ voxel-to-world affine. Writers are atomic
and deterministic (gzip without a time stamp or file name) and leave every free-text header field empty so nothing
identifying can ride along in `descrip`, `aux_file`, `db_name` or `intent_name` (label maps carry one fixed text,
`LABEL_MAP_DESCRIPTION`, so that `--force` replaces only a label map cinema wrote).
"""

from __future__ import annotations

import gzip
import logging
import math
import os
import re
import struct
import zlib
from pathlib import Path
from typing import BinaryIO, NamedTuple

import nibabel as nib
import numpy as np
from nibabel.volumeutils import apply_read_scaling

from cinema.io.atomic import write_bytes_atomic
from cinema.io.errors import InputError
from cinema.io.limits import check_decoded_size, format_bytes, out_of_memory, read_error
from cinema.io.study import LAX_VIEWS, SAX, CineView, view_name_for

NIFTI_SUFFIXES = (".nii.gz", ".nii")
# the fixed text every label map written here carries, so `--force` can tell our outputs from a user's files
LABEL_MAP_DESCRIPTION = b"cinema label map"


def is_nifti_path(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def nifti_stem(path: str | os.PathLike) -> str:
    """File name without .nii / .nii.gz."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


# Byte counts of the two NIfTI header layouts; the first 4 bytes (sizeof_hdr) say which one a file uses.
_HEADER_CLASSES: dict[int, type[nib.Nifti1Header]] = {348: nib.Nifti1Header, 540: nib.Nifti2Header}
_HEAD_BYTES = 544  # enough for either header and NIfTI-1's 4-byte extension flag
_CHUNK_BYTES = 1 << 20
# After the voxels, decode at most this much more to reach the gzip end marker, whose CRC vouches for the data.
_GZIP_TAIL_BYTES = 1 << 20
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_QUIET_LOG = logging.getLogger(__name__ + ".nibabel_checks")
_QUIET_LOG.addHandler(logging.NullHandler())
_QUIET_LOG.propagate = False


class _Layout(NamedTuple):
    """What a header says about the data that follows it, checked for sense."""

    header: nib.Nifti1Header
    shape: tuple[int, ...]
    dtype: np.dtype
    offset: int  # byte where the voxels start
    n_bytes: int  # voxel bytes the header announces


def _parse_header(path: Path, head: bytes) -> _Layout:
    """The layout a header announces; a header whose claims make no sense is refused."""
    if len(head) < 4:
        raise InputError(f"{path}: not a NIfTI file ({len(head)} bytes, too short for a header)")
    size_little, size_big = struct.unpack("<i", head[:4])[0], struct.unpack(">i", head[:4])[0]
    # sizeof_hdr says the byte order; nibabel would guess it from dim[0] and misread a header whose dim[0] is absurd.
    endianness = "<" if size_little in _HEADER_CLASSES else ">"
    header_class = _HEADER_CLASSES.get(size_little) or _HEADER_CLASSES.get(size_big)
    if header_class is None:
        raise InputError(f"{path}: not a NIfTI file (header size field {size_little}, expected 348 or 540)")
    header_size = header_class.template_dtype.itemsize
    if len(head) < header_size:
        raise InputError(f"{path}: not a NIfTI file ({len(head)} bytes, shorter than its {header_size}-byte header)")
    header = header_class(head[:header_size], endianness=endianness, check=False)
    magic = bytes(header["magic"].item())
    if magic == bytes(header_class.pair_magic):
        raise InputError(f"{path}: a NIfTI pair header (.hdr/.img); convert it to a single .nii file")
    if magic != bytes(header_class.single_magic):
        raise InputError(f"{path}: not a NIfTI file (magic {magic!r}, expected {bytes(header_class.single_magic)!r})")
    dim = [int(d) for d in header["dim"]]
    if not 1 <= dim[0] <= 7:
        raise InputError(f"{path}: header's dim[0] = {dim[0]} is not a number of dimensions (1 to 7)")
    for axis, length in enumerate(dim[1 : dim[0] + 1], start=1):
        if length < 1:
            raise InputError(f"{path}: header's dim[{axis}] = {length}; every axis needs at least one voxel")
    shape = tuple(int(n) for n in header.get_data_shape())
    try:
        dtype = np.dtype(header.get_data_dtype())
    except Exception as err:  # nibabel raises KeyError or HeaderDataError for a code it does not know
        raise InputError(f"{path}: unsupported NIfTI datatype code {int(header['datatype'])}") from err
    if dtype.itemsize < 1:
        # nibabel maps "none", "binary" and (where NumPy lacks them) 128-bit types to an empty type
        label = header.get_value_label("datatype")
        raise InputError(f"{path}: unsupported NIfTI datatype {label} (code {int(header['datatype'])})")
    vox_offset = float(header["vox_offset"])
    first_data_byte = header_size + 4
    if not np.isfinite(vox_offset) or vox_offset < first_data_byte:
        raise InputError(
            f"{path}: header's vox_offset {vox_offset:g} points inside the header (voxels start at byte "
            f"{first_data_byte} or later)"
        )
    slope, inter = float(header["scl_slope"]), float(header["scl_inter"])
    if slope != 0 and np.isfinite(slope) and not np.isfinite(inter):
        # nibabel ignores a zero or non-finite slope (no scaling) but cannot use a non-finite intercept
        raise InputError(f"{path}: header's scl_inter {inter:g} is not finite")
    # nibabel's own checks and fixes, as nib.load applies them, but raised to our caller rather than logged.
    header.check_fix(logger=_QUIET_LOG)
    offset = int(vox_offset)
    # Python ints: a product of int64 dims would overflow in NumPy and pass a size check it should fail.
    n_bytes = math.prod(shape) * dtype.itemsize
    return _Layout(header, shape, dtype, offset, n_bytes)


def _check_cap(path: Path, layout: _Layout) -> None:
    shape = "×".join(map(str, layout.shape))
    check_decoded_size(path, layout.n_bytes, f"the header's {shape} {layout.dtype.name} voxels")
    check_decoded_size(path, layout.offset, f"the {layout.offset} bytes before the voxels (the header's vox_offset)")


def _too_short(path: Path, layout: _Layout, held: int, where: str) -> InputError:
    shape = "×".join(map(str, layout.shape))
    return InputError(
        f"{path}: header claims {format_bytes(layout.n_bytes)} of voxels ({shape} {layout.dtype.name}) but {where} "
        f"holds only {format_bytes(max(held - layout.offset, 0))} after its {layout.offset}-byte header "
        "(truncated or damaged file?)"
    )


class _Gunzip:
    """A gzip file decoded in bounded chunks: nothing is inflated beyond what the caller asks for."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._pending = b""
        self._member_ended = False
        self.ended = False  # the stream reached a gzip end marker (CRC checked) and nothing but padding follows
        self.truncated = False  # the file ended inside a gzip member

    def read_into(self, buffer: bytearray, n_bytes: int) -> int:
        """Append up to `n_bytes` decoded bytes to `buffer`; fewer only at the end of the stream."""
        wanted = n_bytes
        while wanted > 0 and not (self.ended or self.truncated):
            if self._member_ended:
                # bgzip and pigz --independent write several members; zero padding may follow the last one.
                self._pending = self._pending.lstrip(b"\0")
                if not self._pending:
                    self._pending = self._file.read(_CHUNK_BYTES)
                    if not self._pending:
                        self.ended = True
                    continue
                self._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
                self._member_ended = False
            if not self._pending:
                self._pending = self._file.read(_CHUNK_BYTES)
                if not self._pending:
                    self.truncated = True
                    break
            chunk = self._inflater.decompress(self._pending, min(wanted, _CHUNK_BYTES))
            self._pending = self._inflater.unconsumed_tail
            if self._inflater.eof:
                self._pending = self._inflater.unused_data + self._pending
                self._member_ended = True
            buffer += chunk
            wanted -= len(chunk)
        return n_bytes - wanted


def _read_gzip(path: Path, file: BinaryIO) -> tuple[_Layout, bytearray]:
    stream = _Gunzip(file)
    buffer = bytearray()
    stream.read_into(buffer, _HEAD_BYTES)
    if stream.truncated and len(buffer) < _HEAD_BYTES:
        # A short stream may still hold a whole NIfTI-1 header: only say "truncated" when the header is cut.
        try:
            layout = _parse_header(path, bytes(buffer))
        except ValueError as err:
            reason = str(err).removeprefix(f"{path}: ")
            raise InputError(f"{path}: unreadable NIfTI file (truncated gzip stream: {reason})") from None
    else:
        layout = _parse_header(path, bytes(buffer))
    _check_cap(path, layout)
    needed = layout.offset + layout.n_bytes
    try:
        stream.read_into(buffer, needed - len(buffer))
    except MemoryError:
        raise out_of_memory(path, needed, "the decompressed NIfTI data") from None
    if len(buffer) < needed:
        where = "the truncated gzip stream" if stream.truncated else "the decompressed file"
        raise _too_short(path, layout, len(buffer), where)
    del buffer[needed:]
    # The voxels are all here; reaching the end marker lets zlib check the CRC (a flipped bit is refused, not read).
    tail = bytearray()
    stream.read_into(tail, _GZIP_TAIL_BYTES)
    if stream.truncated:
        raise InputError(f"{path}: unreadable NIfTI file (truncated gzip stream: the file ends before its end marker)")
    return layout, buffer


def _read_plain(path: Path, file: BinaryIO) -> tuple[_Layout, bytearray]:
    layout = _parse_header(path, file.read(_HEAD_BYTES))
    size = os.fstat(file.fileno()).st_size
    needed = layout.offset + layout.n_bytes
    if size < needed:
        raise _too_short(path, layout, size, "the file")
    _check_cap(path, layout)
    try:
        buffer = bytearray(needed)
    except MemoryError:
        raise out_of_memory(path, needed, "the NIfTI data") from None
    file.seek(0)
    if file.readinto(buffer) != needed:
        raise InputError(f"{path}: the file shrank while being read")
    return layout, buffer


def _read_nifti_bytes(path: Path) -> tuple[_Layout, bytearray]:
    """The header's layout and the file's bytes up to the end of its voxels (decompressed), read within bounds."""
    try:
        with open(path, "rb") as file:
            # The content, not the name, says whether it is gzipped: a renamed .nii.gz still reads.
            compressed = file.read(2) == b"\x1f\x8b"
            file.seek(0)
            return _read_gzip(path, file) if compressed else _read_plain(path, file)
    except OSError as err:
        raise read_error(path, err) from err
    except zlib.error as err:
        raise InputError(f"{path}: unreadable NIfTI file (corrupt gzip stream: {err})") from err


def _scaled_voxels(path: Path, layout: _Layout, buffer: bytearray) -> np.ndarray:
    raw = np.frombuffer(buffer, dtype=layout.dtype, count=math.prod(layout.shape), offset=layout.offset)
    raw = raw.reshape(layout.shape, order="F")
    slope, inter = layout.header.get_slope_inter()
    # The same upcasting as nibabel's ArrayProxy, so a file reads exactly as nib.load would read it.
    try:
        return apply_read_scaling(raw, slope, inter)
    except MemoryError:
        raise out_of_memory(path, raw.size * 8, "the scaled voxel values") from None


def _check_values(path: Path, data: np.ndarray, header: nib.Nifti1Header) -> None:
    """Refuse NaN, ±inf and values beyond float32 (cinema's image type), naming the file and the cause."""
    if data.dtype.kind not in "fc":
        return
    slope, inter = header.get_slope_inter()
    scaled = (slope, inter) not in ((None, None), (1.0, 0.0))
    scaling = f" after applying the header's scaling (scl_slope {slope:g}, scl_inter {inter:g})" if scaled else ""
    if data.dtype.kind == "c":
        if not np.isfinite(data).all():
            raise InputError(f"{path}: voxel values are not finite (NaN or ±inf){scaling}")
        return
    low, high = data.min(), data.max()  # NaN propagates into both; no temporary array of the data's size
    if not (np.isfinite(low) and np.isfinite(high)):
        raise InputError(f"{path}: voxel values are not finite (NaN or ±inf){scaling}")
    peak = max(-float(low), float(high))
    if peak > _FLOAT32_MAX:
        raise InputError(
            f"{path}: voxel values reach ±{peak:.3g}{scaling}, beyond float32's range (±{_FLOAT32_MAX:.3g}): "
            "converting them to float32 would overflow to infinity"
        )


def load_nifti(path: str | os.PathLike, require_finite: bool = True) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Header]:
    """Read a NIfTI file fully: (data with scaling applied, 4x4 float64 affine, header).

    Memory is bounded by the data, not by the header: before anything is allocated the size the header announces
    is checked against the bytes the file holds (a gzip stream is decoded in chunks and never past that size) and
    against `cinema.io.limits.max_decoded_bytes()`. With `require_finite` (the default) NaN, ±inf and values beyond
    float32's range (cinema's image type) are refused.

    Raises FileNotFoundError for a missing file and one ValueError naming the file for anything else: unreadable
    (permission), truncated or corrupt, a header whose claims make no sense, or too large.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    layout: _Layout | None = None
    try:
        # NumPy's overflow/invalid warnings would only repeat, without the file's name, what the checks report.
        with np.errstate(all="ignore"):
            layout, buffer = _read_nifti_bytes(path)
            data = _scaled_voxels(path, layout, buffer)
            affine = np.asarray(layout.header.get_best_affine(), dtype=np.float64)
            if require_finite:
                _check_values(path, data, layout.header)
    except ValueError as err:
        if str(err).startswith(f"{path}: "):
            raise
        raise InputError(f"{path}: unreadable NIfTI file (ValueError: {err})") from err
    except MemoryError as err:  # allocations other than the voxel buffer (sized where made): say the data's size
        raise out_of_memory(path, layout.n_bytes if layout else path.stat().st_size, "the NIfTI data") from err
    except Exception as err:  # nibabel, struct and NumPy raise many unrelated types for a damaged header
        raise InputError(f"{path}: unreadable NIfTI file ({type(err).__name__}: {err})") from err
    return data, affine, layout.header


def _time_step_ms(header: nib.Nifti1Header) -> float | None:
    zooms = header.get_zooms()
    if len(zooms) < 4 or not zooms[3] or zooms[3] <= 0:
        return None
    try:
        _, time_unit = header.get_xyzt_units()
    except KeyError:  # a unit code NIfTI does not define: the step's unit, hence the step, is unknown
        return None
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
            raise InputError(
                f"{path}: 2-D image {data.shape} where a 3-D stack or 4-D cine is needed "
                "(pass a long-axis view name to read it as one long-axis frame)"
            )
        data = data[:, :, None]
    if data.ndim == 3:
        data = data[..., None]
    if data.ndim != 4:
        raise InputError(f"{path}: expected a 3-D frame or a 4-D cine (x, y, z, t), got shape {data.shape}")
    if name is None:
        if data.shape[2] == 1:
            # one slice over time is most often a long-axis cine: reading it as a one-slice short-axis stack would
            # give volumes of zero without a word, so the user names the view
            raise InputError(
                f"{path}: single-slice image and the file name does not say which view it is: name it with --view "
                "lax_4c (or lax_2c, lax_3c) for a long-axis cine, --view sax for a one-slice short-axis stack "
                "(Python: read_study(path, view=...)), or put the view in the file name (..._lax_4c.nii.gz)"
            )
        name = SAX
    if name in LAX_VIEWS:
        if data.shape[2] != 1:
            raise InputError(f"{path}: a long-axis view must have one slice, got {data.shape[2]} slices")
        data = data[:, :, 0, :]
    step = _time_step_ms(header) if data.shape[-1] > 1 else None
    frame_times = None if step is None else [t * step for t in range(data.shape[-1])]
    if not np.issubdtype(data.dtype, np.number) or np.iscomplexobj(data):
        # complex (or RGB) voxels would lose a component silently in the float32 conversion
        raise InputError(f"{path}: unsupported voxel type {data.dtype} (a cine holds real intensities)")
    try:
        image = data.astype(np.float32)  # load_nifti refused values float32 cannot hold
    except MemoryError:
        raise out_of_memory(path, data.size * 4, "the float32 image") from None
    return CineView(image=image, affine=affine, frame_times_ms=frame_times, source=str(path), name=name)


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
        raise InputError(
            f"{path}: label geometry differs from the image's (label affine {label_affine.round(3).tolist()}, "
            f"image affine {np.asarray(affine).round(3).tolist()})"
        )
    if not np.isfinite(data).all() or (data < 0).any() or (data > 255).any() or (data % 1 != 0).any():
        raise InputError(f"{path}: label map must hold integers in [0, 255]")
    if spatial_shape is not None and len(spatial_shape) == 2 and data.ndim >= 3 and data.shape[2] == 1:
        data = data[:, :, 0, ...]
    if spatial_shape is not None and tuple(data.shape[: len(spatial_shape)]) != tuple(spatial_shape):
        raise InputError(f"{path}: label shape {data.shape} does not match image shape {tuple(spatial_shape)}")
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
    array: np.ndarray,
    affine: np.ndarray,
    dtype: np.dtype | None = None,
    time_step_ms: float | None = None,
    description: bytes = b"",
) -> bytes:
    """Encode an array as gzipped NIfTI-1 bytes with sform and qform set to `affine` (scanner coordinates).

    `description` goes into ``descrip`` (only fixed texts of ours, never anything from the input)."""
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
    header["descrip"] = description
    # mtime=0 and no file name in the gzip header: identical input gives identical bytes. Level 1 (nibabel's
    # default too): noisy MR pixels barely compress further, and level 6 is ~5x slower.
    return gzip.compress(image.to_bytes(), compresslevel=1, mtime=0)


def write_nifti(
    array: np.ndarray,
    affine: np.ndarray,
    path: str | os.PathLike,
    dtype: np.dtype | None = None,
    time_step_ms: float | None = None,
    description: bytes = b"",
) -> Path:
    """Atomically write an array as a .nii.gz file (the type is chosen losslessly unless `dtype` is given)."""
    path = Path(path)
    if not str(path).lower().endswith(".nii.gz"):
        raise InputError(f"{path}: NIfTI outputs are written gzipped and must end in .nii.gz")
    data = nifti_bytes(array, affine, dtype=dtype, time_step_ms=time_step_ms, description=description)
    return write_bytes_atomic(path, data)


def write_cine_nifti(view: CineView, path: str | os.PathLike) -> Path:
    """Write a view as a 4-D (x, y, z, t) NIfTI; long-axis views get a single-slice third axis."""
    step = None
    if view.frame_times_ms is not None and view.n_frames > 1:
        steps = np.diff(view.frame_times_ms)
        step = float(np.median(steps)) if (steps > 0).all() else None
    return write_nifti(view.as_4d(), view.affine, path, time_step_ms=step)


def write_label_nifti(
    labels: np.ndarray, affine: np.ndarray, path: str | os.PathLike, *, keep_2d: bool = False
) -> Path:
    """Atomically write an integer label map (x, y[, z[, t]]) as uint8 NIfTI with exactly `affine`.

    A 2-D (long-axis) map is stored with a single-slice third axis, so the file's shape is (x, y, 1), unless
    ``keep_2d`` (the labels of a 2-D input file keep its shape).
    """
    path = Path(path)
    labels = np.asarray(labels)
    if labels.ndim < 2 or labels.ndim > 4:
        raise InputError(f"{path}: label map must be 2-D to 4-D, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.number) or labels.dtype == np.bool_:
        labels = labels.astype(np.uint8)
    if labels.size and (
        not np.isfinite(labels).all() or labels.min() < 0 or labels.max() > 255 or (labels % 1 != 0).any()
    ):
        raise InputError(f"{path}: label map must hold integers in [0, 255]")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise InputError(f"{path}: affine must be a finite 4x4 matrix, got shape {affine.shape}")
    if labels.ndim == 2 and not keep_2d:
        labels = labels[:, :, None]
    return write_nifti(labels, affine, path, dtype=np.dtype(np.uint8), description=LABEL_MAP_DESCRIPTION)


def is_cinema_label_nifti(path: str | os.PathLike) -> bool:
    """True for a label map `write_label_nifti` wrote (its header says so): the one NIfTI `--force` may replace."""
    try:
        with gzip.open(path, "rb") as f:
            head = f.read(348)
    except (OSError, EOFError, gzip.BadGzipFile):
        return False
    # descrip: 80 bytes at offset 148 of a NIfTI-1 header
    return len(head) == 348 and head[148:228].rstrip(b"\x00") == LABEL_MAP_DESCRIPTION
