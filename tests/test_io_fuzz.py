"""Property-based fuzzing of the readers: damaged and lying NIfTI and DICOM input.

Every input must give either a valid result (finite float32 image of the view's shape, finite invertible affine) or
ONE ValueError / FileNotFoundError whose message names the file or folder: never another exception type, never a
hang (hypothesis deadline), never unbounded memory (every read runs under a 64 MB decoded-size cap). Runs are
derandomized so CI sees the same examples every time.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest
from dicom_factory import write_cine_series
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydicom import uid
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.filebase import DicomBytesIO
from pydicom.tag import Tag

from cinema.io import CineView, Study, load_nifti, read_dicom_study, read_nifti_cine, read_study
from cinema.io.limits import MB, decoded_byte_limit

FUZZ = settings(
    # A longer hunt: CINEMA_FUZZ_EXAMPLES=3000 CINEMA_FUZZ_RANDOM=1 (new examples each run); CI runs the default,
    # the same examples every time.
    max_examples=int(os.environ.get("CINEMA_FUZZ_EXAMPLES", "100")),
    deadline=timedelta(seconds=20),  # only a hang fails: two shared slow cores make timings noisy
    derandomize=not os.environ.get("CINEMA_FUZZ_RANDOM"),
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _fresh_dir(workdir: Path) -> Path:
    return Path(tempfile.mkdtemp(dir=workdir))


def _outcome(read: Callable[[], Any], where: Path) -> Any:
    """The reader's result, or None after one clean error naming `where` (anything else fails the test)."""
    try:
        with decoded_byte_limit(64 * MB):
            result = read()
    except (ValueError, FileNotFoundError) as err:
        message = str(err)
        assert str(where) in message, f"{type(err).__name__} does not name {where}: {message}"
        assert "\n" not in message, f"multi-line message: {message!r}"
        # --hypothesis-show-statistics then shows which refusals the examples reach
        event(re.sub(r"[-+]?\d[\d.e+-]*", "N", message.split(": ", 1)[-1])[:70])
        return None
    event("read")
    return result


def _check_view(view: CineView) -> None:
    image = view.image
    assert image.dtype == np.float32 and np.isfinite(image).all()
    assert image.ndim == (4 if view.is_sax else 3) and min(image.shape) >= 1
    affine = view.affine
    assert affine.shape == (4, 4) and np.isfinite(affine).all()
    assert np.isfinite(np.linalg.inv(affine)).all()
    assert np.isfinite(view.world_to_voxel(view.voxel_to_world(np.zeros(3)))).all()
    if view.frame_times_ms is not None:
        assert len(view.frame_times_ms) == view.n_frames and np.isfinite(view.frame_times_ms).all()


def _check_study(study: Study) -> None:
    assert study.views
    for name, view in study.views.items():
        assert view.name == name
        _check_view(view)


# ---------------------------------------------------------------------------------------------------------- NIfTI

_RNG = np.random.default_rng(7)
_BASE_DATA = _RNG.integers(-500, 1500, size=(5, 4, 3, 2)).astype(np.int16)
_BASE_AFFINE = np.array([[1.3, 0.2, 0.0, -40.0], [-0.2, 1.3, 0.1, 20.0], [0.0, -0.1, 8.0, 5.0], [0, 0, 0, 1.0]])


def _base_nifti(image_class: type[nib.Nifti1Image] = nib.Nifti1Image) -> bytes:
    image = image_class(_BASE_DATA, _BASE_AFFINE)
    image.header.set_xyzt_units("mm", "msec")
    image.header.set_zooms((*image.header.get_zooms()[:3], 40.0))
    return image.to_bytes()


BASE_NIFTI = _base_nifti()
BASE_NIFTI2 = _base_nifti(nib.Nifti2Image)
BASE_NIFTI_GZ = gzip.compress(BASE_NIFTI, mtime=0)

