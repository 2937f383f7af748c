"""`cinema convert`: real Sunnybrook round trip, privacy, atomic output, refusal and bad-input exit status."""

from __future__ import annotations

import contextlib
import gzip
import io
import json

import nibabel as nib
import numpy as np
import pytest
from dicom_factory import PHI, write_cine_series
from test_io_sunnybrook import EXAMS, assert_matches_dicom, dicom_headers

import cinema.cli as cli
from cinema.io import read_study, read_sunnybrook_contours


def run_cli(*argv: str) -> tuple[int, str, str]:
    """`cinema convert ...` through the real dispatcher."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["convert", *map(str, argv)])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def converted(sunnybrook_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("sunnybrook")
    results = {}
    for name in EXAMS:
        code, stdout, stderr = run_cli(sunnybrook_dir / name / "dicom", root / name)
        assert code == 0, stderr
        results[name] = root / name
    return results


@pytest.mark.parametrize("name", EXAMS)
def test_sunnybrook_convert_round_trip_keeps_every_voxel_in_place(converted, sunnybrook_dir, name):
    out = converted[name]
    assert sorted(p.name for p in out.iterdir()) == [".cinema-output", "sax.nii.gz", "study.json"]
    stored = nib.load(str(out / "sax.nii.gz"))
    n_slices = stored.shape[2]
    assert stored.shape == (256, 256, n_slices, 20) and n_slices in (10, 11)
    assert float(stored.header.get_zooms()[2]) == pytest.approx(8.0, abs=0.01)
    content = json.loads((out / "study.json").read_text())
    entry = content["views"]["sax"]
    assert entry["spacing_mm"][2] == pytest.approx(8.0, abs=0.01) and entry["n_frames"] == 20
    assert len(entry["frame_times_ms"]) == 20 and entry["orientation"] == "".join(nib.aff2axcodes(stored.affine))
    series = content["metadata"]["series"]
    assert len(series) == 1 and series[0]["used_as"] == "sax" and series[0]["series_instance_uid"]

    headers = dicom_headers(sunnybrook_dir / name)
    # World coordinates from the NIfTI header itself (float32 sform) and from the re-read Study both agree with
    # the DICOM ImagePositionPatient / ImageOrientationPatient of every image to < 1e-3 mm.
    image = np.asanyarray(stored.dataobj)
    assert_matches_dicom(stored.affine, image, headers)
    study = read_study(out)
    assert study.sax.frame_times_ms == entry["frame_times_ms"]
    assert_matches_dicom(study.sax.affine, study.sax.image, headers)

    # Every contoured DICOM image is found, pixel-identical, in the converted study.
    contours = read_sunnybrook_contours(sunnybrook_dir / name, study)
    assert len(contours) == len(list((sunnybrook_dir / name / "contours" / "i-contours").glob("*.txt")))


def _all_output_bytes(folder):
    chunks = []
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            chunks.append(data)
            if path.name.endswith(".gz"):
                chunks.append(gzip.decompress(data))
    return b"".join(chunks)


def _phi_variants():
    for value in PHI.values():
        yield value
        yield from (part for part in value.replace("^", " ").split() if len(part) > 4)


def test_no_phi_in_outputs_or_logs_unless_keep_phi(tmp_path):
    exam = tmp_path / "Doe_Janethrope_exam"  # identifying folder names must not leak either
    write_cine_series(exam, n_slices=3, n_phases=4)
    write_cine_series(exam, view="lax_4c", series_number=2)
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(exam, out)
    assert code == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == [".cinema-output", "lax_4c.nii.gz", "sax.nii.gz", "study.json"]
    blob = _all_output_bytes(out) + stdout.encode() + stderr.encode()
    for text in _phi_variants():
        assert text.encode() not in blob, text
        assert text.lower().encode() not in blob.lower(), text
    for path in out.glob("*.nii.gz"):
        header = nib.load(str(path)).header
        for field in ("descrip", "db_name", "aux_file", "intent_name"):
            assert header[field].item() == b""

    kept = tmp_path / "kept"
    code, _, stderr = run_cli(exam, kept, "--keep-phi")
    assert code == 0, stderr
    patient = json.loads((kept / "study.json").read_text())["metadata"]["patient"]
    assert patient["PatientName"] == PHI["PatientName"] and patient["AccessionNumber"] == PHI["AccessionNumber"]
    assert PHI["PatientID"].encode() not in b"".join(gzip.decompress(p.read_bytes()) for p in kept.glob("*.gz"))


def test_refuses_non_empty_out_dir_and_force_replaces(tmp_path):
    exam = tmp_path / "exam"
    write_cine_series(exam, n_slices=2, n_phases=3)
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    code, _, stderr = run_cli(exam, out)
    assert code == 2 and "not empty" in stderr and "--force" in stderr
    assert (out / "precious.txt").read_text() == "keep me"
    code, _, stderr = run_cli(exam, out, "--force")
    assert code == 2 and "not written by cinema" in stderr  # --force never replaces a user's folder
    assert sorted(p.name for p in out.iterdir()) == ["precious.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_cli(exam, empty)[0] == 0  # an existing empty folder is fine
    code, _, stderr = run_cli(exam, empty, "--force")  # ... and an earlier output of convert may be replaced
    assert code == 0, stderr
    assert sorted(p.name for p in empty.iterdir()) == [".cinema-output", "sax.nii.gz", "study.json"]
    code, _, stderr = run_cli(exam, exam, "--force")
    assert code == 2 and "is the input" in stderr


def _bad_exam(tmp_path, kind):
    exam = tmp_path / "exam"
    if kind == "truncated":
        files = write_cine_series(exam, n_phases=3)
        files[2].write_bytes(files[2].read_bytes()[:700])
    elif kind == "single_phase":
        write_cine_series(exam, n_phases=1)
    elif kind == "gaps":
        write_cine_series(exam, n_slices=4, n_phases=3, slice_spacing=[8.0, 12.0, 8.0])
    elif kind == "zero_spacing":
        write_cine_series(exam, n_phases=3, pixel_spacing=(0.0, 1.0))
    elif kind == "no_cine":
        exam.mkdir()
        (exam / "report.pdf").write_bytes(b"%PDF-1.4")
    return exam


@pytest.mark.parametrize("kind", ["truncated", "single_phase", "gaps", "zero_spacing", "no_cine"])
@pytest.mark.parametrize("existing", [False, True])
def test_bad_input_fails_cleanly_and_writes_nothing(tmp_path, kind, existing):
    exam = _bad_exam(tmp_path, kind)
    out = tmp_path / "out"
    if existing:  # an earlier cinema output, which --force may replace, but only by a complete new one
        out.mkdir()
        (out / "old.txt").write_text("previous run")
        (out / ".cinema-output").write_text("{}")
    code, stdout, stderr = run_cli(exam, out, "--force")
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cinema convert: error: ") and str(exam) in lines[0]
    if existing:
        assert sorted(p.name for p in out.iterdir()) == [".cinema-output", "old.txt"]
    else:
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == (["exam", "out"] if existing else ["exam"])


def test_failure_while_writing_leaves_nothing(tmp_path, monkeypatch):
    exam = tmp_path / "exam"
    write_cine_series(exam, n_slices=2, n_phases=3)
    write_cine_series(exam, view="lax_2c", series_number=2)
    calls = []

    def failing_nifti_bytes(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise ValueError("simulated disk failure")
        return real(*args, **kwargs)

    import cinema.io.study_folder as study_folder

    real = study_folder.nifti_bytes
    monkeypatch.setattr(study_folder, "nifti_bytes", failing_nifti_bytes)
    code, _, stderr = run_cli(exam, tmp_path / "out")
    assert code == 1 and "simulated disk failure" in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exam"]
