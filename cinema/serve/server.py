"""The HTTP server behind `cinema serve`: standard library only (`http.server`), one analysis at a time.

Routes (everything else is 404; a path with ``.``/``..`` segments, encoded or not, is 400):

- ``GET /``, ``/app.js``, ``/app.css``: the page;
- ``POST /jobs``: the exam as the raw request body (zip or NIfTI); 202 with the job's status URL, or 400 / 408 /
  411 / 413 / 429 / 503 with ``{"error": "..."}``;
- ``GET /jobs/<id>``: the job's status (and, when done, its headline numbers and file URLs);
- ``GET /jobs/<id>/<file>``: one file of the job's analysis output folder (no listings, sub-paths or hidden files);
- ``DELETE /jobs/<id>``: remove the job and its folder now.

Every response, errors included (the standard library's own refusals too, and a 500 for an unexpected failure), is
JSON or one of the page's files and carries the same security headers (Content-Security-Policy, nosniff, ...).

Limits on what a client can hold:

- a whole request (request line, headers and body) must arrive within `ServeSettings.request_timeout_s`, and the
  client may not stay silent for more than `READ_TIMEOUT_S` within it: a client that trickles bytes (slow loris)
  gets a 408 or a closed connection and its upload slot back;
- the body is framed by exactly one plain decimal ``Content-Length``: a repeated or malformed one, or one together
  with ``Transfer-Encoding``, is a 400 (chunked uploads alone are a 411);
- at most `ServeSettings.max_active_jobs` uploads are received, queued or analysed at once (503), and at most
  `ServeSettings.max_jobs_per_client` of them come from one client address (429);
- the analysis reads the exam under `cinema.io.limits.decoded_byte_limit` of the unpacked-size limit: no single
  image file may decode to more bytes than the whole upload may unpack to.

Each job lives in its own fresh folder under the server's temporary folder: the upload is unpacked there, analysed,
and the unpacked exam is deleted as soon as the analysis ends; the outputs are deleted `ServeSettings.job_ttl_s`
after the analysis, on DELETE, or when the server closes (the whole temporary folder goes). The temporary folder is
``cinema-serve-*`` under `ServeSettings.work_dir` with an `OWNER_MARKER` file naming this process: a server killed
without cleaning up (kill -9, power loss) leaves its uploads there, and the next server started on the same work
folder removes the folders whose marker names a process of this machine that is no longer running (nothing without
a marker is ever touched). Job ids are random tokens. Logs name jobs by id and give sizes and times only: never a
file name from an upload or a DICOM field.
"""

from __future__ import annotations

import io
import ipaddress
import json
import logging
import math
import os
import queue
import re
import secrets
import socket
import stat
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from cinema.io.limits import decoded_byte_limit, format_bytes
from cinema.serve.page import APP_CSS, APP_JS, index_html
from cinema.serve.upload import CHUNK, MB, Limits, UploadRejected, find_exam, redact, remove_tree, unpack_upload

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "OWNER_MARKER",
    "CinemaServer",
    "Job",
    "ServeSettings",
    "is_loopback",
    "make_server",
    "remove_stale_folders",
]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
ROOT_PREFIX = "cinema-serve-"
OWNER_MARKER = ".cinema-serve-owner"  # in the server's temporary folder: {"pid": ..., "host": ...}
READ_TIMEOUT_S = 30.0  # longest silence allowed in the middle of a request (the whole request has its own deadline)
IMPOSSIBLE_LENGTH = 2**50  # 1 PB: a Content-Length above this is not a file anyone is sending
CONTENT_LENGTH = re.compile(r"[0-9]+")  # digits only: no sign, no "_", no inner spaces, no non-ASCII digits
JOB_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
LOOPBACK_NAMES = {"localhost", "localhost.", "ip6-localhost"}
SUMMARY_KEYS = ("lv_ef_pct", "rv_ef_pct", "lv_edv_ml", "lv_esv_ml", "lv_sv_ml", "rv_edv_ml", "rv_esv_ml", "lv_mass_g")
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".json": "application/json",
    ".csv": "text/csv; charset=utf-8",
    ".gif": "image/gif",
    ".gz": "application/gzip",
}
DOWNLOAD_ONLY = (".csv", ".gz")  # never rendered by the browser
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "frame-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)
# The report is our own HTML but is shown as untrusted content: no scripts, no requests, only embedded pictures.
# (No CSP "sandbox" here: the page reads the framed report's height, which needs it to stay same-origin; the
# frame's own sandbox attribute and default-src 'none' still forbid every script.)
REPORT_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; frame-ancestors 'self'; base-uri 'none'"
FILE_CSP = "default-src 'none'; sandbox"


