"""Throughput of `cinema cohort` against a loop of `cinema analyze` subprocesses over the same exams, on this CPU.

Two exam sets: 2-frame exams (ACDC patient folders, ED + ES) and 20-frame exams (the Sunnybrook DICOM exams of the
shared data, else the bundled example). Each set goes through, in fresh processes as a user runs them:

- ``loop``: ``cinema analyze EXAM -o OUT --quiet`` once per exam, one after the other (the model loaded per exam);
- ``cohort --workers 1`` and ``cohort --workers 2``: one command over the folder of exams (the model loaded once per
  worker; the next exam read while the model works).

Reported: wall time, exams per hour, the speed-up over the loop, and the peak resident set size of each process that
holds a model (the command for the loop and ``--workers 1``, each worker for ``--workers 2``, from the manifest).
torch threads: the loop and ``--workers 1`` use every core, ``--workers 2`` shares them out (one each on 2 cores).

    .venv/bin/python benchmarks/cohort.py [--acdc 6] [--sunnybrook 2] [--weights DIR] [--workers 1 2] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_name

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CINEMA_SHARED_DIR", REPO_ROOT.parent / "shared"))
# runs the CLI and writes the process's own peak RSS (KiB on Linux) to the file named by CINEMA_BENCH_RSS
CHILD = (
    "import os, resource, sys; from cinema import cli; code = cli.main(sys.argv[1:]); "
    "open(os.environ['CINEMA_BENCH_RSS'], 'w').write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)); "
    "sys.exit(code)"
)


def exam_sets(n_acdc: int, n_sunnybrook: int, root: Path) -> dict[str, list[Path]]:
    """Folders of linked exams: {"2-frame (ACDC)": [...], "20-frame (Sunnybrook DICOM)": [...]}."""
    sets: dict[str, list[Path]] = {}
    acdc = sorted(p for p in (SHARED / "data" / "acdc").glob("patient*") if p.is_dir())[:n_acdc]
    if acdc:
        sets["2-frame (ACDC)"] = acdc
    sunnybrook = sorted(p / "dicom" for p in (SHARED / "data" / "sunnybrook").glob("SCD*") if (p / "dicom").is_dir())
    if not sunnybrook:
        from cinema.analysis.analyze import example_study_path

        sunnybrook = [example_study_path()]
    if n_sunnybrook:
        sets["20-frame (Sunnybrook)"] = sunnybrook[:n_sunnybrook]
    linked = {}
    for name, exams in sets.items():
        folder = root / ("acdc" if "ACDC" in name else "sunnybrook")
        folder.mkdir()
        for exam in exams:
            label = exam.parent.name if exam.name == "dicom" else exam.name
            (folder / label).symlink_to(exam.resolve(), target_is_directory=True)
        linked[name] = sorted(folder.iterdir())
    return linked


def _run(argv: list[str], threads: int | None, rss_file: Path) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of one CLI process."""
    env = dict(os.environ, CINEMA_BENCH_RSS=str(rss_file))
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, *argv], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv[:2])} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds, int(rss_file.read_text()) / 1024


def bench_loop(exams: list[Path], out: Path, weights: str | None, cores: int) -> dict:
    total, peaks = 0.0, []
    for exam in exams:
        argv = ["analyze", str(exam), "-o", str(out / exam.name), "--quiet"]
        argv += ["--weights", weights] if weights else []
        seconds, peak = _run(argv, cores, out.parent / f"rss-{out.name}-{exam.name}")
        total += seconds
        peaks.append(peak)
    return {"seconds": total, "peak_rss_mb": [round(max(peaks))]}


def bench_cohort(folder: Path, out: Path, weights: str | None, workers: int, cores: int) -> dict:
    argv = ["cohort", str(folder), "-o", str(out), "--workers", str(workers), "--quiet"]
    argv += ["--weights", weights] if weights else []
    seconds, parent_peak = _run(argv, cores if workers == 1 else None, out.parent / f"rss-{out.name}")
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines() if line.strip()]
    failed = [r["exam_id"] for r in records if r["status"] != "done"]
    if failed:
        sys.exit(f"cohort: exams failed: {failed}")
    if workers == 1:
        peaks = [parent_peak]
    else:
        by_worker: dict[int, float] = {}
        for record in records:
            by_worker[record["worker"]] = max(by_worker.get(record["worker"], 0.0), record["peak_rss_mb"] or 0.0)
        peaks = [by_worker[w] for w in sorted(by_worker)]
    return {"seconds": seconds, "peak_rss_mb": [round(p) for p in peaks], "command_peak_rss_mb": round(parent_peak)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--acdc", type=int, default=6, help="2-frame ACDC exams (0: none)")
    parser.add_argument("--sunnybrook", type=int, default=2, help="20-frame Sunnybrook exams (0: none)")
    parser.add_argument("--weights", default=None, help="model folder (default: the shipped model)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--json", default=None, help="write the numbers here")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

    results = []
    with tempfile.TemporaryDirectory(prefix="cinema-bench-cohort-") as tmp:
        root = Path(tmp)
        for name, exams in exam_sets(args.acdc, args.sunnybrook, root).items():
            folder = exams[0].parent
            runs = {"loop of cinema analyze": bench_loop(exams, root / f"loop-{folder.name}", args.weights, cores)}
            for workers in args.workers:
                out = root / f"cohort-{folder.name}-{workers}"
                runs[f"cinema cohort --workers {workers}"] = bench_cohort(folder, out, args.weights, workers, cores)
            loop_s = runs["loop of cinema analyze"]["seconds"]
            for mode, run in runs.items():
                run.update(
                    exams=name,
                    n_exams=len(exams),
                    mode=mode,
                    exams_per_hour=round(3600 * len(exams) / run["seconds"], 1),
                    speedup=round(loop_s / run["seconds"], 2),
                    seconds=round(run["seconds"], 1),
                )
                results.append(run)
                print(json.dumps(run), file=sys.stderr, flush=True)

    header = f"CPU: {cpu_name()}, {cores} cores; model: {args.weights or 'shipped'}"
    lines = [
        header,
        "",
        "| exams | n | mode | wall s | exams/hour | vs loop | peak RSS per model process (MB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        peaks = ", ".join(str(p) for p in r["peak_rss_mb"])
        lines.append(
            f"| {r['exams']} | {r['n_exams']} | {r['mode']} | {r['seconds']} | {r['exams_per_hour']} | "
            f"{r['speedup']}x | {peaks} |"
        )
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_name(), "cores": cores, "results": results}, indent=2))


if __name__ == "__main__":
    main()
