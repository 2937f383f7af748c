"""Read a folder of cine MRI DICOM files (one exam) into a `Study`.

Policy, in order:

1. Every file under the folder is considered, whatever its name. Files without the DICOM preamble ("DICM" at byte
   128) are ignored; a file that has it but cannot be read is an error naming that file. DICOM objects that are not
   positioned images (no ImagePositionPatient / ImageOrientationPatient / pixels, e.g. reports, DICOMDIR) are
   skipped and listed in ``metadata["skipped"]``.
2. Files are grouped by SeriesInstanceUID. A series is a view by its SeriesDescription ("2ch", "4CH", "lvot",
   "sax", "SA", "CINE_segmented_SAX_b3", ...); a series that does not say so is a short-axis stack when its images
   share one orientation and lie at several positions, and is skipped otherwise (a single-slice cine cannot be
   assigned to a chamber view; an unnamed series with several orientations is no stack).
3. Series where no position has more than one phase (localisers, single-phase scans) are skipped; if nothing is
   left the folder has no cine and reading fails.
4. All short-axis series are merged into one stack (scanners such as UK Biobank write one series per slice). The
   stack must share one orientation and pixel grid. Slices are ordered by their position along the slice normal
   (from ImagePositionPatient and ImageOrientationPatient; `SliceLocation` is unreliable in real data and is not
   used). Gaps between slices must be uniform and the slice origins must lie on a straight line. When two series
   cover the same position the later one (higher SeriesNumber) wins.
5. Phases at each position are ordered by TriggerTime (falling back to InstanceNumber); trigger times may differ
   between slices. When positions have unequal phase counts all are truncated to the smallest count and a warning
   is recorded in ``metadata["warnings"]``; a stack whose smallest count is 1 is an error.
6. Pixel values get RescaleSlope / RescaleIntercept. DICOM patient coordinates (LPS) become RAS+ by negating x
   and y. The image x axis follows DICOM columns (the first ImageOrientationPatient vector) and y follows rows.

An exam is one study of one patient: images of several StudyInstanceUIDs in the folder are refused (listed by
pseudonym) unless ``study`` picks one, and one study holding several PatientIDs is refused; nothing is merged.

Patient-identifying fields are never copied into the `Study` unless ``keep_phi=True``; without it, study and series
UIDs are replaced by keyed pseudonyms (`cinema.io.privacy`), also in warnings.
"""

from __future__ import annotations

import os
import re
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import IS, DSdecimal, DSfloat

from cinema.io.errors import InputError
from cinema.io.privacy import pseudonymise_uid, redact_pydicom_log
from cinema.io.study import LAX_VIEWS, SAX, CineView, Study

# Fields kept only with keep_phi=True (DICOM PS3.15 basic profile subset relevant to cine MRI exams).
PHI_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientSex",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "OtherPatientIDs",
    "OtherPatientNames",
    "EthnicGroup",
    "AccessionNumber",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
    "PhysiciansOfRecord",
    "StationName",
    "DeviceSerialNumber",
    "StudyDate",
    "StudyTime",
    "SeriesDate",
    "AcquisitionDate",
    "ContentDate",
    "StudyID",
)

redact_pydicom_log()

_ORIENTATION_TOLERANCE = 1e-3  # direction cosines; about 0.06 degrees
_POSITION_TOLERANCE_MM = 0.05  # same-slice positions (rounding in real headers is ~1e-3 mm)


def has_dicom_preamble(path: Path) -> bool:
    """True for a file with the DICOM Part 10 preamble (128 bytes, then ``DICM``).

    A file that cannot be read (permission, I/O error) is a ValueError naming it, never a silent False.
    """
    from cinema.io.limits import read_error

    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError as err:
        # An unreadable file may be one phase of the cine: name it rather than silently read the exam without it.
        raise read_error(path, err) from err
    return len(head) == 132 and head[128:] == b"DICM"


def _float_list(dataset: Dataset, keyword: str) -> list[float] | None:
    value = dataset.get(keyword)
    if value is None:
        return None
    try:
        values = [float(v) for v in (value if isinstance(value, list | tuple | MultiValue) else [value])]
    except (TypeError, ValueError):
        return None
    return values


