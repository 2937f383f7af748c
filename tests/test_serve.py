"""`cinema serve`: the page in a real headless browser (Debian's chromium through Playwright), hostile uploads and
requests, job folders and clean-up, and no patient fields in pages or logs.

Two in-process servers on free ports: `server` with the shipped model and roomy limits (real analyses), `strict`
with tiny limits and a model that must never be called (every upload there is refused or fails before the model).
"""

from __future__ import annotations

import gzip
import http.client
import io
import json
import logging
import os
import signal
import stat
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import warnings
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from browser import launch, sync_playwright_or_skip
from dicom_factory import PHI, write_cine_series

from cinema.analysis.analyze import OUTPUT_FILES, example_study_path
from cinema.cli import build_parser, main
from cinema.serve import DEFAULT_HOST, Limits, ServeSettings, find_exam, is_loopback, make_server, unpack_upload
from cinema.serve.upload import MB

ANALYSIS_WAIT_S = 600  # a guard against a hung job, not a performance requirement
EXAM_FOLDER = "Doe_Janethrope_cine"  # a folder name carrying a patient name, as real exports often do


class NeverCalledModel:
    """Stands in for the network on the strict server: any use of it is a test failure."""

    def __getattr__(self, name):
        raise AssertionError(f"the model was used ({name}) for an upload that should have been refused")


def _start(settings: ServeSettings, model=None):
    server = make_server(settings, model=model)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


def _stop(server, thread) -> None:
    server.shutdown()
    thread.join()
    server.server_close()


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("serve")


@pytest.fixture(scope="module")
def server(work_dir):
    settings = ServeSettings(
        port=0, limits=Limits(max_upload_bytes=64 * MB, max_unpacked_bytes=256 * MB), work_dir=str(work_dir)
    )
    server, thread = _start(settings)
    yield server
    _stop(server, thread)
    assert not server.root.exists()  # every job folder went with the server


@pytest.fixture(scope="module")
def strict(work_dir):
    limits = Limits(max_upload_bytes=1 * MB, max_unpacked_bytes=2 * MB, max_members=10)
    settings = ServeSettings(port=0, limits=limits, work_dir=str(work_dir))
    server, thread = _start(settings, model=NeverCalledModel())
    yield server
    _stop(server, thread)


# -------------------------------------------------------------------------------------------------------------------
# Helpers
# -------------------------------------------------------------------------------------------------------------------


def _request(server, method: str, path: str, body: bytes | None = None, headers: dict | list | None = None):
    """(status, headers, body bytes) for a raw request: http.client sends the path exactly as given.

    `headers`: a dict, or a list of (name, value) pairs to send a header twice."""
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=60)
    try:
        items = list((headers or {}).items()) if not isinstance(headers, list) else headers
        names = {name for name, _ in items}
        connection.putrequest(method, path, skip_host="Host" in names, skip_accept_encoding=True)
        if body is not None and "Content-Length" not in names:
            items.append(("Content-Length", str(len(body))))
        for name, value in items:
            connection.putheader(name, value)
        connection.endheaders()
        if body:
            connection.send(body)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def _post(server, body: bytes, **headers):
    status, _, data = _request(server, "POST", "/jobs", body, headers)
    return status, json.loads(data)


def _get_json(server, path: str):
    status, _, data = _request(server, "GET", path)
    assert status == 200, (path, status, data[:200])
    return json.loads(data)


