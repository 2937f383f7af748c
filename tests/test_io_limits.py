"""Readers on lying, damaged, huge and unreadable input: memory bounded by the data, every refusal names the file.

Covers `cinema.io.limits` and its use in the NIfTI and DICOM readers: a header's claimed size checked against the
bytes the file holds and against the decoded-size cap before anything is allocated, bounded gzip and deflate
decoding, unreadable files named (never silently dropped), overflow and MemoryError messages.
"""

from __future__ import annotations

import builtins
import gzip
import io
import json
import os
import re
import subprocess
import sys
import textwrap
import warnings
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from dicom_factory import write_cine_series
from pydicom.filebase import DicomBytesIO
from pydicom.uid import DeflatedExplicitVRLittleEndian

import cinema.io.dicom as dicom_module
import cinema.io.nifti as nifti_module
from cinema.io import load_nifti, read_dicom_study, read_nifti_cine, read_study
from cinema.io.limits import MB, check_decoded_size, decoded_byte_limit, format_bytes, max_decoded_bytes

TESTS_DIR = Path(__file__).resolve().parent


def _nifti_bytes(data: np.ndarray, **fields) -> bytes:
    """Uncompressed NIfTI-1 bytes of `data` whose header fields are then overwritten (nibabel would refuse most)."""
    encoded = bytearray(nib.Nifti1Image(data, np.eye(4)).to_bytes())
    header = nib.Nifti1Header.from_fileobj(io.BytesIO(bytes(encoded)))
    for name, value in fields.items():
        header[name] = value
    encoded[: header.sizeof_hdr] = header.binaryblock
    return bytes(encoded)


def _write(path: Path, raw: bytes) -> Path:
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


def _run_measured(script: str, env: dict[str, str] | None = None) -> dict:
    """Run `script` in a fresh interpreter; it prints one JSON line. Peak RSS is per process, so isolate it."""
    completed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=TESTS_DIR,
        env={**os.environ, **(env or {})},
    )
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout.strip().splitlines()[-1])


MEASURE = """
    import json, resource, warnings
    from pathlib import Path
    {imports}
    path = Path({path!r})
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            {call}
            message, kind = None, None
        except Exception as err:
            message, kind = str(err), type(err).__name__
    peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    shown = [str(w.message) for w in caught]
    print(json.dumps({{"message": message, "kind": kind, "peak_mb": peak_mb, "warnings": shown}}))
"""


def test_limits_api():
    assert format_bytes(1000) == "1000 bytes" and format_bytes(1536) == "1.5 kB" and format_bytes(3 * MB) == "3.0 MB"
    default = max_decoded_bytes()
    with decoded_byte_limit(10 * MB):
        with decoded_byte_limit(20 * MB):  # nested blocks keep the tighter bound
            assert max_decoded_bytes() == 10 * MB
        check_decoded_size("x.nii", 10 * MB)
        with pytest.raises(ValueError, match=r"^x\.nii: .*11\.0 MB.*limit of 10\.0 MB"):
            check_decoded_size("x.nii", 11 * MB)
    assert max_decoded_bytes() == default


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("cap_mb", [None, 16384])
def test_lying_nifti_header_is_refused_in_bounded_memory(tmp_path, suffix, cap_mb):
    # 1.4 kB on disk, 4 GiB claimed: nibabel alone allocated the claim before noticing the file is short. With a cap
    # above the claim (16 GB) the refusal comes from the bytes the file holds, not from the cap.
    raw = _nifti_bytes(np.ones((4, 4, 3, 2), np.int16), dim=[4, 2048, 2048, 16, 32, 1, 1, 1])
    path = _write(tmp_path / f"liar{suffix}", raw)
    result = _run_measured(
        MEASURE.format(imports="from cinema.io import read_nifti_cine", path=str(path), call="read_nifti_cine(path)"),
        env={"CINEMA_MAX_IMAGE_MB": str(cap_mb)} if cap_mb else None,
    )
    assert result["kind"] == "InputError"
    assert result["message"].startswith(f"{path}: ")
    assert "\n" not in result["message"]
    if cap_mb:
        assert "header claims 4.0 GB of voxels (2048×2048×16×32 int16)" in result["message"]
        assert "holds only 192 bytes" in result["message"]
    else:
        assert "4.0 GB" in result["message"] and "2048×2048×16×32" in result["message"]
    assert result["peak_mb"] < 200, result