def _optional_float(dataset: Dataset, keyword: str) -> float | None:
    values = _float_list(dataset, keyword)
    return values[0] if values else None


def _json_value(value: Any) -> Any:
    """A DICOM element value as plain JSON data."""
    if isinstance(value, list | tuple | MultiValue):
        return [_json_value(v) for v in value]
    if isinstance(value, DSfloat | DSdecimal | float):
        return float(value)
    if isinstance(value, IS | int) and not isinstance(value, bool):
        return int(value)
    return str(value)


@dataclass
class _Image:
    """One positioned 2-D DICOM image (pixels read lazily)."""

    path: Path
    dataset: Dataset
    series_uid: str
    series_number: int
    description: str
    position: np.ndarray  # ImagePositionPatient, LPS mm
    orientation: np.ndarray  # ImageOrientationPatient, (6,)
    pixel_spacing: tuple[float, float]  # (between rows, between columns)
    shape: tuple[int, int]  # (rows, columns)
    trigger_time: float | None
    instance_number: int

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.orientation[:3], self.orientation[3:])

    def _pixel_bytes(self) -> int:
        """The bytes Rows × Columns × SamplesPerPixel × BitsAllocated announce, checked against the decoded-size cap
        and, for uncompressed transfer syntaxes, against the PixelData actually held."""
        from pydicom import uid

        from cinema.io.limits import check_decoded_size

        try:
            samples = int(self.dataset.get("SamplesPerPixel", 1) or 1)
            bits = int(self.dataset.get("BitsAllocated", 0) or 0)
        except (TypeError, ValueError) as err:
            raise InputError(f"{self.path}: malformed SamplesPerPixel/BitsAllocated ({err})") from err
        if samples < 1 or bits not in (1, 8, 16, 32, 64):
            raise InputError(f"{self.path}: unsupported pixel layout (SamplesPerPixel {samples}, BitsAllocated {bits})")
        rows, columns = self.shape
        n_bytes = (rows * columns * samples * bits + 7) // 8
        check_decoded_size(self.path, n_bytes, f"the pixel data ({rows} rows × {columns} columns × {bits} bits)")
        file_meta = getattr(self.dataset, "file_meta", None)
        syntax = None if file_meta is None else file_meta.get("TransferSyntaxUID")
        native = (
            uid.ImplicitVRLittleEndian,
            uid.ExplicitVRLittleEndian,
            uid.DeflatedExplicitVRLittleEndian,
            uid.ExplicitVRBigEndian,
        )
        if syntax is None or str(syntax) in native:
            # pydicom silently drops excess bytes: a header that lies about the size would shear the image.
            held = len(self.dataset.PixelData or b"")
            if held not in (n_bytes, n_bytes + 1):  # + 1: the pad byte that keeps a DICOM value even-length
                raise InputError(
                    f"{self.path}: pixel data holds {held} bytes, but Rows × Columns × SamplesPerPixel × "
                    f"BitsAllocated/8 = {rows} × {columns} × {samples} × {bits}/8 = {n_bytes}"
                )
        return n_bytes

    def pixels(self) -> np.ndarray:
        """Rescaled pixel values as (x, y) = (columns, rows); the decoded size is checked before decoding."""
        from cinema.io.limits import out_of_memory

        n_bytes = self._pixel_bytes()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                array = self.dataset.pixel_array
        except MemoryError:
            raise out_of_memory(self.path, n_bytes, "the decoded pixel data") from None
        except Exception as err:  # pydicom raises assorted types for missing/short/compressed pixel data
            raise InputError(f"{self.path}: cannot decode pixel data ({type(err).__name__}: {err})") from err
        if array.shape != self.shape:
            raise InputError(f"{self.path}: pixel data has shape {array.shape}, expected {self.shape}")
        slope = _optional_float(self.dataset, "RescaleSlope")
        intercept = _optional_float(self.dataset, "RescaleIntercept")
        # Overflow becomes inf, refused below with the file's name; NumPy's warnings would only repeat it unnamed.
        with np.errstate(all="ignore"):
            array = array.astype(np.float32)
            if slope is not None and slope != 1.0:
                array = array * np.float32(slope)
            if intercept:
                array = array + np.float32(intercept)
        if not np.isfinite(array).all():
            raise InputError(f"{self.path}: pixel values are not finite after rescaling")
        return array.T


