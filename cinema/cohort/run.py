"""Running a cohort: many exams through one model per worker process, every exam to its own row, resumable.

Each worker loads the model once (`cinema.analysis.segment.SegmentationPredictor`) and takes exams one at a time;
a reader thread reads the next exam while the model works on the current one. ``--workers 1`` runs in the
command's own process; more workers are spawned processes fed by the parent, which alone appends to the manifest
(so lines never interleave). A worker that dies (killed for memory, a crash in a native library) costs the exam it
was on, recorded as failed, and is replaced; the exams it had queued go to another worker. Workers exit when the
parent disappears (a SIGKILL of the command), so a re-run never races the old run's workers for long.

Per exam: read -> `analyze_study` -> `write_analysis` into ``exams/<id>/`` (atomic, with the output marker, the same
files as ``cinema analyze``) -> a small ED/ES thumbnail in ``thumbs/<id>.png`` -> a manifest record. Any error of an
exam (unreadable, no SAX cine, out of memory, ...) is that exam's failed record, never the end of the run. The error
is one line; the exam's own path in it is replaced by the exam id (outputs carry no path beyond the user's ids).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cinema.cohort.exams import Exam, find_exams, read_exam
from cinema.cohort.shards import Shard, resolve_device, select_shard, shard_items
from cinema.cohort.state import (
    MANIFEST,
    append_record,
    prepare_cohort_folder,
    read_records,
    release_cohort_folder,
    write_marker,
)
from cinema.io.errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["CohortSettings", "CohortSummary", "read_ahead", "run_cohort", "write_cohort_outputs"]

# exams a pool worker holds at once: the one the model works on and the one its reader thread reads
WORKER_DEPTH = 2
POLL_S = 0.5


@dataclass(frozen=True)
class CohortSettings:
    """How each worker analyses (what ``cinema analyze`` takes as options)."""

    weights: str | None = None
    device: str = "cpu"
    batch_size: int = 32
    amp: bool | None = None  # None: bf16 on CPUs that compute it natively (InferenceOptions)
    engine: str = "auto"  # InferenceOptions.engine
    threads: int | None = None  # torch threads per spawned worker (None: the cores shared out among the workers)
    debug: bool = False  # print each failed exam's traceback


@dataclass
class CohortSummary:
    folder: Path
    shard: Shard
    planned: int
    skipped: int
    ran: int = 0
    done: int = 0
    failed: int = 0
    resumed: bool = False
    device: str = "cpu"
    records: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)


def one_line_error(err: BaseException, exam: Exam | None = None) -> str:
    """An exam's error on one line, its own path replaced by its id."""
    if isinstance(err, OSError) and err.filename is not None:
        text = f"{err.filename}: {err.strerror or type(err).__name__}"
    elif isinstance(err, MemoryError):
        text = f"out of memory ({err})" if str(err) else "out of memory while reading or analysing the exam"
    else:
        text = " ".join(str(err).split()) or type(err).__name__
        if not isinstance(err, ValueError | OSError):
            text = f"{type(err).__name__}: {text}"
    if exam is not None:
        paths = {str(p) for p in exam.sources()} | {str(p.resolve()) for p in exam.sources()}
        for path in sorted(paths, key=len, reverse=True):
            if len(path) > 1:
                text = text.replace(path, exam.id)
    return text


def _peak_rss_mb() -> float | None:
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / 1024 if sys.platform != "darwin" else peak / 2**20, 1)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def model_label(weights: str | os.PathLike | None) -> str:
    """The model's name as metrics.json gives it (the weights folder's name), before the model is loaded."""
    if weights is None:
        from cinema.weights import default_weights_dir

        return Path(default_weights_dir("sax_segmentation")).name
    return Path(weights).name


