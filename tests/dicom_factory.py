"""Synthetic cine MRI DICOM series for tests (pydicom only, small and fast).

`write_cine_series` writes one series: a short-axis stack (several slice positions) or a long-axis cine (one
position), with configurable geometry, phases, trigger times, rescaling and planted patient fields. Pixel values
encode (slice, phase, row, column) through `pixel_value`, so tests can check ordering and axes exactly.

Usage::

    files = write_cine_series(tmp_path / "exam", n_slices=4, n_phases=5)
    files += write_cine_series(tmp_path / "exam", view="lax_4c", series_number=2)
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, MRImageStorage, generate_uid

# A plausible oblique short-axis orientation (row direction, column direction), unit and orthogonal.
SAX_ORIENTATION = (0.7122, 0.7011, -0.0344, -0.3077, 0.2678, -0.9130)
LAX_ORIENTATIONS = {
    "lax_2c": (0.0, 1.0, 0.0, 0.0, 0.0, -1.0),
    "lax_3c": (0.6, 0.8, 0.0, 0.0, 0.0, -1.0),
    "lax_4c": (1.0, 0.0, 0.0, 0.0, 0.0, -1.0),
}
DESCRIPTIONS = {"sax": "cine_sax", "lax_2c": "cine_2ch", "lax_3c": "cine_3ch", "lax_4c": "cine_4ch"}

PHI = {
    "PatientName": "Doe^Janethrope",
    "PatientID": "PID-88317-XQ",
    "PatientBirthDate": "19230417",
    "AccessionNumber": "ACC-5521-ZZ",
    "InstitutionName": "Saint Quillon Heart Institute",
    "ReferringPhysicianName": "Smithereens^Albertus",
}


def _normalised_orientation(orientation: Sequence[float]) -> np.ndarray:
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    row /= np.linalg.norm(row)
    col = col - (col @ row) * row
    col /= np.linalg.norm(col)
    return np.concatenate([row, col])


def pixel_value(slice_index: int, phase: int, rows: int, columns: int) -> np.ndarray:
    """Stored pixel values (rows, columns): 1000 per slice, 50 per phase, and a row/column pattern below 50."""
    r, c = np.meshgrid(np.arange(rows), np.arange(columns), indexing="ij")
    return (1000 * slice_index + 50 * phase + (c % 7) + 8 * (r % 5)).astype(np.uint16)


def write_cine_series(
    folder: Path,
    view: str = "sax",
    n_slices: int | None = None,
    n_phases: int | Sequence[int] = 4,
    rows: int = 16,
    columns: int = 12,
    pixel_spacing: tuple[float, float] = (1.5, 1.25),
    slice_spacing: float | Sequence[float] = 8.0,
    slice_thickness: float = 8.0,
    orientation: Sequence[float] | None = None,
    origin: Sequence[float] = (-30.0, -200.0, 110.0),
    in_plane_offsets: Sequence[Sequence[float]] | None = None,
    trigger_times: Callable[[int, int], float] | None = None,
    description: str | None = None,
    series_number: int = 1,
    phi: dict[str, str] | None = None,
    rescale: tuple[float, float] | None = None,
    values: Callable[[int, int, int, int], np.ndarray] = pixel_value,
    study_uid: str | None = None,
    shuffle_names: bool = True,
    seed: int = 0,
) -> list[Path]:
    """Write one cine series into `folder`; returns the file paths.

    n_slices: positions (default 3 for "sax", 1 for a long-axis view).
    n_phases: phases per slice, or one count per slice (to make unequal counts).
    slice_spacing: distance between consecutive slices, or the list of gaps (non-uniform stacks).
    in_plane_offsets: per-slice shift (mm, LPS) added to the position, to make a non-straight stack.
    trigger_times: (slice, phase) -> ms; default 40 ms per phase plus 3 ms per slice (differs per slice, as in
        real data).
    orientation: ImageOrientationPatient; default per view. The 6 values are written as given (normalised first).
    phi: patient fields to plant (keyword -> value); default `PHI`.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n_slices = n_slices if n_slices is not None else (3 if view == "sax" else 1)
    phases = [n_phases] * n_slices if isinstance(n_phases, int) else list(n_phases)
    gaps = [slice_spacing] * (n_slices - 1) if np.isscalar(slice_spacing) else list(slice_spacing)
    iop = _normalised_orientation(orientation or (SAX_ORIENTATION if view == "sax" else LAX_ORIENTATIONS[view]))
    normal = np.cross(iop[:3], iop[3:])
    distances = np.concatenate([[0.0], np.cumsum(gaps)]) if n_slices > 1 else np.zeros(1)
    trigger_times = trigger_times or (lambda k, t: 40.0 * t + 3.0 * k)
    phi = PHI if phi is None else phi
    study_uid = study_uid or generate_uid(entropy_srcs=["cinema-test-study"])
    series_uid = generate_uid()
    frame_of_reference = generate_uid(entropy_srcs=["cinema-test-frame"])
    rng = random.Random(seed + series_number)

    paths = []
    instance = 0
    for k in range(n_slices):
        position = np.asarray(origin, float) + distances[k] * normal
        if in_plane_offsets is not None:
            position = position + np.asarray(in_plane_offsets[k], float)
        for t in range(phases[k]):
            instance += 1
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = MRImageStorage
            meta.MediaStorageSOPInstanceUID = generate_uid()
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
            ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
            ds.SOPClassUID = MRImageStorage
            ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
            ds.Modality = "MR"
            ds.Manufacturer = "SyntheticVendor"
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uid
            ds.FrameOfReferenceUID = frame_of_reference
            ds.SeriesNumber = series_number
            ds.InstanceNumber = instance
            ds.SeriesDescription = DESCRIPTIONS.get(view, "") if description is None else description
            for keyword, value in phi.items():
                setattr(ds, keyword, value)
            ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
            ds.ImageOrientationPatient = [f"{v:.8f}" for v in iop]
            ds.PixelSpacing = [f"{v:.6f}" for v in pixel_spacing]
            ds.SliceThickness = f"{slice_thickness:.4f}"
            ds.SliceLocation = "12.5"  # deliberately meaningless, as in real data
            ds.TriggerTime = f"{trigger_times(k, t):.3f}"
            ds.Rows, ds.Columns = rows, columns
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
            if rescale is not None:
                ds.RescaleSlope, ds.RescaleIntercept = f"{rescale[0]}", f"{rescale[1]}"
            ds.PixelData = values(k, t, rows, columns).astype("<u2").tobytes()
            name = f"{rng.getrandbits(40):010x}" if shuffle_names else f"s{series_number:02d}_{k:03d}_{t:03d}.dcm"
            path = folder / name
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    return paths