_weird_floats = st.one_of(
    st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.5, np.nan, np.inf, -np.inf, 1e-45, 1e-30, 1e30, 3.4e38, -3.4e38]),
    st.floats(width=32),
)
_dims = st.lists(st.one_of(st.integers(-3, 8), st.sampled_from([32767, -32768, 1000])), min_size=8, max_size=8)
_datatypes = st.one_of(
    st.sampled_from([2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1280, 1536, 1792, 2048, 2304, 0, 1]),
    st.integers(-32768, 32767),
)
_codes = st.one_of(st.integers(0, 4), st.integers(-32768, 32767))
_rows = st.one_of(st.lists(_weird_floats, min_size=4, max_size=4), st.just([0.0, 0.0, 0.0, 0.0]))

HEADER_FIELDS = {
    "sizeof_hdr": st.sampled_from([348, 540, 0, -1, 1234]),
    "dim": _dims,
    "datatype": _datatypes,
    "bitpix": st.integers(-32768, 32767),
    "pixdim": st.lists(_weird_floats, min_size=8, max_size=8),
    "vox_offset": st.one_of(st.sampled_from([0.0, 348.0, 352.0, 353.0, 368.0, 1e9, -352.0, np.nan]), _weird_floats),
    "scl_slope": _weird_floats,
    "scl_inter": _weird_floats,
    "qform_code": _codes,
    "sform_code": _codes,
    "quatern_b": _weird_floats,
    "quatern_c": _weird_floats,
    "quatern_d": _weird_floats,
    "qoffset_x": _weird_floats,
    "qoffset_y": _weird_floats,
    "qoffset_z": _weird_floats,
    "srow_x": _rows,
    "srow_y": _rows,
    "srow_z": _rows,
    "xyzt_units": st.integers(0, 255),
    "magic": st.sampled_from([b"n+1", b"ni1", b"n+2", b"ni2", b"", b"abc"]),
}


def _patched_header(fields: dict[str, Any], singular_sform: bool, nifti2: bool) -> bytes:
    raw = bytearray(BASE_NIFTI2 if nifti2 else BASE_NIFTI)
    header_class = nib.Nifti2Header if nifti2 else nib.Nifti1Header
    size = header_class.template_dtype.itemsize
    header = header_class(bytes(raw[:size]), check=False)
    for name, value in fields.items():
        try:
            header[name] = value
        except (OverflowError, ValueError):  # NaN or 1e30 in NIfTI-2's integer vox_offset: leave the field
            pass
    if singular_sform:  # two equal voxel axes: a singular voxel-to-world matrix
        header["sform_code"] = 1
        header["srow_y"] = header["srow_x"]
    raw[:size] = header.binaryblock
    return bytes(raw)


_names = st.sampled_from(["sax_fuzz", "lax_4c_fuzz", "fuzz"])


def _write_nifti(workdir: Path, name: str, raw: bytes, compressed: bool) -> Path:
    path = _fresh_dir(workdir) / f"{name}.nii{'.gz' if compressed else ''}"
    path.write_bytes(gzip.compress(raw, mtime=0) if compressed else raw)
    return path


def _check_load(path: Path) -> None:
    loaded = _outcome(lambda: load_nifti(path), path)
    if loaded is None:
        return
    data, affine, header = loaded
    assert data.shape == tuple(header.get_data_shape())
    assert affine.shape == (4, 4)
    try:  # whatever nibabel itself can read, we read the same (the size is real: our read succeeded)
        reference = nib.load(str(path))
        expected, expected_affine = np.asanyarray(reference.dataobj), reference.affine
    except Exception:
        return
    assert data.dtype == expected.dtype
    np.testing.assert_array_equal(data, expected)
    np.testing.assert_array_equal(affine, expected_affine)


@FUZZ
@given(
    fields=st.fixed_dictionaries({}, optional=HEADER_FIELDS),
    singular_sform=st.booleans(),
    nifti2=st.booleans(),
    name=_names,
    compressed=st.booleans(),
)
def test_random_nifti_headers(workdir, fields, singular_sform, nifti2, name, compressed):
    path = _write_nifti(workdir, name, _patched_header(fields, singular_sform, nifti2), compressed)
    _check_load(path)
    study = _outcome(lambda: read_study(path), path)
    if study is not None:
        _check_study(study)