def _read_dataset_bounded(path: Path, file: Any) -> Dataset:
    """`pydicom.dcmread` of an open binary file, except that a deflated data set is inflated here in bounded chunks.

    pydicom inflates a Deflated Explicit VR Little Endian data set with one unbounded ``zlib.decompress``: a few kB
    can claim gigabytes. This mirrors what it does after inflating (explicit VR little endian from there on).
    """
    import zlib

    from pydicom.dataset import FileDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    from cinema.io.limits import ENV_MAX_IMAGE_MB, format_bytes, max_decoded_bytes

    preamble = read_preamble(file, False)
    file_meta = _read_file_meta_info(file)  # private in pydicom, but stable since 1.x: there is no public form
    if str(file_meta.get("TransferSyntaxUID", "")) != DeflatedExplicitVRLittleEndian:
        file.seek(0)
        return pydicom.dcmread(file)
    limit, chunk_bytes = max_decoded_bytes(), 1 << 20
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    chunks: list[bytes] = []
    inflated, pending = 0, b""
    while not inflater.eof:
        pending = pending or file.read(chunk_bytes)
        if not pending:
            raise InputError(f"{path}: unreadable DICOM file (the deflated data set is truncated)")
        chunk = inflater.decompress(pending, chunk_bytes)
        pending = inflater.unconsumed_tail
        inflated += len(chunk)
        if inflated > limit:
            raise InputError(
                f"{path}: the deflated DICOM data set inflates to more than the limit of {format_bytes(limit)} per "
                f"image file (raise it with {ENV_MAX_IMAGE_MB} if the file is genuine)"
            )
        chunks.append(chunk)
    buffer = DicomBytesIO(b"".join(chunks))
    chunks.clear()
    dataset = read_dataset(buffer, is_implicit_VR=False, is_little_endian=True)
    result = FileDataset(path, dataset, preamble, file_meta, is_implicit_VR=False, is_little_endian=True)
    result.set_original_encoding(False, True, dataset.original_character_set)
    return result