def test_nifti_over_the_cap_is_refused_naming_the_limit(acdc_dir):
    path = acdc_dir / "patient001" / "patient001_frame01.nii.gz"
    with decoded_byte_limit(1000):
        with pytest.raises(ValueError, match="limit of 1000 bytes per image file") as caught:
            read_nifti_cine(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert read_nifti_cine(path).spatial_shape == nib.load(str(path)).shape  # outside the block it reads


def test_genuine_acdc_files_read_exactly_as_nibabel_reads_them(acdc_dir):
    paths = sorted(acdc_dir.glob("patient00[1-3]/*.nii.gz"))
    assert len(paths) == 12
    for path in paths:
        data, affine, header = load_nifti(path)
        reference = nib.load(str(path))
        expected = np.asanyarray(reference.dataobj)
        assert data.dtype == expected.dtype and data.shape == expected.shape
        np.testing.assert_array_equal(data, expected)
        np.testing.assert_array_equal(affine, reference.affine)
        assert header.get_zooms() == reference.header.get_zooms()
    study = read_study(acdc_dir / "patient001")
    assert study.sax.n_frames == 2 and study.sax.labels


def test_scaled_and_big_endian_files_read_as_nibabel_reads_them(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.integers(-300, 300, size=(5, 4, 3, 2)).astype(">i2")
    for name, fields in [("scaled.nii", {"scl_slope": 0.5, "scl_inter": -7.25}), ("plain.nii.gz", {})]:
        path = _write(tmp_path / name, _nifti_bytes(data, **fields))
        loaded, affine, _ = load_nifti(path)
        expected = np.asanyarray(nib.load(str(path)).dataobj)
        assert loaded.dtype == expected.dtype
        np.testing.assert_array_equal(loaded, expected)
    nifti2 = nib.Nifti2Image(data.astype(np.float32), np.diag([1.5, 1.5, 8.0, 1.0]))
    nifti2.header.set_slope_inter(2.0, 1.0)
    path = _write(tmp_path / "two_sax.nii.gz", nifti2.to_bytes())
    loaded, affine, header = load_nifti(path)
    assert isinstance(header, nib.Nifti2Header)
    reference = nib.load(str(path))
    np.testing.assert_array_equal(loaded, np.asanyarray(reference.dataobj))
    np.testing.assert_array_equal(affine, reference.affine)


def test_gzip_stream_is_decoded_only_as_far_as_the_header_needs(tmp_path):
    # A valid image followed by 256 MB of zeros inside the same gzip stream (a few hundred kB on disk): the reader
    # stops a little past the voxels instead of inflating it all.
    raw = _nifti_bytes(np.arange(4 * 4 * 3 * 2, dtype=np.int16).reshape(4, 4, 3, 2))
    path = tmp_path / "padded_sax.nii.gz"
    compressor = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    with open(path, "wb") as out:
        out.write(compressor.compress(raw))
        zeros = bytes(MB)
        for _ in range(256):
            out.write(compressor.compress(zeros))
        out.write(compressor.flush())
    assert path.stat().st_size < 2 * MB
    result = _run_measured(
        MEASURE.format(
            imports="from cinema.io import read_nifti_cine",
            path=str(path),
            call="assert read_nifti_cine(path).image.shape == (4, 4, 3, 2)",
        )
    )
    assert result["kind"] is None, result
    assert result["peak_mb"] < 100, result


def test_truncated_and_corrupt_gzip_are_refused(tmp_path):
    raw = _nifti_bytes(np.arange(4 * 4 * 3 * 2, dtype=np.int16).reshape(4, 4, 3, 2))
    packed = gzip.compress(raw)
    (tmp_path / "cut.nii.gz").write_bytes(packed[:-4])  # every voxel is there; the CRC and size are not
    with pytest.raises(ValueError, match=r"cut\.nii\.gz: unreadable NIfTI file \(truncated gzip stream"):
        load_nifti(tmp_path / "cut.nii.gz")
    flipped = bytearray(packed)
    flipped[-8] ^= 0xFF  # the CRC no longer matches the data
    (tmp_path / "crc.nii.gz").write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match=r"crc\.nii\.gz: unreadable NIfTI file \(corrupt gzip stream"):
        load_nifti(tmp_path / "crc.nii.gz")
    # Several gzip members (bgzip, pigz --independent) are one stream.
    (tmp_path / "members.nii.gz").write_bytes(gzip.compress(raw[:500]) + gzip.compress(raw[500:]))
    np.testing.assert_array_equal(
        load_nifti(tmp_path / "members.nii.gz")[0],
        np.asanyarray(nib.load(str(_write(tmp_path / "same.nii", raw))).dataobj),
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"dim": [0, 4, 4, 3, 2, 1, 1, 1]}, r"dim\[0\] = 0 is not a number of dimensions \(1 to 7\)"),
        ({"dim": [8, 4, 4, 3, 2, 1, 1, 1]}, r"dim\[0\] = 8 is not a number of dimensions"),
        ({"dim": [-3, 4, 4, 3, 2, 1, 1, 1]}, r"dim\[0\] = -3"),
        ({"dim": [4, 4, 0, 3, 2, 1, 1, 1]}, r"dim\[2\] = 0; every axis needs at least one voxel"),
        ({"dim": [4, 4, 4, -3, 2, 1, 1, 1]}, r"dim\[3\] = -3"),
        ({"vox_offset": 0}, r"vox_offset 0 points inside the header"),
        ({"vox_offset": np.nan}, r"vox_offset nan points inside the header"),
        ({"magic": b"ni1"}, r"NIfTI pair header"),
        ({"magic": b"xyz"}, r"not a NIfTI file \(magic"),
        ({"sizeof_hdr": 1234}, r"not a NIfTI file \(header size field"),
        ({"scl_slope": 2.0, "scl_inter": np.inf}, r"scl_inter inf is not finite"),
        ({"datatype": 1234}, r"unreadable NIfTI file|unsupported NIfTI datatype"),
    ],
)
def test_absurd_headers_get_one_clear_message(tmp_path, fields, message):
    path = _write(tmp_path / "bad_sax.nii.gz", _nifti_bytes(np.ones((4, 4, 3, 2), np.int16), **fields))
    with pytest.raises(ValueError, match=message) as caught:
        read_nifti_cine(path)
    assert str(caught.value).startswith(f"{path}: ") and "\n" not in str(caught.value)