@FUZZ
@given(data=st.data(), compressed=st.booleans(), name=_names)
def test_truncated_nifti_is_refused(workdir, data, compressed, name):
    whole = BASE_NIFTI_GZ if compressed else BASE_NIFTI
    cut = data.draw(st.integers(0, len(whole) - 1), label="cut")
    path = _fresh_dir(workdir) / f"{name}.nii{'.gz' if compressed else ''}"
    path.write_bytes(whole[:cut])
    # every byte of the file is the header, the voxels or the gzip trailer: no truncation leaves a whole image
    assert _outcome(lambda: read_nifti_cine(path), path) is None
    assert _outcome(lambda: load_nifti(path), path) is None


@FUZZ
@given(data=st.data(), compressed=st.booleans(), name=_names)
def test_nifti_byte_flips(workdir, data, compressed, name):
    raw = bytearray(BASE_NIFTI_GZ if compressed else BASE_NIFTI)
    position = st.one_of(st.integers(0, 351), st.integers(0, len(raw) - 1))  # the header is where lies do harm
    flips = data.draw(st.lists(st.tuples(position, st.integers(1, 255)), min_size=1, max_size=6), label="flips")
    for offset, mask in flips:
        raw[offset] ^= mask
    path = _fresh_dir(workdir) / f"{name}.nii{'.gz' if compressed else ''}"
    path.write_bytes(bytes(raw))
    _check_load(path)
    view = _outcome(lambda: read_nifti_cine(path, view="sax"), path)
    if view is not None:
        _check_view(view)


# ---------------------------------------------------------------------------------------------------------- DICOM