@dataclass(frozen=True)
class ServeSettings:
    """How `cinema serve` runs.

    Attributes:
        host: address to bind; loopback unless the user asks otherwise (there is no authentication).
        port: TCP port; 0 picks a free one (`CinemaServer.url` tells which).
        limits: upload, unpacked-size and member-count limits.
        job_ttl_s: how long a finished job's outputs stay available.
        max_active_jobs: uploads being received, queued or analysed at once; more get 503.
        max_jobs_per_client: of those, how many one client address may hold; more get 429 (so that one client
            cannot take every slot).
        request_timeout_s: the whole request, body included, must arrive within this many seconds (a client that
            trickles bytes would otherwise hold its slot forever); raise it for big uploads over slow networks.
        work_dir: where the server's temporary folder is made (default: the system's temporary folder).
        weights, device, batch_size, amp: as for `cinema analyze`.
    """

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    limits: Limits = field(default_factory=Limits)
    job_ttl_s: float = 3600.0
    max_active_jobs: int = 4
    max_jobs_per_client: int = 2
    request_timeout_s: float = 120.0
    work_dir: str | None = None
    weights: str | None = None
    device: str = "cpu"
    batch_size: int = 32
    amp: bool | None = None  # None: bf16 on CPUs that compute it natively (InferenceOptions)


def is_loopback(host: str) -> bool:
    """Whether `host` (a bind address or a Host header's name) is this machine only."""
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _fmt(value: Any) -> str:
    # The report's formatting (one decimal), so the page and report.html show the same digits.
    return "n/a" if value is None else f"{float(value):.1f}"


@dataclass
class Job:
    """One upload and its analysis, in its own folder."""

    id: str
    folder: Path
    client: str = ""  # the uploader's address, for the per-client limit (never logged)
    status: str = "receiving"  # receiving -> queued -> running -> done | failed
    created: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    upload_bytes: int = 0
    unpacked_bytes: int = 0
    metrics: dict[str, Any] | None = None

    @property
    def upload(self) -> Path:
        return self.folder / "upload.bin"

    @property
    def input(self) -> Path:
        return self.folder / "input"

    @property
    def out(self) -> Path:
        return self.folder / "out"