def _wait(server, job_id: str) -> dict:
    deadline = time.monotonic() + ANALYSIS_WAIT_S
    while time.monotonic() < deadline:
        job = _get_json(server, f"/jobs/{job_id}")
        if job["status"] in ("done", "failed"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not finish within {ANALYSIS_WAIT_S} s")


def _zip(members) -> bytes:
    """A zip from (name or ZipInfo, bytes) pairs."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns about the duplicate names some tests plant
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, data in members:
                archive.writestr(name, data)
    return buffer.getvalue()


def _folder_zip(folder: Path, prefix: str) -> bytes:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return _zip([(f"{prefix}/{p.relative_to(folder).as_posix()}", p.read_bytes()) for p in files])


def _jobs_on_disk(server) -> set[str]:
    return {p.name for p in server.root.iterdir()}


@pytest.fixture(scope="module")
def dicom_job(server, tmp_path_factory):
    """A small synthetic DICOM exam with planted patient fields, zipped in a patient-named folder, analysed once."""
    exam = tmp_path_factory.mktemp("exam") / EXAM_FOLDER
    write_cine_series(exam, n_slices=4, n_phases=5, rows=40, columns=36)
    status, reply = _post(server, _folder_zip(exam, EXAM_FOLDER))
    assert status == 202, reply
    return _wait(server, reply["id"])


# -------------------------------------------------------------------------------------------------------------------
# Binding and the command line
# -------------------------------------------------------------------------------------------------------------------


def test_binds_to_loopback_unless_told_otherwise(server):
    assert DEFAULT_HOST == "127.0.0.1" and ServeSettings().host == "127.0.0.1"
    args = build_parser().parse_args(["serve"])
    assert args.host == "127.0.0.1" and args.port == 8765
    assert server.server_address[0] == "127.0.0.1"
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("[::1]")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.20") and not is_loopback("evil.example")


def test_bad_options_are_one_line_errors(capsys):
    assert main(["serve", "--port", "70000"]) == 2
    assert capsys.readouterr().err.strip() == "cinema serve: error: --port must be 0..65535, got 70000"
    assert main(["serve", "--max-upload-mb", "0"]) == 2
    assert "--max-upload-mb must be >= 1" in capsys.readouterr().err


def test_cinema_serve_prints_its_address_and_cleans_up_on_sigterm(tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # where the server makes its temporary folder
    command = [sys.executable, "-m", "cinema", "serve", "--port", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = process.stdout.readline()
        assert line.startswith("CineMA is serving on http://127.0.0.1:"), line + process.stderr.read()
        url = line.split()[4]
        assert [p.name.startswith("cinema-serve-") for p in tmp_path.iterdir()] == [True]
        with urllib.request.urlopen(url, timeout=60) as response:
            assert response.status == 200 and b'id="lv-ef"' in response.read()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
    assert process.returncode == 0
    assert list(tmp_path.iterdir()) == []  # the server's folder and every job folder went


# -------------------------------------------------------------------------------------------------------------------
# Hostile uploads (strict server: tiny limits, a model that must not be reached)
# -------------------------------------------------------------------------------------------------------------------


def _assert_refused(server, body: bytes, expected: str, code: int = 400) -> None:
    before = _jobs_on_disk(server)
    status, reply = _post(server, body)
    assert status == code, reply
    assert expected in reply["error"], reply
    assert _jobs_on_disk(server) == before  # the refused job's folder is gone already


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("../../../evil.txt", "'..' component"),
        ("exam/../../../../evil.txt", "'..' component"),
        ("..\\..\\..\\evil.txt", "'..' component"),
        ("/tmp/evil.txt", "absolute path"),
        ("C:/evil.txt", "drive letter"),
    ],
)
def test_zip_slip_members_are_refused(strict, work_dir, name, expected):
    body = _zip([("exam/IM0001.dcm", b"harmless"), (name, b"pwned")])
    _assert_refused(strict, body, expected)
    assert not list(work_dir.parent.rglob("evil.txt"))
    assert not Path("/tmp/evil.txt").exists()


def test_symlink_and_special_members_are_refused(strict, work_dir):
    link = zipfile.ZipInfo("exam/passwd")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    _assert_refused(strict, _zip([(link, b"/etc/passwd")]), "is a symbolic link")
    fifo = zipfile.ZipInfo("exam/pipe")
    fifo.external_attr = (stat.S_IFIFO | 0o644) << 16
    _assert_refused(strict, _zip([(fifo, b"")]), "not a regular file or folder")
    assert not [p for p in work_dir.rglob("*") if p.is_symlink()]


def test_oversized_upload_is_refused_from_its_headers(strict):
    # 10 GB announced and nothing sent: an answer at all proves the server did not wait for the body.
    status, _, data = _request(strict, "POST", "/jobs", headers={"Content-Length": str(10 * 2**30)})
    assert status == 413
    assert json.loads(data)["error"] == "the upload is 10.0 GB; the limit is 1.0 MB"
    status, _, data = _request(strict, "POST", "/jobs", headers={"Transfer-Encoding": "chunked"})
    assert status == 411


def test_zip_and_gzip_bombs_are_refused(strict):
    zeros = bytes(3 * MB)  # compresses to a few kB, unpacks past the 2 MB limit
    _assert_refused(strict, _zip([("exam/big.dcm", zeros)]), "unpacks to more than the 2 MB limit")
    # Many small members that together declare too much: refused before anything is written.
    parts = [(f"exam/{i}.dcm", bytes(MB // 2 + 1)) for i in range(5)]
    _assert_refused(strict, _zip(parts), "unpacks to more than the 2 MB limit")
    _assert_refused(strict, _zip([(f"exam/{i}.dcm", b"x") for i in range(11)]), "11 members; the limit is 10")

    nifti_bomb = gzip.compress(bytes(3 * MB), compresslevel=1)
    _assert_refused(strict, nifti_bomb, "decompresses to more than the 2 MB limit")  # a single .nii.gz upload
    _assert_refused(strict, _zip([("exam/sax.nii.gz", nifti_bomb)]), "unpacks to more than the 2 MB limit")


def test_zip_with_lying_sizes_is_refused(strict):
    """Headers that declare 10 bytes for a 100 kB member: the bytes actually produced are what counts."""
    data = bytearray(_zip([("exam/IM0001.dcm", bytes(range(256)) * 400)]))
    local = data.index(b"PK\x03\x04")
    central = data.index(b"PK\x01\x02")
    struct.pack_into("<I", data, local + 22, 10)  # uncompressed size in the local header
    struct.pack_into("<I", data, central + 24, 10)  # and in the central directory
    _assert_refused(strict, bytes(data), "archive member 1 is corrupt")


def test_uploads_that_are_not_exams_are_refused(strict):
    _assert_refused(strict, os.urandom(4096), "neither a zip archive nor a NIfTI file")
    _assert_refused(strict, b"PK\x03\x04 not really a zip", "not a readable zip archive")
    _assert_refused(strict, b"\x1f\x8bnot gzip at all", "gzip upload is corrupt")
    _assert_refused(strict, _zip([("exam/", b"")]), "holds no files")
    status, _, data = _request(strict, "POST", "/jobs", b"")
    assert status == 400 and json.loads(data)["error"] == "the upload is empty"
    duplicate = _zip([("exam/a.dcm", b"1"), ("exam/a.dcm", b"2")])
    _assert_refused(strict, duplicate, "member 2 repeats the path of an earlier member")


def test_a_zip_without_an_exam_fails_with_a_message_naming_no_file(strict, caplog):
    """It unpacks fine, so it becomes a job; the reader's error must not quote the archive's names."""
    caplog.set_level(logging.DEBUG)
    status, reply = _post(strict, _zip([(f"{EXAM_FOLDER}/notes_Janethrope.txt", b"not an image")]))
    assert status == 202, reply
    job = _wait(strict, reply["id"])
    assert job["status"] == "failed"
    assert "no DICOM files found" in job["error"]
    logged = "\n".join(record.getMessage() for record in caplog.records)
    for text in (job["error"], logged):
        assert "Janethrope" not in text and "Doe_" not in text and str(strict.root) not in text
    assert not strict.jobs.get(reply["id"]).input.exists()  # the unpacked upload is gone once its analysis ended


# -------------------------------------------------------------------------------------------------------------------
# Requests that try to reach anything but the page and a job's outputs
# -------------------------------------------------------------------------------------------------------------------


def test_page_is_served_with_a_strict_policy(server):
    status, headers, body = _request(server, "GET", "/")
    assert status == 200 and b'id="lv-ef"' in body and b'id="exam-file"' in body
    assert "script-src 'self'" in headers["Content-Security-Policy"] and headers["X-Frame-Options"] == "DENY"
    assert headers["X-Content-Type-Options"] == "nosniff" and "Python" not in headers["Server"]
    for asset, kind in (("/app.js", "text/javascript"), ("/app.css", "text/css")):
        status, headers, _ = _request(server, "GET", asset)
        assert status == 200 and headers["Content-Type"].startswith(kind)


def test_paths_outside_the_served_pages_are_refused(server, dicom_job):
    job = dicom_job["id"]
    refused = {
        f"/jobs/{job}/../../../../etc/passwd": 400,
        f"/jobs/{job}/%2e%2e/%2e%2e/%2e%2e/etc/passwd": 400,
        f"/jobs/{job}/..%2f..%2f..%2fetc%2fpasswd": 400,
        f"/jobs/{job}/%2fetc%2fpasswd": 400,
        f"/jobs/{job}/..%5c..%5cetc%5cpasswd": 400,
        "/%2e%2e/%2e%2e/etc/passwd": 400,
        "/../../../etc/passwd": 400,
        "/etc/passwd": 404,
        f"/jobs/{job}/": 404,  # no listing of the output folder
        f"/jobs/{job}/input": 404,
        f"/jobs/{job}/upload.bin": 404,
        f"/jobs/{job}/report.html/x": 404,
        "/jobs/": 404,
        "/jobs/not-a-real-job-id-at-all/report.html": 404,
        "/cinema/serve/server.py": 404,
    }
    for path, code in refused.items():
        status, _, body = _request(server, "GET", path)
        assert status == code, (path, status)
        assert b"root:" not in body and b"import" not in body, path


def test_links_planted_in_a_job_folder_are_not_followed(server, dicom_job):
    out = server.jobs.get(dicom_job["id"]).out
    (out / "passwd").symlink_to("/etc/passwd")
    try:
        status, _, body = _request(server, "GET", f"/jobs/{dicom_job['id']}/passwd")
        assert status == 404 and b"root:" not in body
    finally:
        (out / "passwd").unlink()


def test_requests_from_other_sites_are_refused(server):
    status, _, _ = _request(server, "GET", "/", headers={"Host": "evil.example:8765"})  # DNS rebinding
    assert status == 403
    host, port = server.server_address[:2]
    status, _, _ = _request(server, "GET", "/", headers=[("Host", f"{host}:{port}"), ("Host", "evil.example")])
    assert status == 400  # two Host headers: ambiguous, refused
    status, reply = _post(server, b"PK\x05\x06" + bytes(18), Origin="http://evil.example")  # cross-site upload
    assert status == 403 and reply["error"] == "cross-origin requests are refused"


# -------------------------------------------------------------------------------------------------------------------
# A real job: outputs, no patient fields anywhere, clean-up
# -------------------------------------------------------------------------------------------------------------------


def test_dicom_job_outputs_carry_no_patient_fields(server, dicom_job, caplog):
    assert dicom_job["status"] == "done", dicom_job
    job_id = dicom_job["id"]
    metrics = _get_json(server, f"/jobs/{job_id}/metrics.json")
    expected = "n/a" if metrics["lv_ef_pct"] is None else f"{metrics['lv_ef_pct']:.1f}"
    assert dicom_job["summary"]["lv_ef_pct"] == expected
    assert set(dicom_job["files"]) == set(OUTPUT_FILES)
    status, headers, report = _request(server, "GET", dicom_job["report_url"])
    assert status == 200 and b"LV ejection" in report
    assert headers["Content-Security-Policy"].startswith("default-src 'none'")  # no scripts, no requests
    status, headers, _ = _request(server, "GET", f"/jobs/{job_id}/seg_sax.nii.gz")
    assert status == 200 and headers["Content-Disposition"] == 'attachment; filename="seg_sax.nii.gz"'

    caplog.set_level(logging.DEBUG)
    _get_json(server, f"/jobs/{job_id}")  # a logged request, for the log check below
    volumes = _request(server, "GET", dicom_job["files"]["volumes.csv"])[2].decode()
    pages = [json.dumps(dicom_job), report.decode(), json.dumps(metrics), volumes]
    logged = "\n".join(record.getMessage() for record in caplog.records)
    for text in [*pages, logged]:
        for value in [*PHI.values(), EXAM_FOLDER, "Janethrope", str(server.root)]:
            assert value not in text

    job = server.jobs.get(job_id)
    assert not job.input.exists() and not job.upload.exists() and job.out.is_dir()


def test_single_nifti_upload_is_analysed(server, tmp_path):
    """A gzipped 4-D NIfTI (three frames of the bundled exam) as the whole upload: recognised by content, not name."""
    sax = nib.load(example_study_path() / "sax.nii.gz")
    cine = nib.Nifti1Image(np.asarray(sax.dataobj)[..., [0, 6, 12]], sax.affine)
    path = tmp_path / "cine.nii.gz"
    nib.save(cine, path)
    status, reply = _post(server, path.read_bytes())
    assert status == 202, reply
    job = _wait(server, reply["id"])
    assert job["status"] == "done", job
    metrics = _get_json(server, job["files"]["metrics.json"])
    assert metrics["n_frames"] == 3 and job["summary"]["lv_ef_pct"] == f"{metrics['lv_ef_pct']:.1f}"
    status, _, data = _request(server, "GET", job["files"]["seg_sax.nii.gz"])
    seg = nib.Nifti1Image.from_bytes(gzip.decompress(data))
    assert status == 200 and seg.shape == cine.shape  # labels on the upload's own grid
    np.testing.assert_allclose(seg.affine, cine.affine, atol=1e-5)


def test_raw_nifti_is_recognised_by_its_header(tmp_path):
    sax = nib.load(example_study_path() / "sax.nii.gz")
    raw = tmp_path / "upload.bin"
    raw.write_bytes(nib.Nifti1Image(np.asarray(sax.dataobj)[..., 0], sax.affine).to_bytes())
    (tmp_path / "input").mkdir()
    assert unpack_upload(raw, tmp_path / "input") == raw.stat().st_size
    assert find_exam(tmp_path / "input") == tmp_path / "input" / "sax.nii"


def test_jobs_are_removed_on_request_at_expiry_and_at_shutdown(work_dir):
    server, thread = _start(ServeSettings(port=0, work_dir=str(work_dir), job_ttl_s=3600), model=NeverCalledModel())
    try:
        ids = []
        for _ in range(2):
            status, reply = _post(server, _zip([("exam/readme.txt", b"no images")]))
            assert status == 202
            assert _wait(server, reply["id"])["status"] == "failed"
            ids.append(reply["id"])
        first, second = (server.jobs.get(i) for i in ids)
        assert first.folder.is_dir() and second.folder.is_dir()
        assert first.folder.parent == server.root and first.folder != second.folder  # one folder per job

        status, _, _ = _request(server, "DELETE", f"/jobs/{first.id}")
        assert status == 200 and not first.folder.exists()
        assert _request(server, "GET", f"/jobs/{first.id}")[0] == 404

        second.finished -= 3601  # as if an hour had passed since it finished
        server.jobs.sweep()
        assert not second.folder.exists() and _request(server, "GET", f"/jobs/{second.id}")[0] == 404

        status, reply = _post(server, _zip([("exam/readme.txt", b"no images")]))
        third = server.jobs.get(reply["id"])
        _wait(server, third.id)
        assert third.folder.is_dir()
    finally:
        _stop(server, thread)
    assert not third.folder.exists() and not server.root.exists()


# -------------------------------------------------------------------------------------------------------------------
# The page in a real browser
# -------------------------------------------------------------------------------------------------------------------


def test_browser_upload_of_the_example_shows_its_ef(server, tmp_path, caplog):
    sync_playwright = sync_playwright_or_skip()
    caplog.set_level(logging.DEBUG)
    archive = tmp_path / "example.zip"
    archive.write_bytes(_folder_zip(example_study_path(), "sunnybrook_scd0000301"))
    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            # A CSP violation or a script error shows up here: the page must run cleanly under its own policy.
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda err: problems.append(str(err)))
            page.goto(server.url)
            page.set_input_files("#exam-file", str(archive))
            page.click("#analyse")
            page.wait_for_selector("#result:not([hidden]), #error:not([hidden])", timeout=ANALYSIS_WAIT_S * 1000)
            assert page.is_hidden("#error"), page.inner_text("#error")
            shown = page.inner_text("#lv-ef")
            report_url = page.get_attribute("#report", "src")
            frame = page.frame_locator("#report")
            frame.locator("text=LV ejection fraction").wait_for()
            report_text = frame.locator("body").inner_text()
            status_text = page.inner_text("#status")
            # the page sized the frame to the whole report (same origin, no scripts inside): one scroll bar
            frame_height = page.eval_on_selector("#report", "e => e.getBoundingClientRect().height")
            report_height = frame.locator("html").evaluate("e => e.scrollHeight")
        finally:
            browser.close()
    assert problems == []
    job_id = report_url.split("/")[2]
    metrics = _get_json(server, f"/jobs/{job_id}/metrics.json")
    assert shown == f"{metrics['lv_ef_pct']:.1f}"
    assert 5.0 <= float(shown) <= 85.0  # a plausible LVEF, not a placeholder
    assert f"{metrics['lv_ef_pct']:.1f} %" in report_text  # the report in the frame agrees with the headline
    assert status_text.startswith("Done in")
    assert frame_height >= report_height > 1000
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert f"job {job_id}: analysis done" in logged and "sunnybrook" not in logged.lower()


def test_command_line_defaults_follow_the_server() -> None:
    from cinema.cli import serve as serve_cli
    from cinema.serve import server

    assert (serve_cli.DEFAULT_HOST, serve_cli.DEFAULT_PORT) == (server.DEFAULT_HOST, server.DEFAULT_PORT)


def test_help_imports_neither_the_server_nor_torch() -> None:
    # a fresh interpreter: what `cinema --help` imports (the parser of every sub-command is built)
    probe = (
        "import contextlib, io, sys\n"
        "import cinema.cli\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    cinema.cli.main(['--help'])\n"
        "print(','.join(m for m in ('torch', 'cinema.serve.server') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""