@pytest.fixture(scope="module")
def base_exam(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("base_exam")
    files = write_cine_series(folder, n_slices=2, n_phases=3, rows=8, columns=6, shuffle_names=False)
    return sorted(files)


_SYNTAXES = [
    uid.ImplicitVRLittleEndian,
    uid.ExplicitVRLittleEndian,
    uid.ExplicitVRBigEndian,
    uid.DeflatedExplicitVRLittleEndian,
    uid.JPEGBaseline8Bit,
    uid.RLELossless,
    "1.2.3.4",
    "",
]
_ds_text = st.one_of(
    st.sampled_from(["nan", "inf", "-inf", "0", "-0", "1e308", "-1e308", "1e-320", "abc", "", " 1.5 ", "1e39"]),
    st.floats().map(lambda value: f"{value:.6g}"),
)


def _ds_values(count: st.SearchStrategy[int]) -> st.SearchStrategy[str]:
    return count.flatmap(lambda n: st.lists(_ds_text, min_size=n, max_size=n)).map("\\".join)


_us_values = st.one_of(
    st.sampled_from([0, 1, 7, 8, 9, 12, 16, 24, 32, 64, 65535]).map(lambda v: struct.pack("<H", v)),
    st.binary(min_size=0, max_size=6),  # wrong lengths: no value, several values, half a value
)

DICOM_MUTATIONS = st.one_of(
    st.tuples(st.just("raw"), st.sampled_from(["Rows", "Columns", "BitsAllocated", "SamplesPerPixel"]), _us_values),
    st.tuples(st.just("text"), st.just("PixelSpacing"), _ds_values(st.sampled_from([2, 2, 1, 3, 0]))),
    st.tuples(st.just("text"), st.just("ImageOrientationPatient"), _ds_values(st.sampled_from([6, 6, 5, 7]))),
    st.tuples(st.just("text"), st.just("ImagePositionPatient"), _ds_values(st.sampled_from([3, 3, 2, 4]))),
    st.tuples(
        st.just("text"),
        st.sampled_from(["TriggerTime", "RescaleSlope", "RescaleIntercept", "SliceThickness"]),
        _ds_values(st.just(1)),
    ),
    st.tuples(
        st.just("text"),
        st.sampled_from(["NumberOfFrames", "InstanceNumber", "SeriesNumber"]),
        st.sampled_from(["0", "1", "2", "-1", "abc", "", "99999999999"]),
    ),
    st.tuples(st.just("pixel_length"), st.just("PixelData"), st.integers(-200, 200)),
    st.tuples(st.just("syntax"), st.sampled_from(["reencode", "lie"]), st.sampled_from(_SYNTAXES)),
    st.tuples(
        st.just("delete"),
        st.sampled_from(
            ["Rows", "PixelSpacing", "ImagePositionPatient", "PixelData", "BitsAllocated", "SeriesInstanceUID"]
            + ["TriggerTime", "PhotometricInterpretation", "PixelRepresentation", "SOPClassUID"]
        ),
        st.none(),
    ),
)


def _raw_element(dataset: pydicom.Dataset, keyword: str, value: bytes) -> None:
    """Store `value` as the element's encoded bytes: pydicom would refuse to set most of these values."""
    tag = Tag(tag_for_keyword(keyword))
    if len(value) % 2:
        value += b" "
    dataset[tag] = RawDataElement(tag, dictionary_VR(tag), len(value), value, 0, False, True)


def _rewrite_meta(path: Path, syntax: str) -> None:
    """Change only the file meta's transfer syntax: the data set stays encoded as before (a lying header)."""
    raw = path.read_bytes()
    stream = io.BytesIO(raw)
    pydicom.filereader.read_preamble(stream, False)
    file_meta = pydicom.filereader._read_file_meta_info(stream)
    body = raw[stream.tell() :]
    file_meta.TransferSyntaxUID = syntax
    meta = DicomBytesIO()
    pydicom.filewriter.write_file_meta_info(meta, file_meta, enforce_standard=False)
    path.write_bytes(raw[:132] + meta.getvalue() + body)


def _mutate(path: Path, mutation: tuple[str, str, Any]) -> None:
    kind, target, value = mutation
    if kind == "syntax" and target == "lie":
        _rewrite_meta(path, value)
        return
    dataset = pydicom.dcmread(path)
    if kind == "raw":
        _raw_element(dataset, target, value)
    elif kind == "text":
        _raw_element(dataset, target, value.encode("latin-1"))
    elif kind == "pixel_length":
        pixels = dataset.PixelData or b""
        dataset.PixelData = pixels[: len(pixels) + value] if value < 0 else pixels + bytes(range(value))
    elif kind == "delete":
        if target in dataset:
            del dataset[target]
    elif kind == "syntax":
        dataset.file_meta.TransferSyntaxUID = value
    try:
        dataset.save_as(path, enforce_file_format=False)
    except Exception:  # pydicom cannot encode this combination (e.g. native pixels under a JPEG syntax): lie instead
        if kind == "syntax":
            _rewrite_meta(path, value)


@FUZZ
@given(
    changes=st.lists(
        st.tuples(st.integers(0, 5), st.lists(DICOM_MUTATIONS, min_size=1, max_size=2)), min_size=1, max_size=3
    ),
    via_read_study=st.booleans(),
)
def test_dicom_tag_mutations(workdir, base_exam, changes, via_read_study):
    folder = _fresh_dir(workdir) / "exam"
    shutil.copytree(base_exam[0].parent, folder)
    files = sorted(folder.iterdir())
    for index, mutations in changes:
        for mutation in mutations:
            try:
                _mutate(files[index], mutation)
            except Exception:  # an earlier change left pydicom unable to edit the file: it stays as damaged as it is
                pass
    reader = read_study if via_read_study else read_dicom_study
    study = _outcome(lambda: reader(folder), folder)
    if study is not None:
        _check_study(study)


@FUZZ
@given(data=st.data())
def test_dicom_byte_flips_and_truncations(workdir, data, base_exam):
    folder = _fresh_dir(workdir) / "exam"
    shutil.copytree(base_exam[0].parent, folder)
    victim = sorted(folder.iterdir())[data.draw(st.integers(0, 5), label="file")]
    raw = bytearray(victim.read_bytes())
    if data.draw(st.booleans(), label="truncate"):
        raw = raw[: data.draw(st.integers(0, len(raw) - 1), label="cut")]
    else:
        for offset, mask in data.draw(
            st.lists(st.tuples(st.integers(0, len(raw) - 1), st.integers(1, 255)), min_size=1, max_size=8),
            label="flips",
        ):
            raw[offset] ^= mask
    victim.write_bytes(bytes(raw))
    study = _outcome(lambda: read_dicom_study(folder), folder)
    if study is not None:
        _check_study(study)