class JobRefused(Exception):
    """No slot for a new job: `code` is the HTTP status (503 or 429), the message is safe to show."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


class JobRunner:
    """The jobs of one server: their folders, a FIFO queue and one worker thread.

    One worker because the model and the machine's cores serve one analysis well and several badly; it also sweeps
    expired jobs while idle.
    """

    def __init__(self, model: Any, settings: ServeSettings, root: Path):
        self.model = model
        self.settings = settings
        self.root = root
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._order: list[str] = []  # queued job ids, oldest first (for the page's "waiting for N")
        self._worker = threading.Thread(target=self._work, name="cinema-serve-worker", daemon=True)
        self._worker.start()

    # -- bookkeeping -----------------------------------------------------------------------------------------------

    def create(self, client: str = "") -> Job:
        """A new job with a fresh folder for an upload from address `client`.

        Raises:
            JobRefused: 503 when `max_active_jobs` are already active, 429 when `client` already holds
                `max_jobs_per_client` of them.
        """
        with self._lock:
            active = [job for job in self._jobs.values() if job.status in ("receiving", "queued", "running")]
            if len(active) >= self.settings.max_active_jobs:
                raise JobRefused(503, "the server is busy with other exams; try again in a few minutes")
            if sum(job.client == client for job in active) >= self.settings.max_jobs_per_client:
                raise JobRefused(
                    429,
                    f"you already have {self.settings.max_jobs_per_client} exams uploading or being analysed here; "
                    "wait for one of them to finish",
                )
            job_id = secrets.token_urlsafe(18)
            folder = Path(tempfile.mkdtemp(prefix="job-", dir=self.root))
            job = Job(job_id, folder, client=client)
            job.input.mkdir()
            self._jobs[job_id] = job
            return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def remove(self, job: Job) -> None:
        """Forget a job and delete its folder (a running job's folder goes when its analysis ends)."""
        with self._lock:
            self._jobs.pop(job.id, None)
            running = job.status == "running"
        if not running:
            remove_tree(job.folder)

    def queue_position(self, job: Job) -> int:
        with self._lock:
            return self._order.index(job.id) if job.id in self._order else 0

    def submit(self, job: Job) -> None:
        with self._lock:
            job.status = "queued"
            self._order.append(job.id)
        self._queue.put(job)

    def sweep(self) -> None:
        """Delete finished jobs older than the time to live."""
        now = time.monotonic()
        with self._lock:
            expired = [
                job
                for job in self._jobs.values()
                if job.finished is not None and now - job.finished > self.settings.job_ttl_s
            ]
        for job in expired:
            logger.info("job %s: expired, folder removed", job.id)
            self.remove(job)

    def close(self, wait_s: float = 60.0) -> None:
        """Stop the worker (after the analysis in progress, up to `wait_s`) and delete every job folder."""
        self._queue.put(None)
        self._worker.join(wait_s)
        with self._lock:
            jobs = list(self._jobs.values())
            self._jobs.clear()
        for job in jobs:
            remove_tree(job.folder)

    # -- the worker ------------------------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            try:
                job = self._queue.get(timeout=min(60.0, max(1.0, self.settings.job_ttl_s / 4)))
            except queue.Empty:
                self.sweep()
                continue
            if job is None:
                return
            with self._lock:
                self._order.remove(job.id)
                if job.id not in self._jobs:  # deleted while queued
                    remove_tree(job.folder)
                    continue
                job.status = "running"
            job.started = time.monotonic()
            self._run(job)
            self.sweep()

    def _run(self, job: Job) -> None:
        try:
            # Entered here, in the worker thread: the limit is a context variable, which a thread does not inherit.
            with decoded_byte_limit(self.settings.limits.max_unpacked_bytes):
                job.metrics = self._analyse(job)
            status = "done"
            logger.info("job %s: analysis done in %.1f s", job.id, time.monotonic() - job.started)
        except Exception as err:  # any failure is reported on the page; the server keeps serving
            status = "failed"
            if isinstance(err, ValueError | FileNotFoundError):  # the readers' one-line messages about the input
                message = redact(str(err), job.input)
            else:
                message = f"the analysis failed unexpectedly ({type(err).__name__})"
            job.error = message
            logger.warning("job %s: analysis failed: %s", job.id, message)
        finally:
            # The exam itself is the sensitive part: it goes as soon as the analysis ends, the outputs stay.
            remove_tree(job.input)
        with self._lock:
            job.finished = time.monotonic()
            job.status = status
            gone = job.id not in self._jobs  # deleted while running
        if gone:
            remove_tree(job.folder)

    def _analyse(self, job: Job) -> dict[str, Any]:
        from cinema.analysis.analyze import analyze_path

        # the job folder's path (with the archive's folder names) must not reach messages or the report
        analysis = analyze_path(find_exam(job.input), job.out, self.model, display_name="upload")
        return analysis.metrics

    def status(self, job: Job) -> dict[str, Any]:
        """The job's status document for the page."""
        reply: dict[str, Any] = {"id": job.id, "status": job.status}
        if job.status == "queued":
            reply["queue_position"] = self.queue_position(job)
        if job.status == "failed":
            reply["error"] = job.error
        if job.status == "done" and job.metrics is not None:
            metrics = job.metrics
            reply["summary"] = {key: _fmt(metrics.get(key)) for key in SUMMARY_KEYS}
            reply["summary"].update(ed_frame=metrics.get("ed_frame"), es_frame=metrics.get("es_frame"))
            reply["qc_warnings"] = list(metrics.get("qc_warnings", []))
            reply["seconds"] = round((job.finished or 0.0) - (job.started or 0.0), 1)
            # Hidden names are the writers' own bookkeeping (the output marker, temporaries), not results.
            names = sorted(p.name for p in job.out.iterdir() if not p.name.startswith(".")) if job.out.is_dir() else []
            reply["files"] = {name: f"/jobs/{job.id}/{name}" for name in names}
            reply["report_url"] = f"/jobs/{job.id}/report.html"
        return reply


def _pid_alive(pid: int) -> bool:
    """Whether process `pid` of this machine still runs (True when it cannot be told: such a folder is kept)."""
    if os.name != "posix":
        return True  # os.kill(pid, 0) would terminate the process on Windows
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: alive, and someone else's
        return True
    except (OverflowError, ValueError):  # not a PID this system can have: a marker we cannot judge
        return True
    return True


def _write_owner_marker(root: Path) -> None:
    (root / OWNER_MARKER).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))