def _read_image(path: Path) -> _Image | str:
    """Parse one DICOM file; returns the reason as a string when it is DICOM but not a positioned image."""
    from cinema.io.limits import out_of_memory, read_error

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with open(path, "rb") as file:
                dataset = _read_dataset_bounded(path, file)
            # pydicom decodes each element on first access: decode them all now, so that a damaged one (an
            # unknown VR after a flipped byte) is reported here with the file's name, not later by whatever reads it.
            for holder in (dataset.file_meta, dataset):
                for tag in list(holder.keys()):
                    try:
                        holder[tag]
                    except Exception as err:
                        if not tag.is_private:
                            raise InputError(f"{path}: unreadable DICOM element {tag} ({err})") from err
                        del holder[tag]  # never read here: a damaged vendor element costs nothing
    except OSError as err:
        raise read_error(path, err) from err
    except MemoryError as err:
        raise out_of_memory(path, path.stat().st_size, "the DICOM data set") from err
    except Exception as err:  # pydicom raises many types for a damaged file; ours already name it
        if isinstance(err, ValueError) and str(err).startswith(f"{path}: "):
            raise
        raise InputError(f"{path}: unreadable DICOM file ({type(err).__name__}: {err})") from err
    if "PixelData" not in dataset:
        # pydicom returns what it parsed before a truncation; an image object without pixels is a damaged file.
        sop_class = dataset.get("SOPClassUID") or dataset.file_meta.get("MediaStorageSOPClassUID")
        if sop_class is None:
            raise InputError(f"{path}: unreadable DICOM file (no SOP class, no pixel data)")
        if "Rows" in dataset or "ImagePositionPatient" in dataset or "Image Storage" in getattr(sop_class, "name", ""):
            raise InputError(f"{path}: image without pixel data (truncated file?)")
        return "not an image (no pixel data)"
    position = _float_list(dataset, "ImagePositionPatient")
    orientation = _float_list(dataset, "ImageOrientationPatient")
    if position is None or orientation is None:
        return "no ImagePositionPatient/ImageOrientationPatient"
    try:
        n_frames = int(dataset.get("NumberOfFrames", 1) or 1)
        rows, columns = int(dataset.get("Rows", 0) or 0), int(dataset.get("Columns", 0) or 0)
    except (TypeError, ValueError) as err:  # a multi-valued or non-numeric element
        raise InputError(f"{path}: malformed NumberOfFrames/Rows/Columns ({err})") from err
    if n_frames > 1:
        raise InputError(f"{path}: enhanced multi-frame DICOM is not supported; export classic single-frame images")
    if len(position) != 3 or len(orientation) != 6 or not np.isfinite(position + orientation).all():
        raise InputError(f"{path}: malformed ImagePositionPatient/ImageOrientationPatient")
    orientation_array = np.asarray(orientation)
    row_dir, col_dir = orientation_array[:3], orientation_array[3:]
    with np.errstate(all="ignore"):  # huge values overflow to inf and fail the test; no need for NumPy's warning
        not_unit = (
            abs(np.linalg.norm(row_dir) - 1) > 1e-2
            or abs(np.linalg.norm(col_dir) - 1) > 1e-2
            or abs(row_dir @ col_dir) > 1e-2
        )
    if not_unit:
        raise InputError(f"{path}: ImageOrientationPatient is not two orthogonal unit vectors: {orientation}")
    spacing = _float_list(dataset, "PixelSpacing")
    if spacing is None or len(spacing) != 2:
        raise InputError(f"{path}: missing or malformed PixelSpacing")
    if not np.isfinite(spacing).all():
        raise InputError(f"{path}: non-finite pixel spacing {spacing}")
    if min(spacing) <= 0:
        raise InputError(f"{path}: zero or negative pixel spacing {spacing}")
    if rows < 1 or columns < 1:
        raise InputError(f"{path}: missing image size (Rows/Columns)")
    instance = dataset.get("InstanceNumber")
    try:
        instance_number = int(instance) if instance not in (None, "") else 0
    except (TypeError, ValueError):
        instance_number = 0
    series_number = dataset.get("SeriesNumber")
    try:
        series_number = int(series_number) if series_number not in (None, "") else 0
    except (TypeError, ValueError):
        series_number = 0
    return _Image(
        path=path,
        dataset=dataset,
        series_uid=str(dataset.get("SeriesInstanceUID", "") or f"no-uid:{path.parent}"),
        series_number=series_number,
        description=str(dataset.get("SeriesDescription", "") or ""),
        position=np.asarray(position, dtype=np.float64),
        orientation=orientation_array,
        pixel_spacing=(float(spacing[0]), float(spacing[1])),
        shape=(rows, columns),
        trigger_time=_optional_float(dataset, "TriggerTime"),
        instance_number=instance_number,
    )


def view_from_description(description: str) -> str | None:
    """The view a SeriesDescription names, or None ("lax" alone does not say which chamber view)."""
    text = description.lower()
    compact = re.sub(r"[^a-z0-9]", "", text)
    tokens = set(re.split(r"[^a-z0-9]+", text))
    chamber_words = {"2": ("2ch", "twoch", "2chamber", "vla"), "3": ("3ch", "threech", "lvot"), "4": ("4ch", "fourch")}
    for chambers, words in chamber_words.items():
        if any(word in compact for word in words) or f"{chambers}c" in tokens or f"lax{chambers}c" in compact:
            return f"lax_{chambers}c"
    if "hla" in tokens:
        return "lax_4c"
    if tokens & {"sa", "sax", "short", "shortaxis"} or "shortaxis" in compact or re.search(r"(^|[^a-z])sax", text):
        return SAX
    return None


def _cluster_positions(images: list[_Image], normal: np.ndarray) -> list[list[_Image]]:
    """Group images by slice: their distance along `normal` within `_POSITION_TOLERANCE_MM`."""
    ordered = sorted(images, key=lambda image: float(image.position @ normal))
    groups: list[list[_Image]] = []
    last = None
    for image in ordered:
        distance = float(image.position @ normal)
        if last is None or distance - last > _POSITION_TOLERANCE_MM:
            groups.append([])
        groups[-1].append(image)
        last = distance
    return groups


