"""The HTTP server behind `cinema serve`: standard library only (`http.server`), one analysis at a time.

Routes (everything else is 404; a path with ``.``/``..`` segments, encoded or not, is 400):

- ``GET /``, ``/app.js``, ``/app.css``: the page;
- ``POST /jobs``: the exam as the raw request body (zip or NIfTI); 202 with the job's status URL, or 400 / 411 /
  413 / 503 with ``{"error": "..."}``;
- ``GET /jobs/<id>``: the job's status (and, when done, its headline numbers and file URLs);
- ``GET /jobs/<id>/<file>``: one file of the job's analysis output folder (no listings, no sub-paths);
- ``DELETE /jobs/<id>``: remove the job and its folder now.

Each job lives in its own fresh folder under the server's temporary folder: the upload is unpacked there, analysed,
and the unpacked exam is deleted as soon as the analysis ends; the outputs are deleted `ServeSettings.job_ttl_s`
after the analysis, on DELETE, or when the server closes (the whole temporary folder goes). Job ids are random
tokens. Logs name jobs by id and give sizes and times only: never a file name from an upload or a DICOM field.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import queue
import re
import secrets
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from cinema.serve.page import APP_CSS, APP_JS, index_html
from cinema.serve.upload import CHUNK, MB, Limits, UploadRejected, find_exam, redact, remove_tree, unpack_upload

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "CinemaServer", "Job", "ServeSettings", "is_loopback", "make_server"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
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
        work_dir: where the server's temporary folder is made (default: the system's temporary folder).
        weights, device, batch_size, amp: as for `cinema analyze`.
    """

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    limits: Limits = field(default_factory=Limits)
    job_ttl_s: float = 3600.0
    max_active_jobs: int = 4
    work_dir: str | None = None
    weights: str | None = None
    device: str = "cpu"
    batch_size: int = 32
    amp: bool = False


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

    def create(self) -> Job | None:
        """A new job with a fresh folder, or None when `max_active_jobs` are already active."""
        with self._lock:
            active = sum(job.status in ("receiving", "queued", "running") for job in self._jobs.values())
            if active >= self.settings.max_active_jobs:
                return None
            job_id = secrets.token_urlsafe(18)
            folder = Path(tempfile.mkdtemp(prefix="job-", dir=self.root))
            job = Job(job_id, folder)
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
        from cinema.analysis.analyze import analyze_study, write_analysis
        from cinema.io import read_study
        from cinema.io.datasets import nifti_shape
        from cinema.io.read import detect_input_kind
        from cinema.io.study import SAX

        exam = find_exam(job.input)
        kind = detect_input_kind(exam)
        study = read_study(exam, view=SAX if kind == "nifti" else None)
        study.source = "upload"  # the job folder's path (with the archive's folder names) must not reach messages
        study.view(SAX)  # a clear error for an exam without a short-axis cine
        analysis = analyze_study(study, self.model, batch_size=self.settings.batch_size, amp=self.settings.amp)
        spatial_only = kind == "nifti" and len(nifti_shape(exam)) == 3
        write_analysis(analysis, job.out, spatial_only=spatial_only)
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
            names = sorted(p.name for p in job.out.iterdir()) if job.out.is_dir() else []
            reply["files"] = {name: f"/jobs/{job.id}/{name}" for name in names}
            reply["report_url"] = f"/jobs/{job.id}/report.html"
        return reply


class CinemaServer(ThreadingHTTPServer):
    """`ThreadingHTTPServer` with the job runner; `server_close` also deletes every job folder."""

    daemon_threads = True

    def __init__(self, settings: ServeSettings, model: Any):
        self.settings = settings
        self.root = Path(tempfile.mkdtemp(prefix="cinema-serve-", dir=settings.work_dir))
        try:
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
    """Load the segmentation model once (unless given) and bind the server; call ``serve_forever()`` on it."""
    if model is None:
        from cinema.analysis.segment import load_segmentation_model

        model = load_segmentation_model(settings.weights, device=settings.device)
    return CinemaServer(settings, model)


class _Handler(BaseHTTPRequestHandler):
    server: CinemaServer
    server_version = "cinema-serve"
    sys_version = ""  # do not advertise the Python version
    timeout = 120  # seconds a stalled client may hold a connection between reads
    route = "-"  # what the request was, for the log (never the raw path: it is the client's text)

    # -- logging: job ids, status codes and sizes only -------------------------------------------------------------

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        code = getattr(code, "value", code)
        # The page polls its job every second: successful reads are debug noise, everything else is worth a line.
        level = logging.DEBUG if self.command in ("GET", "HEAD") and str(code).startswith("2") else logging.INFO
        logger.log(level, "%s %s -> %s", self.command, self.route, code)

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

    # -- request checks --------------------------------------------------------------------------------------------

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

    def _job(self, job_id: str) -> Job | None:
        job = self.server.jobs.get(job_id) if JOB_ID.match(job_id) else None
        if job is None:
            self._error(404, "no such job (finished jobs are removed after a while)")
        return job

    # -- methods ---------------------------------------------------------------------------------------------------

    def do_GET(self) -> None:
        if not self._trusted_origin():
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
        # Only a plain file listed directly in the output folder: no sub-paths, no links, no listings.
        if out is None or name not in os.listdir(out):
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
        if not self._trusted_origin():
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
        if not self._trusted_origin():
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
        try:
            length = int(length_text)
        except ValueError:
            length = -1
        if length < 0:
            self._error(400, "bad Content-Length header")
            return
        if length > limits.max_upload_bytes:
            logger.info("upload refused: %.1f MB is over the %d MB limit", length / MB, limits.max_upload_bytes // MB)
            self._error(413, f"the upload is {length / MB:.1f} MB; the limit is {limits.max_upload_bytes // MB} MB")
            return
        if length == 0:
            self._error(400, "the upload is empty")
            return
        job = self.server.jobs.create()
        if job is None:
            self._error(503, "the server is busy with other exams; try again in a few minutes")
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