def test_short_files_are_named(tmp_path):
    (tmp_path / "empty.nii").write_bytes(b"")
    (tmp_path / "tiny.nii.gz").write_bytes(gzip.compress(b"\x5c\x01\x00\x00 hello"))
    for path in (tmp_path / "empty.nii", tmp_path / "tiny.nii.gz"):
        with pytest.raises(
            ValueError, match=rf"^{re.escape(str(path))}: not a NIfTI file \(\d+ bytes, (too short|shorter)"
        ):
            load_nifti(path)


def _deny(monkeypatch, module, victim: Path) -> list[Path]:
    """Make `victim` unreadable for `module` as the OS would (mode 000 does not stop root, who runs CI)."""
    denied: list[Path] = []
    real_open = builtins.open

    def guarded_open(file, *args, **kwargs):
        if Path(file) == victim:
            denied.append(victim)
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    os.chmod(victim, 0)  # enough on its own for a non-root user
    monkeypatch.setattr(module, "open", guarded_open, raising=False)
    return denied


def test_unreadable_dicom_file_is_named_not_dropped(tmp_path, monkeypatch):
    files = write_cine_series(tmp_path, n_slices=1, n_phases=20, view="lax_4c")
    victim = sorted(files)[7]
    denied = _deny(monkeypatch, dicom_module, victim)
    with pytest.raises(ValueError) as caught:
        read_dicom_study(tmp_path)  # before: read with 19 of 20 phases, the file never named
    assert str(caught.value) == f"{victim}: cannot read: permission denied"
    assert denied == [victim]
    monkeypatch.undo()
    os.chmod(victim, 0o644)
    assert read_dicom_study(tmp_path).view("lax_4c").n_frames == 20


