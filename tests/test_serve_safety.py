"""`cinema serve` against clients that misbehave on purpose: trickled requests (slow loris), one client taking every
slot, ambiguous body lengths (request smuggling), absurd sizes; the security headers on every error; the folders a
killed server leaves behind; and the decoded-bytes limit around each job's analysis.

Each test starts its own in-process server on a free port with a stand-in for the analysis (no model is loaded),
and talks to it over real sockets, byte by byte where the test is about framing.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

from cinema.cli import build_parser, main
from cinema.io.limits import DEFAULT_MAX_IMAGE_MB, ENV_MAX_IMAGE_MB, max_decoded_bytes
from cinema.serve import Limits, ServeSettings, make_server
from cinema.serve.server import OWNER_MARKER
from cinema.serve.upload import MB

CLIENT_TIMEOUT_S = 10.0  # a guard: every answer these tests wait for comes in well under a second or two
SECURITY_HEADERS = ("Content-Security-Policy", "X-Content-Type-Options", "X-Frame-Options", "Referrer-Policy")


class NeverCalledModel:
    """The analysis is replaced in these tests: any use of the model is a test failure."""

    def __getattr__(self, name):
        raise AssertionError(f"the model was used ({name})")


@contextlib.contextmanager
def _serving(work_dir: Path, analyse=None, **settings):
    """A server on a free port whose jobs run `analyse(job)` instead of the real analysis."""
    server = make_server(ServeSettings(port=0, work_dir=str(work_dir), **settings), model=NeverCalledModel())
    server.jobs._analyse = analyse or (lambda job: {})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


def _connect(server, source: str | None = None) -> socket.socket:
    host, port = server.server_address[:2]
    return socket.create_connection(
        (host, port), timeout=CLIENT_TIMEOUT_S, source_address=(source, 0) if source else None
    )


def _head(server, method: str, path: str, headers: list[tuple[str, str]]) -> bytes:
    host, port = server.server_address[:2]
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", *(f"{name}: {value}" for name, value in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _raw(server, request: bytes, source: str | None = None):
    """(status, headers, body) for bytes sent as they are (http.client would refuse or fix the odd ones)."""
    with _connect(server, source) as sock:
        sock.sendall(request)
        response = http.client.HTTPResponse(sock, method=request.split(b" ", 1)[0].decode("latin-1"))
        response.begin()
        return response.status, dict(response.getheaders()), response.read()


def _upload(server, body: bytes, source: str | None = None):
    status, headers, data = _raw(
        server, _head(server, "POST", "/jobs", [("Content-Length", str(len(body)))]) + body, source
    )
    return status, headers, json.loads(data)


def _exam() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("exam/readme.txt", b"stands in for an exam: the analysis is replaced")
    return buffer.getvalue()


def _active(server) -> list:
    return [job for job in server.jobs._jobs.values() if job.status in ("receiving", "queued", "running")]


def _until(condition, timeout_s: float = CLIENT_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the server"
        time.sleep(0.02)


def _read_to_end(sock: socket.socket) -> bytes:
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def _assert_secure(headers: dict) -> None:
    for name in SECURITY_HEADERS:
        assert name in headers, (name, headers)
    assert headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert headers["X-Content-Type-Options"] == "nosniff"


# -------------------------------------------------------------------------------------------------------------------
# Slow loris: a deadline on the whole request, and a per-client share of the slots
# -------------------------------------------------------------------------------------------------------------------


def test_a_trickled_upload_is_cut_off_at_the_deadline_and_its_slot_freed(tmp_path):
    with _serving(tmp_path, request_timeout_s=1.0, max_active_jobs=1) as server:
        sock = _connect(server)
        try:
            sock.sendall(_head(server, "POST", "/jobs", [("Content-Length", "100000")]) + b"P")
            _until(lambda: len(_active(server)) == 1)
            held = _active(server)[0]
            # The only slot is taken: another upload is turned away meanwhile.
            status, headers, data = _raw(server, _head(server, "POST", "/jobs", [("Content-Length", "10")]))
            assert status == 503 and "busy" in json.loads(data)["error"]
            _assert_secure(headers)

            # One byte every 0.2 s: each read gets data long before any per-read timeout, only a deadline stops it.
            started = time.monotonic()
            while not select.select([sock], [], [], 0.2)[0]:
                assert time.monotonic() - started < 6.0, "the trickling client still holds its connection"
                with contextlib.suppress(OSError):
                    sock.send(b"K")
            assert time.monotonic() - started < 3.0
            answer = _read_to_end(sock)  # b"" when the 408 was lost to a reset (the server closed with bytes unread)
            assert answer == b"" or answer.startswith(b"HTTP/1.0 408 "), answer[:100]
            if answer:
                assert b"Content-Security-Policy: default-src 'none'" in answer
                assert b"took longer than the 1 s this server allows" in answer
        finally:
            sock.close()
        _until(lambda: not _active(server))
        assert not held.folder.exists()  # the partial upload went with the job
        status, _, reply = _upload(server, _exam())  # the slot is free again
        assert status == 202, reply


def test_a_trickled_or_silent_request_head_is_cut_off(tmp_path):
    with _serving(tmp_path, request_timeout_s=1.0) as server:
        silent = _connect(server)
        trickled = _connect(server)
        try:
            trickled.sendall(b"POST /jobs HTTP/1.1\r\n")
            started = time.monotonic()
            closed: set[str] = set()
            while len(closed) < 2:
                assert time.monotonic() - started < 6.0, "a connection without a whole request is still open"
                with contextlib.suppress(OSError):
                    trickled.send(b"X")  # an endless header line, one byte at a time
                for name, sock in (("silent", silent), ("trickled", trickled)):
                    if name not in closed and select.select([sock], [], [], 0.1)[0]:
                        with contextlib.suppress(ConnectionResetError):
                            assert sock.recv(65536) == b""  # closed without an answer: no request to answer
                        closed.add(name)
            assert time.monotonic() - started < 3.0
        finally:
            silent.close()
            trickled.close()


def test_one_client_address_cannot_take_more_than_its_share_of_slots(tmp_path):
    release = threading.Event()

    def analyse(job):
        release.wait(CLIENT_TIMEOUT_S * 3)  # jobs stay queued / running until the test lets them go
        return {}

    with _serving(tmp_path, analyse=analyse, max_active_jobs=4, max_jobs_per_client=2) as server:
        receiving = _connect(server)  # a first upload, still arriving: it holds a slot too
        try:
            receiving.sendall(_head(server, "POST", "/jobs", [("Content-Length", "100000")]) + b"PK")
            _until(lambda: len(_active(server)) == 1)
            status, _, reply = _upload(server, _exam())
            assert status == 202, reply
            status, headers, data = _raw(server, _head(server, "POST", "/jobs", [("Content-Length", "10")]))
            assert status == 429 and "already have 2 exams" in json.loads(data)["error"]
            _assert_secure(headers)
            assert len(_active(server)) == 2  # the refused upload took no slot
            # Another address is not held back by the first one's share (127.0.0.0/8 is all this machine).
            status, _, reply = _upload(server, _exam(), source="127.0.0.2")
            assert status == 202, reply
            assert sorted(job.client for job in _active(server)) == ["127.0.0.1", "127.0.0.1", "127.0.0.2"]
        finally:
            receiving.close()
            release.set()
        _until(lambda: not _active(server))  # the cut-short upload was dropped, the others finished
        status, _, reply = _upload(server, _exam())
        assert status == 202, reply


# -------------------------------------------------------------------------------------------------------------------
# Request smuggling: one plain Content-Length or nothing
# -------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([("Content-Length", "5"), ("Content-Length", "5")], "more than one Content-Length header"),
        ([("Content-Length", "5"), ("Content-Length", "7")], "more than one Content-Length header"),
        ([("Content-Length", "+5")], "bad Content-Length header (it must be a plain number of bytes)"),
        ([("Content-Length", "-0")], "bad Content-Length header (it must be a plain number of bytes)"),
        ([("Content-Length", "1_0")], "bad Content-Length header (it must be a plain number of bytes)"),
        ([("Content-Length", "1 0")], "bad Content-Length header (it must be a plain number of bytes)"),
        ([("Content-Length", "5, 5")], "bad Content-Length header (it must be a plain number of bytes)"),
        ([("Content-Length", "0x10")], "bad Content-Length header (it must be a plain number of bytes)"),
        (
            [("Transfer-Encoding", "chunked"), ("Content-Length", "5")],
            "a request may not have both a Content-Length and a Transfer-Encoding header",
        ),
    ],
)
def test_ambiguous_body_lengths_are_refused(tmp_path, headers, expected):
    # No body is sent: the refusal must come from the headers alone, before any byte of a body is read.
    with _serving(tmp_path) as server:
        status, response_headers, data = _raw(server, _head(server, "POST", "/jobs", headers))
        assert (status, json.loads(data)["error"]) == (400, expected)
        assert response_headers["Connection"] == "close"
        _assert_secure(response_headers)
        assert not server.jobs._jobs
        # The same on a route that takes no body at all.
        status, _, data = _raw(server, _head(server, "GET", "/", headers))
        assert (status, json.loads(data)["error"]) == (400, expected)


def test_a_plain_length_with_trailing_spaces_is_still_accepted(tmp_path):
    body = _exam()
    with _serving(tmp_path) as server:
        request = _head(server, "POST", "/jobs", [("Content-Length", f"{len(body)}  ")]) + body
        status, _, data = _raw(server, request)
        assert status == 202, data


# -------------------------------------------------------------------------------------------------------------------
# Error responses: security headers and short messages
# -------------------------------------------------------------------------------------------------------------------


def test_every_error_carries_the_security_headers(tmp_path, monkeypatch):
    with _serving(tmp_path, limits=Limits(max_upload_bytes=1 * MB)) as server:
        requests = {
            "404 unknown path": (_head(server, "GET", "/nothing-here", []), 404),
            "400 dot segments": (_head(server, "GET", "/%2e%2e/etc/passwd", []), 400),
            "411 chunked": (_head(server, "POST", "/jobs", [("Transfer-Encoding", "chunked")]), 411),
            "411 no length": (_head(server, "POST", "/jobs", []), 411),
            "413 too big": (_head(server, "POST", "/jobs", [("Content-Length", str(2 * MB))]), 413),
            "400 empty": (_head(server, "POST", "/jobs", [("Content-Length", "0")]), 400),
            "403 other site": (_head(server, "POST", "/jobs", [("Origin", "http://evil.example")]), 403),
            # The standard library's own refusals (send_error): an unknown method, an HTTP version it does not speak.
            "501 unknown method": (_head(server, "PUT", "/jobs", []), 501),
            "505 http version": (b"GET / HTTP/2.0\r\n\r\n", 505),
            # HTTP/0.9 has no headers at all: the page would go out without its policy.
            "505 http/0.9": (b"GET /\r\n\r\n", 505),
            "400 bad request line": (b"GET / HTTP/1.1 and more\r\n\r\n", 400),
        }
        for what, (request, code) in requests.items():
            status, headers, data = _raw(server, request)
            assert status == code, (what, status, data[:200])
            _assert_secure(headers)
            assert headers["Content-Type"] == "application/json", what
            error = json.loads(data)["error"]
            assert 0 < len(error) < 120 and "'" not in error, (what, error)  # short, and never quoting the request

        # An unexpected failure in a handler: a 500 with the same headers, not a dropped connection.
        def broken(job_id):
            raise RuntimeError("a bug")

        monkeypatch.setattr(server.jobs, "get", broken)
        status, headers, data = _raw(server, _head(server, "GET", "/jobs/" + "a" * 24, []))
        assert status == 500 and json.loads(data) == {
            "error": "the server failed unexpectedly while handling this request"
        }
        _assert_secure(headers)
        # HEAD gets the headers without a body
        status, headers, data = _raw(server, _head(server, "HEAD", "/nothing-here", []))
        assert status == 404 and data == b""
        _assert_secure(headers)


@pytest.mark.parametrize(
    ("length", "expected"),
    [
        (str(3 * 2**30), "the upload is 3.0 GB; the limit is 1.0 MB"),
        (str(1536 * 1024), "the upload is 1.5 MB; the limit is 1.0 MB"),
        (str(10**24), "the upload announces an impossible size (its Content-Length); the limit is 1.0 MB"),
        ("9" * 5000, "the upload announces an impossible size (its Content-Length); the limit is 1.0 MB"),
    ],
)
def test_oversized_uploads_get_a_short_readable_message(tmp_path, length, expected):
    with _serving(tmp_path, limits=Limits(max_upload_bytes=1 * MB)) as server:
        status, headers, data = _raw(server, _head(server, "POST", "/jobs", [("Content-Length", length)]))
        assert (status, json.loads(data)) == (413, {"error": expected})
        _assert_secure(headers)


# -------------------------------------------------------------------------------------------------------------------
# Folders left by a server that was killed
# -------------------------------------------------------------------------------------------------------------------


def _dead_pid() -> int:
    process = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    return int(process.stdout)


def _server_folder(parent: Path, name: str, owner: dict | None) -> Path:
    """A folder as a server leaves it: a job folder holding an upload, and the owner marker if `owner`."""
    folder = parent / name
    job = folder / "job-x1y2z3"
    (job / "input" / "Doe_Jane").mkdir(parents=True)
    (job / "input" / "Doe_Jane" / "IM0001.dcm").write_bytes(b"an exam left behind")
    if owner is not None:
        (folder / OWNER_MARKER).write_text(json.dumps(owner))
    return folder


def test_start_up_removes_the_folders_of_killed_servers_and_nothing_else(tmp_path):
    host = socket.gethostname()
    dead = _dead_pid()
    stale = _server_folder(tmp_path, "cinema-serve-killed1", {"pid": dead, "host": host})
    kept = {
        "no marker": _server_folder(tmp_path, "cinema-serve-nomarker", None),
        "owner alive": _server_folder(tmp_path, "cinema-serve-alive", {"pid": os.getpid(), "host": host}),
        "other machine": _server_folder(tmp_path, "cinema-serve-elsewhere", {"pid": dead, "host": host + "-other"}),
        "not our prefix": _server_folder(tmp_path, "someone-elses", {"pid": dead, "host": host}),
        "garbled marker": _server_folder(tmp_path, "cinema-serve-garbled", None),
        "impossible pid": _server_folder(tmp_path, "cinema-serve-bigpid", {"pid": 2**70, "host": host}),
        "marker is a folder": _server_folder(tmp_path, "cinema-serve-oddmarker", None),
    }
    (kept["garbled marker"] / OWNER_MARKER).write_text("{not json")
    (kept["marker is a folder"] / OWNER_MARKER).mkdir()
    # A link named like a server folder, pointing at a stale-looking folder elsewhere: neither is touched.
    outside = _server_folder(tmp_path / "elsewhere", "target", {"pid": dead, "host": host})
    (tmp_path / "cinema-serve-link").symlink_to(outside, target_is_directory=True)

    with _serving(tmp_path) as server:
        assert not stale.exists()
        for what, folder in kept.items():
            assert (folder / "job-x1y2z3" / "input" / "Doe_Jane" / "IM0001.dcm").is_file(), what
        assert (outside / "job-x1y2z3").is_dir() and (tmp_path / "cinema-serve-link").is_symlink()
        # The running server's own folder is marked as this process's, so the next server leaves it alone...
        marker = json.loads((server.root / OWNER_MARKER).read_text())
        assert marker == {"pid": os.getpid(), "host": host}
        assert server.root.name.startswith("cinema-serve-")
        with _serving(tmp_path) as second:
            assert server.root.is_dir() and second.root != server.root
    assert not server.root.exists()  # ...and removes it itself when it closes


# -------------------------------------------------------------------------------------------------------------------
# The decoded-bytes limit around the analysis
# -------------------------------------------------------------------------------------------------------------------


def test_each_job_is_analysed_under_the_unpacked_size_limit(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_MAX_IMAGE_MB, raising=False)
    seen: list[tuple[int, str]] = []

    def analyse(job):
        seen.append((max_decoded_bytes(), threading.current_thread().name))
        return {}

    limits = Limits(max_upload_bytes=1 * MB, max_unpacked_bytes=3 * MB)
    with _serving(tmp_path, analyse=analyse, limits=limits) as server:
        for _ in range(2):
            status, _, reply = _upload(server, _exam())
            assert status == 202, reply
            job = server.jobs.get(reply["id"])
            _until(lambda job=job: job.status == "done")
    assert seen == [(3 * MB, "cinema-serve-worker")] * 2
    assert max_decoded_bytes() == DEFAULT_MAX_IMAGE_MB * MB  # the block ended with the job


def test_hidden_files_in_a_job_output_are_neither_listed_nor_served(tmp_path):
    def analyse(job):
        job.out.mkdir()
        (job.out / "metrics.json").write_text("{}")
        (job.out / ".cinema-output").write_text("the writers' marker")
        return {}

    with _serving(tmp_path, analyse=analyse) as server:
        status, _, reply = _upload(server, _exam())
        assert status == 202, reply
        job = server.jobs.get(reply["id"])
        _until(lambda: job.status == "done")
        status, _, data = _raw(server, _head(server, "GET", f"/jobs/{job.id}", []))
        assert status == 200 and list(json.loads(data)["files"]) == ["metrics.json"]
        assert _raw(server, _head(server, "GET", f"/jobs/{job.id}/.cinema-output", []))[0] == 404
        assert _raw(server, _head(server, "GET", f"/jobs/{job.id}/metrics.json", []))[0] == 200


# -------------------------------------------------------------------------------------------------------------------
# The command line
# -------------------------------------------------------------------------------------------------------------------


def test_command_line_options_for_the_new_limits(capsys):
    args = build_parser().parse_args(["serve"])
    assert (args.request_timeout, args.max_jobs_per_client) == (120.0, 2)
    defaults = ServeSettings()
    assert (defaults.request_timeout_s, defaults.max_jobs_per_client) == (120.0, 2)
    assert main(["serve", "--request-timeout", "0"]) == 2
    assert "--request-timeout must be > 0" in capsys.readouterr().err
    assert main(["serve", "--max-jobs-per-client", "0"]) == 2
    assert "--max-jobs-per-client must be >= 1" in capsys.readouterr().err
