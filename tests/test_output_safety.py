"""Never lose a user's data, never mix two patients: the output-safety rule of every command that writes, study
identity, keyed pseudonyms, skipped files named, and one-line errors instead of tracebacks (cinema.io.atomic,
cinema.io.privacy, cinema.io.dicom, cinema.cli)."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import pytest
import yaml
from dicom_factory import PHI, write_cine_series
from pretrain_fixtures import tiny_pretrain_config

import cinema.io.privacy as privacy
from cinema.cli import main
from cinema.io import read_study
from cinema.io.atomic import OUTPUT_MARKER, atomic_directory, clean_stale_temporaries
from cinema.io.index import build_index, read_index, read_index_entry, write_index

REPO_ROOT = Path(__file__).resolve().parents[1]


def _tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes: the before/after picture of a user's data."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"cinema {command}: error: "), err
    return err[0]


@pytest.fixture
def user_folder(tmp_path, sunnybrook_dir):
    """The issue's reproduction: v/exam (a real DICOM cine) and v/keep_me.txt."""
    v = tmp_path / "v"
    shutil.copytree(sunnybrook_dir / "SCD0000301" / "dicom", v / "exam")
    (v / "keep_me.txt").write_text("x\n")
    return v


# -------------------------------------------------------------------------------------------------------------------
# 1. Data loss: --force never replaces a folder that holds the input, the input itself, or what cinema did not write
# -------------------------------------------------------------------------------------------------------------------


def test_analyze_into_the_folder_holding_the_exam_is_refused_even_with_force(user_folder, capsys):
    before = _tree(user_folder)
    assert main(["analyze", str(user_folder / "exam"), "-o", str(user_folder), "--force", "--quiet"]) == 2
    line = _one_error_line(capsys, "analyze")
    assert "holds the input" in line
    assert _tree(user_folder) == before


def _fail_if_model_loaded(monkeypatch):
    import cinema.analysis.segment as segment

    def unreachable(*args, **kwargs):
        raise AssertionError("the output should have been refused before any work")

    monkeypatch.setattr(segment, "load_segmentation_model", unreachable)


def _write_index(data: Path, index: Path) -> Path:
    entries, skipped = build_index([data])
    assert not skipped
    return write_index(entries, index)


@pytest.fixture
def nifti_data(tmp_path, short_cine):
    """A data folder with one SAX NIfTI cine, its index beside it, and a user's file in the data folder."""
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(short_cine, data / "case1_sax.nii.gz")
    (data / "notes.txt").write_text("mine\n")
    index = _write_index(data, tmp_path / "index.jsonl")
    return data, index


def _command(name: str, data: Path, index: Path, out: Path) -> list[str]:
    source = data / "case1_sax.nii.gz"
    return {
        "analyze": ["analyze", str(source), "-o", str(out), "--quiet"],
        "segment": ["segment", str(source), str(out)],
        "convert": ["convert", str(data), str(out)],
        "index": ["index", str(data), "-o", str(out)],
        "shard": ["shard", str(index), "-o", str(out)],
        "evaluate": ["evaluate", str(data), "-o", str(out), "--quiet"],
    }[name]


@pytest.mark.parametrize("command", ["analyze", "segment", "convert", "index", "shard", "evaluate"])
@pytest.mark.parametrize("case", ["the_input", "holds_the_input", "ancestor_of_the_input"])
def test_no_command_writes_over_its_input_or_a_folder_holding_it(
    tmp_path, nifti_data, monkeypatch, capsys, command, case
):
    data, index = nifti_data
    _fail_if_model_loaded(monkeypatch)
    source = {"shard": index}.get(command, data / "case1_sax.nii.gz" if command in ("analyze", "segment") else data)
    out = {"the_input": source, "holds_the_input": source.parent, "ancestor_of_the_input": tmp_path}[case]
    before = _tree(tmp_path)
    assert main([*_command(command, data, index, out), "--force"]) == 2
    line = _one_error_line(capsys, command)
    assert str(out) in line
    assert _tree(tmp_path) == before
    assert not [p for p in tmp_path.rglob(".tmp-*")]


@pytest.mark.parametrize("command", ["analyze", "convert", "shard", "evaluate"])
def test_force_never_replaces_a_folder_cinema_did_not_write(tmp_path, nifti_data, monkeypatch, capsys, command):
    data, index = nifti_data
    _fail_if_model_loaded(monkeypatch)
    out = tmp_path / "results"
    out.mkdir()
    (out / "thesis.docx").write_text("three years of work")
    assert main([*_command(command, data, index, out), "--force"]) == 2
    assert "not written by cinema" in _one_error_line(capsys, command)
    assert _tree(out) == {"thesis.docx": b"three years of work"}