def _order_phases(images: list[_Image]) -> list[_Image]:
    # Trigger time is the phase; instance number breaks ties and covers files without a trigger time.
    return sorted(images, key=lambda image: (image.trigger_time or 0.0, image.instance_number, str(image.path)))


def _check_same_grid(images: list[_Image], what: str) -> None:
    reference = images[0]
    for image in images[1:]:
        if np.abs(image.orientation - reference.orientation).max() > _ORIENTATION_TOLERANCE:
            raise InputError(
                f"{image.path}: mixed orientations inside one {what} stack: "
                f"{np.round(image.orientation, 4).tolist()} vs {np.round(reference.orientation, 4).tolist()} "
                f"in {reference.path}"
            )
        if image.shape != reference.shape:
            raise InputError(
                f"{image.path}: image size {image.shape} differs from {reference.shape} in {reference.path} ({what})"
            )
        if not np.allclose(image.pixel_spacing, reference.pixel_spacing, rtol=1e-4, atol=1e-5):
            raise InputError(
                f"{image.path}: pixel spacing {image.pixel_spacing} differs from {reference.pixel_spacing} "
                f"in {reference.path} ({what})"
            )


def _in_plane_affine_lps(image: _Image) -> np.ndarray:
    """Voxel (column, row, slice) -> LPS mm, without the slice column."""
    affine = np.eye(4)
    row_spacing, column_spacing = image.pixel_spacing
    affine[:3, 0] = image.orientation[:3] * column_spacing
    affine[:3, 1] = image.orientation[3:] * row_spacing
    affine[:3, 3] = image.position
    return affine


LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _slice_thickness(image: _Image) -> float:
    for keyword in ("SliceThickness", "SpacingBetweenSlices"):
        value = _optional_float(image.dataset, keyword)
        if value is not None and np.isfinite(value) and value > 0:
            return value
    return float(min(image.pixel_spacing))


def _frame_table(slices: list[list[_Image]], what: str, warnings_out: list[str]) -> list[list[_Image]]:
    """Phase-ordered images per slice, truncated to a common phase count (see the module policy)."""
    ordered = [_order_phases(images) for images in slices]
    counts = [len(images) for images in ordered]
    if any(image.trigger_time is None for images in ordered for image in images):
        warnings_out.append(f"{what}: some images have no TriggerTime; phases ordered by InstanceNumber")
    n_phases = min(counts)
    if n_phases < 2:
        single = next(images for images in ordered if len(images) == min(counts))
        raise InputError(f"{single[0].path}: single-phase {what} slice (phase counts per slice {counts}): not a cine")
    if len(set(counts)) > 1:
        warnings_out.append(f"{what}: unequal phase counts per slice {counts}; truncated every slice to {n_phases}")
    return [images[:n_phases] for images in ordered]