class ExamRunner:
    """The model, loaded once, and one exam at a time through analysis, writing and its manifest record."""

    def __init__(self, folder: Path, settings: CohortSettings, protected: Sequence[Path] = (), worker: int = 0) -> None:
        from cinema.analysis.segment import SegmentationPredictor

        self.folder = Path(folder)
        self.settings = settings
        self.protected = list(protected)
        self.worker = worker
        self.predictor = SegmentationPredictor.from_weights(
            settings.weights,
            device=settings.device,
            batch_size=settings.batch_size,
            amp=settings.amp,
            engine=settings.engine,
        )
        self.model_name = Path(str(getattr(self.predictor.model, "source", "") or "model")).name

    def record(self, exam: Exam, status: str, seconds: float, **extra: Any) -> dict[str, Any]:
        from cinema import __version__

        return {
            "exam_id": exam.id,
            "status": status,
            "error": extra.pop("error", ""),
            "seconds": round(seconds, 3),
            "model": extra.pop("model", self.model_name),
            "cinema_version": __version__,
            "metrics": extra.pop("metrics", {}),
            "qc_warnings": extra.pop("qc_warnings", []),
            "thumbnail": extra.pop("thumbnail", None),
            "worker": self.worker,
            "peak_rss_mb": _peak_rss_mb(),
            "finished_utc": _now(),
        }

    def _thumbnail(self, exam: Exam, analysis: Any) -> str | None:
        from cinema.cohort.page import exam_thumbnail
        from cinema.io.atomic import write_bytes_atomic
        from cinema.io.study import SAX

        view = analysis.study.view(SAX)
        metrics = analysis.metrics
        try:
            png = exam_thumbnail(view.image, analysis.labels, view.spacing, metrics["ed_frame"], metrics["es_frame"])
        except Exception as err:  # a picture for the page: never worth failing the exam for
            logger.warning("exam %s: no thumbnail (%s)", exam.id, one_line_error(err, exam))
            return None
        relative = f"thumbs/{exam.id}.png"
        write_bytes_atomic(self.folder / relative, png)
        return relative

    def process(self, exam: Exam, loaded: Any, read_seconds: float) -> dict[str, Any]:
        """Analyse and write one exam (`loaded`: what `read_exam` returned, or the error it raised)."""
        from cinema.analysis.analyze import analyze_study, write_analysis
        from cinema.cohort.table import metric_scalars

        started = time.perf_counter()
        try:
            if isinstance(loaded, BaseException):
                raise loaded
            study, spatial_only = loaded
            analysis = analyze_study(study, self.predictor)
            inputs = [*exam.sources(), *self.protected]
            out = self.folder / "exams" / exam.id
            write_analysis(analysis, out, force=True, spatial_only=spatial_only, inputs=inputs)
            thumbnail = self._thumbnail(exam, analysis)
            metrics = analysis.metrics
            return self.record(
                exam,
                "done",
                read_seconds + time.perf_counter() - started,
                model=metrics.get("model") or self.model_name,
                metrics=metric_scalars(metrics),
                qc_warnings=list(metrics.get("qc_warnings") or []),
                thumbnail=thumbnail,
            )
        except Exception as err:  # every failure of one exam is its row, never the end of the run
            if self.settings.debug:
                traceback.print_exception(err, file=sys.stderr)
            return self.record(
                exam, "failed", read_seconds + time.perf_counter() - started, error=one_line_error(err, exam)
            )


_DONE = object()