@pytest.mark.parametrize("command", ["segment", "index"])
def test_force_never_replaces_a_file_cinema_did_not_write(tmp_path, nifti_data, monkeypatch, capsys, command):
    data, index = nifti_data
    _fail_if_model_loaded(monkeypatch)
    out = tmp_path / ("mine.nii.gz" if command == "segment" else "mine.jsonl")
    out.write_bytes(gzip.compress(b"a user's own file"))
    assert main([*_command(command, data, index, out), "--force"]) == 2
    assert "not written by this command" in _one_error_line(capsys, command)
    assert gzip.decompress(out.read_bytes()) == b"a user's own file"


def test_force_replaces_cinema_s_own_file_outputs(tmp_path, nifti_data, tiny_weights, capsys):
    data, index = nifti_data
    seg = tmp_path / "seg.nii.gz"
    segment = [*_command("segment", data, index, seg), "--weights", str(tiny_weights)]
    assert main(segment) == 0
    assert main(segment) == 2 and "use --force" in _one_error_line(capsys, "segment")
    assert main([*segment, "--force"]) == 0
    again = tmp_path / "again.jsonl"
    assert main(["index", str(data), "-o", str(again)]) == 0
    assert main(["index", str(data), "-o", str(again), "--force"]) == 0
    assert len(read_index(again)) == 1


def test_shard_force_replaces_only_its_own_earlier_output(tmp_path, nifti_data):
    data, index = nifti_data
    out = tmp_path / "shards"
    assert main(["shard", str(index), "-o", str(out)]) == 0
    assert (out / OUTPUT_MARKER).is_file()
    assert main(["shard", str(index), "-o", str(out), "--force"]) == 0
    assert _tree(data)["notes.txt"] == b"mine\n"


@pytest.mark.parametrize("command", ["finetune", "pretrain"])
def test_training_output_dir_never_holds_its_data(tmp_path, nifti_data, acdc_dir, capsys, command):
    data, index = nifti_data
    if command == "finetune":
        argv = [
            "finetune",
            str(REPO_ROOT / "configs" / "acdc_segmentation_unet2d.yaml"),
            f"data.dir={acdc_dir}",
            f"output_dir={acdc_dir.parent}",
            "--check",
        ]
        watched = acdc_dir.parent
    else:
        config = tmp_path / "pretrain.yaml"
        config.write_text(yaml.safe_dump(tiny_pretrain_config(tmp_path, {"index": str(index)})))
        argv = ["pretrain", str(config), "--quiet"]
        watched = tmp_path
    before = sorted(p.name for p in watched.iterdir())
    assert main(argv) == 2
    assert "holds the input" in _one_error_line(capsys, command)
    assert sorted(p.name for p in watched.iterdir()) == before


# -------------------------------------------------------------------------------------------------------------------
# 2. One exam = one study and one patient
# -------------------------------------------------------------------------------------------------------------------

STUDY_A, STUDY_B = "1.2.826.0.1.3680043.8.498.111", "1.2.826.0.1.3680043.8.498.222"


@pytest.fixture
def two_patients(tmp_path):
    """Two patients' SAX cines in one folder, same orientation and grid: merging them would look plausible."""
    folder = tmp_path / "mixed"
    write_cine_series(folder, n_slices=3, n_phases=4, study_uid=STUDY_A, phi={"PatientID": "P-ONE"})
    write_cine_series(
        folder,
        n_slices=2,
        n_phases=4,
        study_uid=STUDY_B,
        phi={"PatientID": "P-TWO"},
        series_number=2,
        origin=(-30.0, -200.0, 134.0),
    )
    return folder


def test_a_folder_of_two_studies_is_refused_with_the_studies_listed(two_patients, tiny_weights, tmp_path, capsys):
    with pytest.raises(ValueError, match="holds 2 studies") as raised:
        read_study(two_patients)
    message = str(raised.value)
    assert STUDY_A not in message and STUDY_B not in message and "--study" in message
    pseudonyms = [privacy.pseudonymise_uid(STUDY_A), privacy.pseudonymise_uid(STUDY_B)]
    assert all(p in message for p in pseudonyms)
    assert read_study(two_patients, study=pseudonyms[0]).sax.image.shape[2] == 3
    assert read_study(two_patients, study=pseudonyms[1]).sax.image.shape[2] == 2

    out = tmp_path / "out"
    argv = ["analyze", str(two_patients), "-o", str(out), "--weights", str(tiny_weights), "--quiet"]
    assert main(argv) == 2
    assert "holds 2 studies" in _one_error_line(capsys, "analyze") and not out.exists()
    assert main([*argv, "--study", pseudonyms[1]]) == 0
    assert nib.load(str(out / "seg_sax.nii.gz")).shape[2] == 2  # the chosen patient's two slices, nobody else's