def test_unreadable_nifti_file_is_named(tmp_path, monkeypatch):
    path = _write(tmp_path / "sax.nii.gz", _nifti_bytes(np.ones((4, 4, 3, 2), np.int16)))
    denied = _deny(monkeypatch, nifti_module, path)
    for reader in (load_nifti, read_nifti_cine, read_study):
        with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: cannot read: permission denied$"):
            reader(path)
    assert denied


def _no_warnings(call):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            call()
        finally:
            assert [str(w.message) for w in caught] == []


@pytest.mark.parametrize(
    ("data", "fields", "message"),
    [
        (
            np.array([3e38, -3e38] * 24, np.float32).reshape(4, 4, 3),
            {"scl_slope": 2.0},
            r"voxel values reach ±6e\+38 after applying the header's scaling \(scl_slope 2, scl_inter 0\), beyond "
            r"float32's range .* overflow",
        ),
        (
            np.full((4, 4, 3), 30000, np.int16),
            {"scl_slope": 1e38},
            r"voxel values reach ±3e\+42 after applying the header's scaling .*float32",
        ),
        (
            np.full((4, 4, 3), np.inf, np.float32),
            {},
            r"voxel values are not finite \(NaN or ±inf\)$",
        ),
        (
            np.full((4, 4, 3), np.nan, np.float32),
            {"scl_slope": 2.0},
            r"voxel values are not finite \(NaN or ±inf\) after applying the header's scaling \(scl_slope 2",
        ),
        (
            np.array([3e38, -3e38] * 24, np.float32).reshape(4, 4, 3),
            {},
            r"sax image values reach ±3e\+38, too close to float32's limit .* differences between them",
        ),
    ],
)
def test_extreme_values_give_one_line_naming_the_file_and_no_numpy_warnings(tmp_path, data, fields, message):
    path = _write(tmp_path / "extreme_sax.nii.gz", _nifti_bytes(data, **fields))

    def read():
        with pytest.raises(ValueError, match=message) as caught:
            read_study(path)
        assert str(caught.value).startswith(f"{path}: ") and "\n" not in str(caught.value)

    _no_warnings(read)


def test_memory_error_names_the_file_and_the_size(tmp_path, monkeypatch):
    path = _write(tmp_path / "sax.nii.gz", _nifti_bytes(np.ones((40, 40, 3, 2), np.int16), scl_slope=2.0))

    def no_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(nifti_module, "apply_read_scaling", no_memory)
    with pytest.raises(ValueError, match=r"not enough memory for the scaled voxel values \(75\.0 kB\)") as caught:
        read_nifti_cine(path)
    assert str(caught.value).startswith(f"{path}: ")

    exam = tmp_path / "exam"
    write_cine_series(exam, n_slices=2, n_phases=2)
    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(lambda self: no_memory()))
    with pytest.raises(ValueError, match=r"not enough memory for the decoded pixel data \(384 bytes\)") as caught:
        read_dicom_study(exam)
    assert str(caught.value).startswith(str(exam))


def _deflate(paths: list[Path]) -> None:
    for path in paths:
        dataset = pydicom.dcmread(path)
        dataset.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        dataset.save_as(path, enforce_file_format=True)


def test_deflated_dicom_reads_like_the_uncompressed_exam(tmp_path):
    write_cine_series(tmp_path / "plain", n_slices=3, n_phases=4, seed=3)
    deflated = write_cine_series(tmp_path / "deflated", n_slices=3, n_phases=4, seed=3)
    _deflate(deflated)
    assert pydicom.dcmread(deflated[0]).file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    expected, got = read_dicom_study(tmp_path / "plain").sax, read_dicom_study(tmp_path / "deflated").sax
    np.testing.assert_array_equal(got.image, expected.image)
    np.testing.assert_array_equal(got.affine, expected.affine)


def test_deflate_bomb_is_refused_at_the_cap(tmp_path):
    files = write_cine_series(tmp_path, n_slices=2, n_phases=2, rows=1024, columns=1024, values=_zeros)
    _deflate(files)
    assert max(path.stat().st_size for path in files) < 8000  # 2 MB of pixels each
    with decoded_byte_limit(MB):
        with pytest.raises(ValueError, match=r"deflated DICOM data set inflates to more than the limit of 1\.0 MB"):
            read_dicom_study(tmp_path)