def _assemble_view(name: str, slices: list[list[_Image]], warnings_out: list[str]) -> tuple[CineView, dict]:
    """Stack phase-ordered slices into a view; checks spacing and straightness of the stack."""
    table = _frame_table(slices, name, warnings_out)
    first = table[0][0]
    affine = _in_plane_affine_lps(first)
    origins = np.stack([images[0].position for images in table])
    if len(table) > 1:
        normal = first.normal
        distances = origins @ normal
        gaps = np.diff(distances)
        median_gap = float(np.median(gaps))
        tolerance = 0.02 * median_gap + 0.01
        if (np.abs(gaps - median_gap) > tolerance).any():
            worst = int(np.argmax(np.abs(gaps - median_gap)))
            raise InputError(
                f"{table[worst + 1][0].path}: {name} slice gaps are not uniform "
                f"({', '.join(f'{g:.3f}' for g in gaps)} mm along the slice normal)"
            )
        # Slice step from the end slices keeps the first and last origins exact and spreads header rounding.
        step = (origins[-1] - origins[0]) / (len(table) - 1)
        predicted = origins[0] + np.arange(len(table))[:, None] * step
        residual = np.linalg.norm(predicted - origins, axis=1)
        if residual.max() > tolerance:
            worst = int(np.argmax(residual))
            raise InputError(
                f"{table[worst][0].path}: {name} slice origins are not on a straight line "
                f"(off by {residual.max():.3f} mm)"
            )
        affine[:3, 2] = step
    else:
        affine[:3, 2] = first.normal * _slice_thickness(first)
    for images in table:
        for image in images:
            if np.linalg.norm(image.position - images[0].position) > _POSITION_TOLERANCE_MM:
                raise InputError(
                    f"{image.path}: image origin differs from other phases of its slice ({images[0].path})"
                )
    pixels = np.stack([np.stack([image.pixels() for image in images], axis=-1) for images in table], axis=2)
    trigger_times = [[image.trigger_time for image in images] for images in table]
    if all(t is not None for row in trigger_times for t in row):
        frame_times = [float(np.median(column)) for column in zip(*trigger_times, strict=True)]
    else:
        frame_times = None
    if name != SAX:
        pixels = pixels[:, :, 0, :]
    view = CineView(
        image=pixels,
        affine=LPS_TO_RAS @ affine,
        frame_times_ms=frame_times,
        source=str(first.path.parent),
        name=name,
    )
    info = {
        "trigger_times_ms": trigger_times,
        "slice_positions_mm": [float(p) for p in origins @ first.normal],
        "image_orientation_patient": [float(v) for v in first.orientation],
        "pixel_spacing_mm": list(first.pixel_spacing),
        "slice_thickness_mm": _optional_float(first.dataset, "SliceThickness"),
        "series_instance_uids": sorted({image.series_uid for images in table for image in images}),
        "series_descriptions": sorted({image.description for images in table for image in images}),
    }
    return view, info


def _scanner_metadata(dataset: Dataset) -> dict[str, Any]:
    fields = {
        "Manufacturer": "manufacturer",
        "ManufacturerModelName": "model",
        "MagneticFieldStrength": "field_strength_t",
        "HeartRate": "heart_rate_bpm",
        "NominalInterval": "rr_interval_ms",
        "CardiacNumberOfImages": "cardiac_number_of_images",
        "RepetitionTime": "repetition_time_ms",
        "EchoTime": "echo_time_ms",
        "FlipAngle": "flip_angle_deg",
        "Modality": "modality",
    }
    return {name: _json_value(dataset.get(keyword)) for keyword, name in fields.items() if dataset.get(keyword)}


def _phi_metadata(dataset: Dataset) -> dict[str, Any]:
    return {keyword: _json_value(dataset.get(keyword)) for keyword in PHI_KEYWORDS if dataset.get(keyword)}