def _stale_owner(folder: Path) -> bool:
    """Whether `folder` is a server folder of ours whose owning process, on this machine, is gone."""
    try:
        info = folder.lstat()
        marker = folder / OWNER_MARKER
        marker_info = marker.lstat()
        if not stat.S_ISDIR(info.st_mode) or not stat.S_ISREG(marker_info.st_mode):
            return False
        if hasattr(os, "getuid") and (info.st_uid != os.getuid() or marker_info.st_uid != os.getuid()):
            return False  # another user's server (and not ours to delete)
        owner = json.loads(marker.read_text())
        pid, host = owner["pid"], owner["host"]
    except (OSError, ValueError, TypeError, KeyError):
        return False  # no marker, unreadable or not ours: never touched
    # A work folder shared between machines (a network drive): another machine's PIDs mean nothing here.
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0 or host != socket.gethostname():
        return False
    return pid != os.getpid() and not _pid_alive(pid)


def remove_stale_folders(work_dir: str | os.PathLike | None = None) -> int:
    """Remove the temporary folders (and the uploads in them) of servers that died without cleaning up.

    Only ``cinema-serve-*`` folders of `work_dir` (default: the system's temporary folder) holding an `OWNER_MARKER`
    that names a process of this machine which is no longer running; returns how many went.
    """
    parent = Path(work_dir if work_dir is not None else tempfile.gettempdir())
    try:
        candidates = sorted(p for p in parent.iterdir() if p.name.startswith(ROOT_PREFIX))
    except OSError:
        return 0
    removed = 0
    for folder in candidates:
        if _stale_owner(folder):
            remove_tree(folder)
            removed += not folder.exists()
    if removed:
        logger.info("removed %d folder(s) left with their uploads by a server that died without cleaning up", removed)
    return removed


class CinemaServer(ThreadingHTTPServer):
    """`ThreadingHTTPServer` with the job runner; `server_close` also deletes every job folder.

    On start-up it first removes the folders that earlier servers killed without cleaning up left in the same work
    folder (`remove_stale_folders`).
    """

    daemon_threads = True

    def __init__(self, settings: ServeSettings, model: Any):
        self.settings = settings
        remove_stale_folders(settings.work_dir)
        self.root = Path(tempfile.mkdtemp(prefix=ROOT_PREFIX, dir=settings.work_dir))
        try:
            _write_owner_marker(self.root)
            super().__init__((settings.host, settings.port), _Handler)
        except OSError:
            remove_tree(self.root)
            raise
        self.loopback_only = is_loopback(settings.host)
        self.page = index_html(settings.limits.max_upload_bytes).encode("utf-8")
        self.jobs = JobRunner(model, settings, self.root)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{port}/"

    def handle_error(self, request: Any, client_address: Any) -> None:
        # The stdlib prints a traceback to stderr; a dropped or stalled connection deserves one log line.
        import sys

        logger.warning("a request failed (%s)", type(sys.exc_info()[1]).__name__)

    def server_close(self) -> None:
        super().server_close()
        self.jobs.close()
        remove_tree(self.root)


def make_server(settings: ServeSettings = ServeSettings(), model: Any = None) -> CinemaServer:
    """Build the segmentation predictor once (from `model` when given) and bind the server; call
    ``serve_forever()`` on it."""
    from cinema.analysis.segment import InferenceOptions, SegmentationPredictor

    options = InferenceOptions(batch_size=settings.batch_size, amp=settings.amp)
    if model is None:
        model = SegmentationPredictor.from_weights(
            settings.weights, device=settings.device, batch_size=settings.batch_size, amp=settings.amp
        )
    elif not isinstance(model, SegmentationPredictor):
        model = SegmentationPredictor(model, options)
    return CinemaServer(settings, model)