def test_one_study_holding_two_patients_is_refused(tmp_path):
    folder = tmp_path / "odd"
    write_cine_series(folder, n_slices=2, n_phases=3, study_uid=STUDY_A, phi={"PatientID": "P-ONE"})
    write_cine_series(
        folder,
        n_slices=1,
        n_phases=3,
        study_uid=STUDY_A,
        phi={"PatientID": "P-TWO"},
        series_number=2,
        origin=(-30.0, -200.0, 126.0),
    )
    with pytest.raises(ValueError, match="2 different patients"):
        read_study(folder)


def test_index_splits_a_folder_of_two_studies_into_two_exams(two_patients, tmp_path):
    entries, skipped = build_index([two_patients])
    assert not skipped and len(entries) == 2
    assert sorted(e["views"]["sax"]["shape"][2] for e in entries) == [2, 3]
    for entry in read_index(write_index(entries, tmp_path / "index.jsonl")):
        assert read_index_entry(entry).sax.image.shape[2] in (2, 3)
        assert STUDY_A not in repr(entry) and STUDY_B not in repr(entry)


# -------------------------------------------------------------------------------------------------------------------
# 4. Privacy: keyed pseudonyms, and no UID or patient field in any output or log
# -------------------------------------------------------------------------------------------------------------------


def _identifying_values(folder: Path) -> set[str]:
    """Every UID (except the standard's own: SOP classes, transfer syntaxes) and patient field of the exam."""
    import pydicom

    values = set(PHI.values())
    for path in folder.rglob("*"):
        dataset = pydicom.dcmread(path)
        for element in [*dataset.file_meta, *dataset]:
            if element.VR == "UI" and element.value and not str(element.value).startswith("1.2.840.10008."):
                values.add(str(element.value))
    return values


def _every_output_byte(folder: Path) -> bytes:
    blob = b""
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            blob += data + (gzip.decompress(data) if data[:2] == b"\x1f\x8b" else b"")
    return blob


def test_no_uid_or_patient_field_in_any_output_or_log(tmp_path, tiny_weights, capsys):
    exam = tmp_path / "Doe_Janethrope_exam"
    write_cine_series(exam, n_slices=3, n_phases=4, series_number=1)
    # a repeated acquisition of the first slice: the reader keeps the latest and says so in a warning
    write_cine_series(exam, n_slices=1, n_phases=4, series_number=5, description="cine_sax")
    secrets_ = _identifying_values(exam)
    assert len(secrets_) > len(PHI)  # study, series, instance and frame-of-reference UIDs

    converted, analysed = tmp_path / "converted", tmp_path / "analysed"
    assert main(["convert", str(exam), str(converted)]) == 0
    assert main(["analyze", str(exam), "-o", str(analysed), "--weights", str(tiny_weights), "--quiet"]) == 0
    logs = capsys.readouterr()
    assert "kept the latest" in (converted / "study.json").read_text()
    blob = _every_output_byte(converted) + _every_output_byte(analysed) + (logs.out + logs.err).encode()
    for value in secrets_:
        assert value.encode() not in blob, value
        assert value.lower().encode() not in blob.lower(), value


def test_pseudonyms_are_keyed_per_installation(tmp_path, monkeypatch):
    uid = "1.2.826.0.1.3680043.8.498.12345"
    here = privacy.pseudonymise_uid(uid)
    assert here == privacy.pseudonymise_uid(uid) and here.startswith("uid:")
    assert hashlib.sha256(uid.encode()).hexdigest()[:20] not in here  # not re-linkable by hashing the UID
    monkeypatch.setenv("CINEMA_CONFIG_DIR", str(tmp_path / "other-installation"))
    elsewhere = privacy.pseudonymise_uid(uid)
    assert elsewhere != here
    secret = privacy.secret_path()
    assert secret.is_file() and secret.stat().st_mode & 0o077 == 0  # readable by its owner only
    secret.write_text("not hex\n")
    privacy._cache.clear()
    with pytest.raises(ValueError, match="not a pseudonym secret"):
        privacy.pseudonymise_uid(uid)