def list_dicom_files(folder: str | os.PathLike) -> list[Path]:
    """Every file under `folder` (recursively, sorted) that carries the DICOM preamble.

    A sub-folder that cannot be listed is an error naming it (`Path.rglob` would silently leave it out, and with it
    part of the exam); linked folders are followed once each.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")

    def unreadable(err: OSError) -> None:
        raise InputError(f"{err.filename}: cannot list this folder ({err.strerror or type(err).__name__})") from err

    files: list[Path] = []
    visited: set[Path] = set()
    for root, subdirs, names in os.walk(folder, onerror=unreadable, followlinks=True):
        real = Path(root).resolve()
        if real in visited:  # a link loop, or one folder linked twice
            subdirs[:] = []
            continue
        visited.add(real)
        files += [Path(root) / name for name in names]
    return sorted(p for p in files if p.is_file() and has_dicom_preamble(p))


def _pseudonymise_uid(uid: str) -> str:
    # UIDs can link an exam back to the hospital's records (PS3.15 replaces them); a keyed hash still lets users tell
    # series apart and match them across runs on this installation, but nobody without its secret can re-link them.
    return pseudonymise_uid(uid)


def _pseudonymise_uids(metadata: dict[str, Any]) -> None:
    metadata["study_instance_uid"] = _pseudonymise_uid(metadata["study_instance_uid"])
    for record in metadata["series"]:
        record["series_instance_uid"] = _pseudonymise_uid(record["series_instance_uid"])
    for info in metadata["views"].values():
        info["series_instance_uids"] = [_pseudonymise_uid(uid) for uid in info["series_instance_uids"]]


def read_dicom_study(folder: str | os.PathLike, keep_phi: bool = False, study: str | None = None) -> Study:
    """Read one cine exam from a DICOM folder (see the module docstring for the exact policy).

    A folder holding images of several studies (StudyInstanceUID) is refused with the studies listed by their
    pseudonyms, unless `study` names one of them (its pseudonym as listed, or its raw UID).
    """
    # Real headers often break VR rules (e.g. UIDs with leading zeros); pydicom warns per element and per file.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return _read_dicom_study(Path(folder), keep_phi, study)


def dicom_studies(folder: str | os.PathLike) -> dict[str, list[Path]]:
    """The DICOM files under `folder` grouped by study: {pseudonymised StudyInstanceUID: files}; headers only."""
    groups: dict[str, list[Path]] = defaultdict(list)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for path in list_dicom_files(folder):
            try:
                dataset = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
            except Exception as err:  # pydicom raises many types for a damaged file
                raise InputError(f"{path}: unreadable DICOM file ({type(err).__name__}: {err})") from err
            groups[_pseudonymise_uid(str(dataset.get("StudyInstanceUID", "") or ""))].append(path)
    return dict(groups)


def _one_study(folder: Path, images: list[_Image], study: str | None) -> list[_Image]:
    """The images of the one study (and one patient) the exam is; several without a choice is an error."""
    by_study: dict[str, list[_Image]] = defaultdict(list)
    raw_of: dict[str, str] = {}
    for image in images:
        raw = str(image.dataset.get("StudyInstanceUID", "") or "")
        key = _pseudonymise_uid(raw) or "(no StudyInstanceUID)"
        raw_of[key] = raw
        by_study[key].append(image)
    if study is not None:
        chosen = [key for key in by_study if study in (key, raw_of[key])]
        if not chosen:
            listed = ", ".join(sorted(by_study))
            raise InputError(f"{folder}: no study {study!r} here (the studies here: {listed})")
        images = by_study[chosen[0]]
    elif len(by_study) > 1:
        listed = "; ".join(f"{key} ({len(group)} images)" for key, group in sorted(by_study.items()))
        raise InputError(
            f"{folder}: holds {len(by_study)} studies ({listed}); an exam is one study: pick one with "
            "--study ID, or split the folder into one exam per study with `cinema index`"
        )
    patients = {str(image.dataset.get("PatientID", "") or "") for image in images}
    if len(patients) > 1:
        raise InputError(
            f"{folder}: one study holds images of {len(patients)} different patients (PatientID); "
            "refusing to mix patients in one exam"
        )
    return images


def _read_dicom_study(folder: Path, keep_phi: bool, study: str | None = None) -> Study:
    files = list_dicom_files(folder)
    if not files:
        raise InputError(f"{folder}: no DICOM files found")
    # Messages kept in metadata name no files: paths can carry patient names and metadata is written out.
    skipped: list[str] = []
    warnings_out: list[str] = []
    images: list[_Image] = []
    seen_instances: set[str] = set()
    skip_reasons: dict[str, int] = defaultdict(int)
    for path in files:
        parsed = _read_image(path)
        if isinstance(parsed, str):
            skip_reasons[parsed] += 1
            continue
        sop_uid = str(parsed.dataset.get("SOPInstanceUID", "") or "")
        if sop_uid and sop_uid in seen_instances:
            skip_reasons["duplicate SOPInstanceUID"] += 1
            continue
        seen_instances.add(sop_uid)
        images.append(parsed)
    skipped.extend(f"{count} DICOM file(s): {reason}" for reason, count in skip_reasons.items())
    if not images:
        raise InputError(f"{folder}: no positioned DICOM images (no cine) found")
    images = _one_study(folder, images, study)

    def shown(uid: str) -> str:  # warnings are written into outputs: never a raw UID unless PHI is kept
        return uid if keep_phi else _pseudonymise_uid(uid)

    by_series: dict[str, list[_Image]] = defaultdict(list)
    for image in images:
        by_series[image.series_uid].append(image)

    candidates: dict[str, list[tuple[int, list[list[_Image]]]]] = defaultdict(list)
    series_records = []
    single_phase_example: _Image | None = None
    mixed_example: list[_Image] | None = None
    for uid, series_images in by_series.items():
        first = series_images[0]
        view = view_from_description(first.description)
        slices = _cluster_positions(series_images, first.normal)
        max_phases = max(len(s) for s in slices)
        record = {
            "series_instance_uid": uid,
            "series_number": first.series_number,
            "description": first.description,
            "n_images": len(series_images),
            "n_positions": len(slices),
        }
        series_records.append(record)
        if max_phases < 2:
            record["used_as"] = None
            skipped.append(f"series {first.series_number} '{first.description}': single-phase, not a cine")
            single_phase_example = single_phase_example or first
            continue
        orientations = {tuple(np.round(image.orientation, 3)) for image in series_images}
        if view is None and len(orientations) > 1:
            # e.g. several long-axis planes in one unnamed series: not a stack, and no chamber to assign.
            record["used_as"] = None
            skipped.append(f"series {first.series_number} '{first.description}': unnamed series, several orientations")
            mixed_example = mixed_example or series_images
            continue
        if view is None:
            if len(slices) > 1:
                view = SAX
            else:
                record["used_as"] = None
                skipped.append(
                    f"series {first.series_number} '{first.description}': single-slice cine whose "
                    "SeriesDescription does not name a view (2ch/3ch/4ch/sax)"
                )
                continue
        if view in LAX_VIEWS and len(slices) > 1:
            record["used_as"] = None
            skipped.append(
                f"series {first.series_number} '{first.description}': long-axis series with {len(slices)} "
                "slice positions; only single-slice long-axis cines are supported"
            )
            continue
        record["used_as"] = view
        candidates[view].append((first.series_number, series_images))

    if not candidates:
        if mixed_example is not None:
            _check_same_grid(mixed_example, "unnamed")
        if single_phase_example is not None:
            raise InputError(f"{single_phase_example.path}: single-phase series: {folder} holds no cine")
        raise InputError(f"{folder}: no cine series found ({'; '.join(skipped) or 'no usable images'})")

    views: dict[str, CineView] = {}
    view_info: dict[str, dict] = {}
    if SAX in candidates:
        stack = [image for _, series_images in candidates[SAX] for image in series_images]
        _check_same_grid(stack, SAX)
        slices = _cluster_positions(stack, stack[0].normal)
        resolved = []
        for images_at_position in slices:
            series_here = {image.series_uid for image in images_at_position}
            if len(series_here) > 1:
                # Repeated acquisitions of one slice: keep the latest series (highest SeriesNumber).
                latest = max(images_at_position, key=lambda image: image.series_number).series_uid
                warnings_out.append(
                    f"sax: {len(series_here)} series at one slice position; kept the latest ({shown(latest)})"
                )
                images_at_position = [image for image in images_at_position if image.series_uid == latest]
            resolved.append(images_at_position)
        views[SAX], view_info[SAX] = _assemble_view(SAX, resolved, warnings_out)
    for name in LAX_VIEWS:
        if name not in candidates:
            continue
        options = sorted(candidates[name], key=lambda item: item[0])
        if len(options) > 1:
            warnings_out.append(f"{name}: {len(options)} series; kept the latest (series {options[-1][0]})")
        series_images = options[-1][1]
        _check_same_grid(series_images, name)
        views[name], view_info[name] = _assemble_view(name, [series_images], warnings_out)

    reference = images[0].dataset
    metadata: dict[str, Any] = {
        "source_format": "dicom",
        "scanner": _scanner_metadata(reference),
        "study_instance_uid": str(reference.get("StudyInstanceUID", "") or ""),
        "series": sorted(series_records, key=lambda r: (r["series_number"], r["series_instance_uid"])),
        "views": view_info,
        "warnings": warnings_out,
        "skipped": skipped,
    }
    if keep_phi:
        metadata["patient"] = _phi_metadata(reference)
    else:
        _pseudonymise_uids(metadata)
    return Study(views=views, metadata=metadata, source=str(folder))