def _zeros(k: int, t: int, rows: int, columns: int) -> np.ndarray:
    return np.zeros((rows, columns), np.uint16)


def test_large_deflate_bomb_is_refused_in_bounded_memory(tmp_path):
    # One small file whose pixel data inflates to 512 MB: pydicom alone inflates all of it in one call.
    files = write_cine_series(tmp_path, n_slices=1, n_phases=1)
    dataset = pydicom.dcmread(files[0])
    dataset.Rows, dataset.Columns = 16384, 16384
    del dataset.PixelData
    plain = io.BytesIO()
    dataset.save_as(plain, enforce_file_format=True)  # explicit VR little endian, as a deflated body is inside
    plain.seek(0)
    pydicom.filereader.read_preamble(plain, False)
    pydicom.filereader._read_file_meta_info(plain)
    body = plain.read()
    dataset.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    meta = DicomBytesIO()
    pydicom.filewriter.write_file_meta_info(meta, dataset.file_meta)
    pixel_bytes = 16384 * 16384 * 2
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    with open(files[0], "wb") as out:
        out.write(b"\0" * 128 + b"DICM" + meta.getvalue())
        out.write(compressor.compress(body + b"\xe0\x7f\x10\x00OW\0\0" + pixel_bytes.to_bytes(4, "little")))
        zeros = bytes(4 * MB)
        for _ in range(pixel_bytes // len(zeros)):
            out.write(compressor.compress(zeros))
        out.write(compressor.flush())
    assert files[0].stat().st_size < 2 * MB
    result = _run_measured(
        MEASURE.format(
            imports="from cinema.io import read_dicom_study\n    from cinema.io.limits import decoded_byte_limit, MB",
            path=str(tmp_path),
            call="with decoded_byte_limit(64 * MB):\n                read_dicom_study(path)",
        )
    )
    assert result["kind"] == "InputError"
    assert result["message"].startswith(f"{files[0]}: the deflated DICOM data set inflates to more than the limit")
    assert result["peak_mb"] < 200, result


def test_dicom_pixel_size_is_checked_before_decoding(tmp_path):
    files = write_cine_series(tmp_path, n_slices=2, n_phases=2)
    victim = sorted(files)[0]
    dataset = pydicom.dcmread(victim)
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 8, 8, 7  # 16-bit data read as 8-bit: sheared
    dataset.save_as(victim, enforce_file_format=True)
    with pytest.raises(ValueError, match=r"pixel data holds 384 bytes, but .* = 16 × 12 × 1 × 8/8 = 192") as caught:
        read_dicom_study(tmp_path)
    assert str(caught.value).startswith(f"{victim}: ")
    for path in files:  # every image of the stack claims the size, so the stack's grid is consistent
        dataset = pydicom.dcmread(path)
        dataset.Rows, dataset.Columns = 65535, 65535
        dataset.save_as(path, enforce_file_format=True)
    with decoded_byte_limit(MB):
        with pytest.raises(ValueError, match=r"pixel data \(65535 rows × 65535 columns × 16 bits\) would take 8\.0 GB"):
            read_dicom_study(tmp_path)


def test_damaged_dicom_element_is_named_and_a_damaged_private_one_ignored(tmp_path):
    files = write_cine_series(tmp_path, n_slices=2, n_phases=2)
    for path in files:  # a vendor element whose VR a flipped byte made unknown: never read here, so dropped
        dataset = pydicom.dcmread(path)
        dataset.add_new(0x00091010, "LO", "vendor")
        dataset.save_as(path, enforce_file_format=True)
        raw = bytearray(path.read_bytes())
        at = raw.index(b"\x09\x00\x10\x10LO")
        raw[at + 4 : at + 6] = b"XQ"
        path.write_bytes(bytes(raw))
    assert read_dicom_study(tmp_path).sax.image.shape == (12, 16, 2, 2)
    victim = sorted(files)[1]
    raw = bytearray(victim.read_bytes())
    at = raw.index(b"\x08\x00\x18\x00UI")  # SOPInstanceUID, read later by the study assembly
    raw[at + 4 : at + 6] = b"TI"
    victim.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"unreadable DICOM element \(0008,0018\) \(Unknown Value Representation"):
        read_dicom_study(tmp_path)