# -------------------------------------------------------------------------------------------------------------------
# 5. Skipped files are named; --skip-bad is honoured in discovery too
# -------------------------------------------------------------------------------------------------------------------


def test_index_skip_bad_covers_a_damaged_nifti_whose_name_gives_no_view(tmp_path, short_cine, capsys):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(short_cine, data / "good_sax.nii.gz")
    (data / "0042.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    out = tmp_path / "index.jsonl"
    assert main(["index", str(data), "-o", str(out)]) == 2
    assert "0042.nii.gz" in _one_error_line(capsys, "index") and not out.exists()
    assert main(["index", str(data), "-o", str(out), "--skip-bad"]) == 0
    assert "0042.nii.gz" in capsys.readouterr().err
    assert [e["id"] for e in read_index(out)] == ["data/good"]


# -------------------------------------------------------------------------------------------------------------------
# 6. One line, not a traceback, and before the work
# -------------------------------------------------------------------------------------------------------------------


def test_an_output_that_is_a_folder_is_refused_before_any_work(tmp_path, short_cine, monkeypatch, capsys):
    _fail_if_model_loaded(monkeypatch)
    folder = tmp_path / "seg.nii.gz"
    folder.mkdir()
    assert main(["segment", str(short_cine), str(folder), "--force"]) == 2
    assert "is a folder" in _one_error_line(capsys, "segment")
    index = tmp_path / "index_dir"
    index.mkdir()
    assert main(["index", str(short_cine.parent), "-o", str(index), "--force"]) == 2
    assert "is a folder" in _one_error_line(capsys, "index")


def test_an_output_folder_without_write_permission_is_one_line(tmp_path, short_cine, monkeypatch, capsys):
    _fail_if_model_loaded(monkeypatch)
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    # the tests run as root, for whom chmod does not deny anything: deny it where the check asks
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: Path(p) != locked and real_access(p, mode, **kw))
    assert main(["analyze", str(short_cine), "-o", str(locked / "out"), "--quiet"]) == 2
    assert "permission denied" in _one_error_line(capsys, "analyze")


def test_os_errors_during_the_work_are_one_line_naming_the_path(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "exam"
    write_cine_series(folder, n_slices=2, n_phases=3)
    real_scandir = os.scandir

    def denied(path="."):
        if Path(path) == folder:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", denied)
    assert main(["convert", str(folder), str(tmp_path / "out")]) == 2
    line = _one_error_line(capsys, "convert")
    assert str(folder) in line and "Permission denied" in line
    assert not (tmp_path / "out").exists()


def test_debug_shows_the_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "cinema", "convert", str(tmp_path / "nowhere"), str(tmp_path / "out"), "--debug"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "Traceback" in result.stderr
    quiet = subprocess.run(
        [sys.executable, "-m", "cinema", "convert", str(tmp_path / "nowhere"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr and len(quiet.stderr.splitlines()) == 1


def test_memory_error_is_one_readable_line(short_cine, tmp_path, monkeypatch, capsys):
    import cinema.io

    def exhausted(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(cinema.io, "read_study", exhausted)
    assert main(["analyze", str(short_cine), "-o", str(tmp_path / "out"), "--quiet"]) == 1
    assert "out of memory" in _one_error_line(capsys, "analyze")


# -------------------------------------------------------------------------------------------------------------------
# 7. A writer killed mid-way leaves a temporary that the next run removes (and never a live writer's)
# -------------------------------------------------------------------------------------------------------------------

_KILLED_WRITER = """
import os, signal, sys
from cinema.io.atomic import atomic_directory
with atomic_directory(sys.argv[1]) as tmp:
    (tmp / "half.txt").write_text("half")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_writer_killed_by_sigkill_leaves_a_temporary_the_next_run_removes(tmp_path):
    out = tmp_path / "out"
    killed = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(out)], timeout=120)
    assert killed.returncode == -signal.SIGKILL
    left = list(tmp_path.glob(".tmp-*"))
    assert len(left) == 1 and not out.exists()
    live = tmp_path / left[0].name.replace(left[0].name.split("-")[2], str(os.getpid()), 1)
    live.mkdir()  # the same pattern from a writer still running: kept
    with atomic_directory(out) as tmp:
        (tmp / "whole.txt").write_text("whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "out"])
    assert clean_stale_temporaries(out) == []