class _DeadlineReader(io.RawIOBase):
    """A connection's incoming bytes, every read bounded by the time left before the request's deadline.

    A socket timeout alone restarts with each byte received: a client sending one byte every few seconds would
    never trip it and would hold its thread and upload slot forever. The deadline is fixed when the request starts.
    """

    def __init__(self, connection: socket.socket, write_timeout_s: float):
        self._connection = connection
        self._write_timeout_s = write_timeout_s
        self.deadline = math.inf

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request did not arrive before its deadline")
        self._connection.settimeout(min(READ_TIMEOUT_S, left))
        try:
            return self._connection.recv_into(buffer)
        finally:
            # The socket's timeout also bounds writes: the response gets a fresh one, not this read's remainder.
            self._connection.settimeout(self._write_timeout_s)


# Readable messages for the standard library's own refusals (its texts quote the client's request line).
PARSER_ERRORS = {
    400: "bad request",
    414: "the request path is too long",
    431: "a request header is too long, or there are too many",
    501: "this method is not supported here (GET, HEAD, POST and DELETE are)",
    505: "this HTTP version is not supported",
}


class _Handler(BaseHTTPRequestHandler):
    server: CinemaServer
    server_version = "cinema-serve"
    sys_version = ""  # do not advertise the Python version
    route = "-"  # what the request was, for the log (never the raw path: it is the client's text)
    _answered = False  # whether a status line went out for the current request

    def setup(self) -> None:
        self.timeout = self.server.settings.request_timeout_s  # for writes; reads are bounded by _DeadlineReader
        super().setup()
        self.rfile.close()  # the stdlib's reader: replaced by one that keeps the request's deadline
        self._reader = _DeadlineReader(self.connection, self.server.settings.request_timeout_s)
        self.rfile = io.BufferedReader(self._reader)

    def handle_one_request(self) -> None:
        # The deadline covers the request line, the headers and the body: a trickle at any stage is cut off.
        self._reader.deadline = time.monotonic() + self.server.settings.request_timeout_s
        self.route = "-"
        self._answered = False
        try:
            super().handle_one_request()
        except (ConnectionError, TimeoutError):
            raise  # nobody left to answer: the server logs one line
        except Exception as err:
            self.close_connection = True
            if self._answered:
                raise
            # Whatever failed, the client gets an answer with the usual headers rather than a dropped connection.
            logger.warning("%s failed unexpectedly (%s)", self.route, type(err).__name__)
            self._error(500, "the server failed unexpectedly while handling this request")

    # -- logging: job ids, status codes and sizes only -------------------------------------------------------------

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        code = getattr(code, "value", code)
        # The page polls its job every second: successful reads are debug noise, everything else is worth a line.
        level = logging.DEBUG if self.command in ("GET", "HEAD") and str(code).startswith("2") else logging.INFO
        # An unknown method is the client's own text, like the path: not logged.
        method = self.command if self.command in ("GET", "HEAD", "POST", "DELETE") else "(other method)"
        logger.log(level, "%s %s -> %s", method, self.route, code)

    def log_error(self, format: str, *args: Any) -> None:
        pass  # every refusal is logged by log_request with its code; the stdlib text would quote the request line

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # -- responses -------------------------------------------------------------------------------------------------

    def _send(
        self,
        code: int,
        body: bytes,
        content_type: str,
        *,
        csp: str = FILE_CSP,
        frame: str = "DENY",
        download: str | None = None,
    ) -> None:
        self.send_response(code)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy", csp)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", frame)
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", "no-store")  # results are medical data: keep them out of disk caches
        if download:
            self.send_header("Content-Disposition", f'attachment; filename="{download}"')
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, code: int, document: dict[str, Any]) -> None:
        self._send(code, json.dumps(document).encode("utf-8"), "application/json")

    def _error(self, code: int, message: str) -> None:
        self.close_connection = True
        self._json(code, {"error": message})

    def send_response(self, code: int, message: str | None = None) -> None:
        self._answered = True
        super().send_response(code, message)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The standard library's own refusals (malformed request line, unknown method, header line too long).

        Answered like ours: JSON with the security headers, instead of the stdlib's bare HTML page.
        """
        code = int(code)
        if self.route == "-":
            self.route = "(refused by the HTTP parser)"
        # Until the request line is understood the stdlib assumes HTTP/0.9, which has no headers: answer with them.
        if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":
            self.request_version = "HTTP/1.0"
        try:
            phrase = HTTPStatus(code).phrase.lower()
        except ValueError:
            phrase = "error"
        self._error(code, PARSER_ERRORS.get(code, phrase))

    # -- request checks --------------------------------------------------------------------------------------------

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        if self.request_version == "HTTP/0.9":
            # An HTTP/0.9 answer is the bare body: the page without its Content-Security-Policy. Refused.
            self.send_error(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED)
            return False
        return True

    def _segments(self) -> list[str] | None:
        """The decoded path segments, or None (after a 400) for a path that tries to leave its place."""
        path = urlsplit(self.path).path
        if not path.startswith("/"):
            self._error(400, "bad request path")
            return None
        try:
            segments = [unquote(s, errors="strict") for s in path[1:].split("/")]
        except UnicodeDecodeError:
            self._error(400, "bad request path")
            return None
        for s in segments:
            if s in (".", "..") or any(c in s for c in "/\\\x00"):
                self.route = "(path with dot segments or separators)"
                self._error(400, "bad request path")
                return None
        return segments

    def _trusted_origin(self) -> bool:
        """Refuse requests a web page elsewhere makes the browser send here (DNS rebinding, cross-site posts)."""
        hosts = self.headers.get_all("Host") or []
        if len(hosts) > 1:
            self._error(400, "more than one Host header")
            return False
        host = hosts[0] if hosts else ""
        if self.server.loopback_only and host:
            name = urlsplit(f"//{host}").hostname or ""
            if not is_loopback(name):
                self._error(403, "this server only answers requests addressed to this machine (localhost)")
                return False
        origin = self.headers.get("Origin")
        if origin is not None and self.command in ("POST", "DELETE") and urlsplit(origin).netloc != host:
            self._error(403, "cross-origin requests are refused")
            return False
        return True

    def _framing_ok(self) -> bool:
        """Refuse a request whose body length two parsers could read differently (request smuggling through a
        proxy in front): at most one Content-Length, plain decimal digits, never together with Transfer-Encoding."""
        lengths = self.headers.get_all("Content-Length") or []
        encodings = self.headers.get_all("Transfer-Encoding") or []
        if len(lengths) > 1:
            self.route = "(repeated Content-Length)"
            self._error(400, "more than one Content-Length header")
            return False
        if lengths and encodings:
            self.route = "(Content-Length with Transfer-Encoding)"
            self._error(400, "a request may not have both a Content-Length and a Transfer-Encoding header")
            return False
        # The parser has stripped the spaces before the value; spaces after it are allowed, nothing else is.
        if lengths and not CONTENT_LENGTH.fullmatch(lengths[0].rstrip(" \t")):
            self.route = "(malformed Content-Length)"
            self._error(400, "bad Content-Length header (it must be a plain number of bytes)")
            return False
        if self.command != "POST" and (encodings or lengths and lengths[0].strip("0 \t")):
            self.close_connection = True  # a body nobody reads must never be taken for a next request
        return True

    def _job(self, job_id: str) -> Job | None:
        job = self.server.jobs.get(job_id) if JOB_ID.match(job_id) else None
        if job is None:
            self._error(404, "no such job (finished jobs are removed after a while)")
        return job

    # -- methods ---------------------------------------------------------------------------------------------------

    def do_GET(self) -> None:
        if not self._trusted_origin() or not self._framing_ok():
            return
        segments = self._segments()
        if segments is None:
            return
        if segments in ([""], ["index.html"]):
            self.route = "/"
            self._send(200, self.server.page, "text/html; charset=utf-8", csp=PAGE_CSP)
        elif segments == ["app.js"]:
            self.route = "/app.js"
            self._send(200, APP_JS.encode("utf-8"), "text/javascript; charset=utf-8", csp=PAGE_CSP)
        elif segments == ["app.css"]:
            self.route = "/app.css"
            self._send(200, APP_CSS.encode("utf-8"), "text/css; charset=utf-8", csp=PAGE_CSP)
        elif len(segments) == 2 and segments[0] == "jobs":
            self.route = "/jobs/<id>"
            job = self._job(segments[1])
            if job is not None:
                self.route = f"/jobs/{job.id}"
                self._json(200, self.server.jobs.status(job))
        elif len(segments) == 3 and segments[0] == "jobs":
            self.route = "/jobs/<id>/<file>"
            job = self._job(segments[1])
            if job is not None:
                self._job_file(job, segments[2])
        else:
            self.route = "(unknown path)"
            self._error(404, "not found")

    do_HEAD = do_GET

    def _job_file(self, job: Job, name: str) -> None:
        out = job.out.resolve() if job.status == "done" and job.out.is_dir() else None
        # Only a plain, visible file listed directly in the output folder: no sub-paths, links or listings.
        if out is None or name.startswith(".") or name not in os.listdir(out):
            self._error(404, "no such file in this job's results")
            return
        path = out / name
        if path.is_symlink() or not path.is_file() or path.resolve().parent != out:
            self._error(404, "no such file in this job's results")
            return
        self.route = f"/jobs/{job.id}/{name}"
        suffix = path.suffix.lower()
        content_type = CONTENT_TYPES.get(suffix, "application/octet-stream")
        is_report = name == "report.html"
        self._send(
            200,
            path.read_bytes(),
            content_type,
            csp=REPORT_CSP if is_report else FILE_CSP,
            frame="SAMEORIGIN" if is_report else "DENY",
            download=name if suffix in DOWNLOAD_ONLY else None,
        )

    def do_DELETE(self) -> None:
        if not self._trusted_origin() or not self._framing_ok():
            return
        segments = self._segments()
        if segments is None:
            return
        if len(segments) == 2 and segments[0] == "jobs":
            self.route = "/jobs/<id>"
            job = self._job(segments[1])
            if job is not None:
                self.route = f"/jobs/{job.id}"
                self.server.jobs.remove(job)
                logger.info("job %s: deleted on request", job.id)
                self._json(200, {"id": job.id, "status": "deleted"})
        else:
            self.route = "(unknown path)"
            self._error(404, "not found")

    def do_POST(self) -> None:
        if not self._trusted_origin() or not self._framing_ok():
            return
        segments = self._segments()
        if segments is None:
            return
        if segments != ["jobs"]:
            self.route = "(unknown path)"
            self._error(404, "not found")
            return
        self.route = "/jobs"
        limits = self.server.settings.limits
        # Every size check happens on the headers, before a byte of the body is read.
        if self.headers.get("Transfer-Encoding"):
            self._error(411, "send the file with a Content-Length (chunked uploads are not accepted)")
            return
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            self._error(411, "a Content-Length header is required")
            return
        length_text = length_text.rstrip(" \t")  # plain digits: checked by _framing_ok
        # int() of thousands of digits is slow and then refused by Python: such a length is absurd anyway.
        length = int(length_text) if len(length_text) <= 30 else IMPOSSIBLE_LENGTH + 1
        if length > limits.max_upload_bytes:
            limit = format_bytes(limits.max_upload_bytes)
            if length > IMPOSSIBLE_LENGTH:
                message = f"the upload announces an impossible size (its Content-Length); the limit is {limit}"
            else:
                message = f"the upload is {format_bytes(length)}; the limit is {limit}"
            logger.info("upload refused: %s", message)
            self._error(413, message)
            return
        if length == 0:
            self._error(400, "the upload is empty")
            return
        try:
            job = self.server.jobs.create(str(self.client_address[0]))
        except JobRefused as err:
            self._error(err.code, str(err))
            return
        self.route = f"/jobs ({job.id})"
        try:
            self._receive(job, length)
            job.upload_bytes = length
            job.unpacked_bytes = unpack_upload(job.upload, job.input, limits)
        except UploadRejected as err:
            logger.info("job %s: upload of %.1f MB rejected: %s", job.id, length / MB, err)
            self.server.jobs.remove(job)
            self._error(400, str(err))
            return
        except TimeoutError:
            # A stalled or trickling upload: its slot goes back now, whatever the client does next.
            self.server.jobs.remove(job)
            timeout = self.server.settings.request_timeout_s
            logger.info("job %s: upload not received within %.0f s; dropped", job.id, timeout)
            self._error(408, f"the upload stalled or took longer than the {timeout:.0f} s this server allows")
            return
        except BaseException:
            self.server.jobs.remove(job)
            raise
        finally:
            job.upload.unlink(missing_ok=True)
        logger.info(
            "job %s: received %.1f MB, unpacked %.1f MB; queued", job.id, job.upload_bytes / MB, job.unpacked_bytes / MB
        )
        self.server.jobs.submit(job)
        self._json(202, {"id": job.id, "status_url": f"/jobs/{job.id}"})

    def _receive(self, job: Job, length: int) -> None:
        left = length
        with open(job.upload, "xb") as f:
            while left > 0:
                chunk = self.rfile.read(min(CHUNK, left))
                if not chunk:
                    raise UploadRejected("the upload was cut short (fewer bytes than its Content-Length)")
                f.write(chunk)
                left -= len(chunk)