def read_ahead(exams: Iterable[Exam], depth: int = 1) -> Iterator[tuple[Exam, Any, float]]:
    """(exam, `read_exam` result or its error, seconds) for each exam, reading up to `depth` exams ahead in a thread
    while the caller works on the current one (at most ``depth + 1`` exams in memory)."""
    slots = threading.Semaphore(depth + 1)
    items: queue.Queue = queue.Queue()
    stop = threading.Event()

    def reader() -> None:
        try:
            for exam in exams:
                slots.acquire()
                if stop.is_set():
                    return
                started = time.perf_counter()
                try:
                    loaded: Any = read_exam(exam)
                except Exception as err:  # the exam's failure, reported when it is its turn
                    loaded = err
                items.put((exam, loaded, time.perf_counter() - started))
        finally:
            items.put(_DONE)

    thread = threading.Thread(target=reader, name="cinema-cohort-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is _DONE:
                return
            yield item
            slots.release()
    finally:
        stop.set()
        slots.release()


# -------------------------------------------------------------------------------------------------------------------
# Spawned workers
# -------------------------------------------------------------------------------------------------------------------


def _exit_with_parent(parent_pid: int) -> None:
    while True:
        time.sleep(POLL_S)
        if os.getppid() != parent_pid:  # the command was killed: stop rather than work for nobody
            os._exit(3)


def _worker_main(
    index: int, tasks: Any, results: Any, folder: str, settings: CohortSettings, protected: list[str], parent: int
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; Ctrl-C reaches the whole process group
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    import torch

    if settings.threads:
        torch.set_num_threads(settings.threads)
    try:
        runner = ExamRunner(Path(folder), settings, [Path(p) for p in protected], worker=index)
    except Exception as err:
        results.put(("fatal", index, one_line_error(err)))
        return
    results.put(("ready", index, runner.model_name))
    for exam, loaded, seconds in read_ahead(iter(tasks.get, None)):
        results.put(("done", index, runner.process(exam, loaded, seconds)))


@dataclass
class _Worker:
    index: int
    process: Any
    tasks: Any
    outstanding: deque = field(default_factory=deque)
    ready: bool = False


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _run_pool(
    todo: Sequence[Exam],
    folder: Path,
    settings: CohortSettings,
    protected: Sequence[Path],
    workers: int,
    on_record: Callable[[dict[str, Any]], None],
) -> None:
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    if settings.threads is None:
        settings = CohortSettings(**{**settings.__dict__, "threads": max(1, _available_cores() // workers)})
    results = context.Queue()
    pending: deque[Exam] = deque(todo)
    pool: dict[int, _Worker] = {}
    label = model_label(settings.weights)
    next_index = 0

    def start() -> None:
        nonlocal next_index
        tasks = context.Queue()
        process = context.Process(
            target=_worker_main,
            args=(next_index, tasks, results, str(folder), settings, [str(p) for p in protected], os.getpid()),
            name=f"cinema-cohort-worker-{next_index}",
            daemon=True,
        )
        process.start()
        pool[next_index] = _Worker(next_index, process, tasks)
        next_index += 1

    def feed(worker: _Worker) -> None:
        while len(worker.outstanding) < WORKER_DEPTH and pending:
            exam = pending.popleft()
            worker.outstanding.append(exam)
            worker.tasks.put(exam)

    def feed_all() -> None:
        """One exam at a time to each worker in turn, so that a short cohort is shared out evenly."""
        hungry = True
        while pending and hungry:
            hungry = False
            for worker in pool.values():
                if pending and len(worker.outstanding) < WORKER_DEPTH:
                    exam = pending.popleft()
                    worker.outstanding.append(exam)
                    worker.tasks.put(exam)
                    hungry = True

    def handle(message: tuple[str, int, Any]) -> None:
        kind, index, payload = message
        worker = pool.get(index)
        if kind == "fatal":
            raise ValueError(payload)
        if kind == "ready" and worker is not None:
            worker.ready = True
        elif kind == "done":
            if worker is not None:
                for exam in list(worker.outstanding):
                    if exam.id == payload["exam_id"]:
                        worker.outstanding.remove(exam)
                        break
            on_record(payload)
            if worker is not None:
                feed(worker)

    def bury(worker: _Worker) -> None:
        """A worker died: the exam it was on fails, its queued exams go back to the others."""
        del pool[worker.index]
        code = worker.process.exitcode
        if not worker.ready and not worker.outstanding:
            return
        if not worker.ready:
            raise RuntimeError(f"a worker process failed to start (exit code {code})")
        if worker.outstanding:
            exam = worker.outstanding.popleft()
            how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            error = f"the worker process died ({how}; out of memory?) while reading or analysing this exam"
            on_record(
                {
                    "exam_id": exam.id,
                    "status": "failed",
                    "error": error,
                    "seconds": None,
                    "model": label,
                    "cinema_version": _version(),
                    "metrics": {},
                    "qc_warnings": [],
                    "thumbnail": None,
                    "worker": worker.index,
                    "peak_rss_mb": None,
                    "finished_utc": _now(),
                }
            )
            pending.extendleft(reversed(worker.outstanding))
        if pending:
            start()
            feed_all()

    finished = False
    try:
        for _ in range(min(workers, len(todo))):
            start()
        feed_all()
        while pending or any(w.outstanding for w in pool.values()):
            with contextlib.suppress(queue.Empty):
                handle(results.get(timeout=POLL_S))
            for worker in [w for w in pool.values() if not w.process.is_alive()]:
                with contextlib.suppress(queue.Empty):  # what it sent before dying counts
                    while True:
                        handle(results.get(timeout=0.1))
                bury(worker)
            if pending and not pool:
                start()
                feed_all()
        finished = True
    finally:
        # done: let the workers end on their own; interrupted or failed: stop them now, mid-exam (nothing they write
        # is half-written, and their temporaries are removed by the next run)
        for worker in pool.values():
            if finished:
                with contextlib.suppress(Exception):
                    worker.tasks.put(None)
            else:
                worker.process.terminate()
        deadline = time.monotonic() + 10
        for worker in pool.values():
            worker.process.join(timeout=max(0.1, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(timeout=5)


def _version() -> str:
    from cinema import __version__

    return __version__


# -------------------------------------------------------------------------------------------------------------------
# The command
# -------------------------------------------------------------------------------------------------------------------


def write_cohort_outputs(
    folder: Path, records: Sequence[dict[str, Any]], thumbnail_folder: Callable[[str], Path | None] | None = None
) -> None:
    """``cohort.csv`` (+ ``cohort.parquet``) and ``cohort.html`` of `records`, each written atomically.

    ``thumbnail_folder``: exam id -> the cohort folder holding its thumbnail (default: `folder`).
    """
    from cinema.cohort.page import render_cohort_html
    from cinema.cohort.table import record_row, write_table_files
    from cinema.io.atomic import write_text_atomic

    by_id = {r["exam_id"]: r for r in records}

    def thumbnail(exam_id: str) -> bytes | None:
        relative = by_id.get(exam_id, {}).get("thumbnail")
        home = folder if thumbnail_folder is None else thumbnail_folder(exam_id)
        if not relative or home is None:
            return None
        try:
            return (home / relative).read_bytes()
        except OSError:
            return None

    rows = [record_row(r) for r in sorted(records, key=lambda r: r["exam_id"])]
    write_table_files(folder, rows)
    write_text_atomic(folder / "cohort.html", render_cohort_html(rows, thumbnail))


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SLURM's time limit and `kill` send SIGTERM: end like Ctrl-C (workers stopped, the table written)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_cohort(
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    settings: CohortSettings | None = None,
    workers: int = 1,
    shard: str | None = None,
    retry_failed: bool = False,
    environ: dict[str, str] | None = None,
    log: Callable[[str], None] | None = None,
) -> CohortSummary:
    """Analyse every exam of `inputs` planned for this shard that the cohort folder has not finished yet.

    Args:
        inputs: exams, folders of exams, or ``cinema index`` files (`cinema.cohort.exams`).
        out: the cohort folder: created, or resumed when it is one of the same command (inputs, weights, shard).
        settings: model and inference options.
        workers: worker processes (1: this process).
        shard: ``"I/N"``; None takes it from SLURM / torchrun variables (`cinema.cohort.shards`).
        retry_failed: analyse again the exams whose latest record failed.
        environ: the environment to read the shard from (default: os.environ).
        log: called with a line per finished exam and for notes (None: silent).
    """
    from cinema.io.atomic import check_apart_from_inputs

    settings = settings or CohortSettings()
    if workers < 1:
        raise InputError(f"--workers must be >= 1, got {workers}")
    if not inputs:
        raise InputError("no INPUT given: name exams, folders of exams or `cinema index` files")
    if settings.weights is not None and not Path(settings.weights).exists():
        raise FileNotFoundError(f"weights not found: {settings.weights}")
    the_shard = select_shard(shard, environ)
    settings = CohortSettings(**{**settings.__dict__, "device": resolve_device(settings.device, environ)})
    exams = find_exams(inputs)
    out = Path(out)
    protected = [Path(i) for i in inputs] + ([Path(settings.weights)] if settings.weights else [])
    check_apart_from_inputs(out, [*protected, *(p for e in exams for p in e.sources())], folder=True)
    identity = {
        "inputs": sorted(str(Path(i).expanduser().resolve()) for i in inputs),
        "weights": None if settings.weights is None else str(Path(settings.weights).expanduser().resolve()),
        "shard": [the_shard.index, the_shard.count],
    }
    folder, resumed = prepare_cohort_folder(out, identity, the_shard.count, the_shard.folder_name)
    planned = shard_items(exams, the_shard, key=lambda e: e.id)
    write_marker(folder, {**identity, "exams": [e.id for e in planned]})
    manifest = folder / MANIFEST
    records = read_records(manifest)
    todo = [e for e in planned if e.id not in records or (retry_failed and records[e.id]["status"] == "failed")]
    summary = CohortSummary(
        folder=folder,
        shard=the_shard,
        planned=len(planned),
        skipped=len(planned) - len(todo),
        resumed=resumed,
        device=settings.device,
        records=records,
    )
    say = log or (lambda line: None)
    if the_shard.count > 1 or the_shard.source != "single":
        say(f"shard {the_shard} ({the_shard.source}): {len(planned)} of {len(exams)} exams -> {folder}")
    if summary.skipped:
        say(f"resuming: {summary.skipped} exam(s) already finished, {len(todo)} to analyse")

    def on_record(record: dict[str, Any]) -> None:
        append_record(manifest, record)
        records[record["exam_id"]] = record
        summary.ran += 1
        state = f"done in {record['seconds']:.1f} s" if record["status"] == "done" else f"failed: {record['error']}"
        say(f"[{summary.ran}/{len(todo)}] {record['exam_id']}: {state}")

    try:
        with _sigterm_as_interrupt():
            if todo and workers == 1:
                if settings.threads:
                    import torch

                    torch.set_num_threads(settings.threads)
                runner = ExamRunner(folder, settings, protected)
                for exam, loaded, seconds in read_ahead(todo):
                    on_record(runner.process(exam, loaded, seconds))
            elif todo:
                _run_pool(todo, folder, settings, protected, workers, on_record)
    except KeyboardInterrupt:
        write_cohort_outputs(folder, [records[e.id] for e in planned if e.id in records])
        raise
    except Exception:
        if not resumed and summary.ran == 0:  # e.g. weights that do not load: leave no folder to refuse next time
            release_cohort_folder(folder, out)
        raise
    write_cohort_outputs(folder, [records[e.id] for e in planned if e.id in records])
    finished = [records[e.id] for e in planned if e.id in records]
    summary.done = sum(1 for r in finished if r["status"] == "done")
    summary.failed = sum(1 for r in finished if r["status"] == "failed")
    return summary
