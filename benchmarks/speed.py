"""End-to-end speed of the command line on real exams, one table per run: seconds and peak RSS per case and precision.

Each case runs the `cinema` command in a fresh process, as a user starts it, so the time includes start-up, imports,
reading, model loading, segmentation, measurement, the report and writing:

- ``single frame``: ``cinema segment`` on one ACDC frame (patient001 ED, one 3-D NIfTI, no motion);
- ``2-frame pair``: ``cinema analyze`` on an ACDC patient folder (ED and ES frames);
- ``20-frame cine``: ``cinema analyze`` on the bundled Sunnybrook exam (DICOM-derived, 10 slices);
- ``30-frame cine``: the same exam resampled cyclically to 30 frames (``benchmarks/analyze.py``), as a 4-D NIfTI.

Every case runs in each variant: ``fp32`` (PyTorch eager, ``--engine torch``), ``onnxruntime`` and ``openvino`` (fp32
by that engine, where it is installed; the exported network is cached once before timing, as a user's first run
leaves it) and ``bf16`` (``--precision bf16``, where the CPU has AMX or AVX-512 BF16). The variants
alternate within each repeat so that a busy machine slows all alike; the table gives the median of ``--repeats`` runs
and the ratio to ``fp32``.

    .venv/bin/python benchmarks/speed.py [--shared-dir ../shared] [--repeats 3] [--threads 2] [--cases ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from analyze import resampled_cine
from machine import bf16_flags, describe

from cinema.analysis.analyze import example_study_path
from cinema.io import write_cine_nifti

REPO_ROOT = Path(__file__).resolve().parents[1]
CASES = ("single frame", "2-frame pair", "20-frame cine", "30-frame cine")
VARIANTS = {
    "fp32": ["--engine", "torch", "--precision", "fp32"],
    "onnxruntime": ["--engine", "onnxruntime", "--precision", "fp32"],
    "openvino": ["--engine", "openvino", "--precision", "fp32"],
    "bf16": ["--engine", "torch", "--precision", "bf16"],
}
# the child reports its own peak RSS (KiB on Linux) into the file named by CINEMA_BENCH_RSS
CHILD = (
    "import os, resource, sys; from cinema import cli; code = cli.main(sys.argv[1:]); "
    "open(os.environ['CINEMA_BENCH_RSS'], 'w').write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)); "
    "sys.exit(code)"
)


def case_commands(shared: Path, tmp: Path) -> dict[str, list[str]]:
    """The command line (after ``cinema``) of every case; outputs go under `tmp`."""
    acdc = shared / "data" / "acdc" / "patient001"
    cine30 = tmp / "sax_30.nii.gz"
    write_cine_nifti(resampled_cine(30), cine30)
    return {
        "single frame": ["segment", str(acdc / "patient001_frame01.nii.gz"), str(tmp / "single.nii.gz")],
        "2-frame pair": ["analyze", str(acdc), "-o", str(tmp / "pair"), "--quiet"],
        "20-frame cine": ["analyze", str(example_study_path()), "-o", str(tmp / "cine20"), "--quiet"],
        "30-frame cine": ["analyze", str(cine30), "-o", str(tmp / "cine30"), "--quiet"],
    }


def run_once(arguments: list[str], threads: int, tmp: Path) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of one fresh ``cinema`` process; outputs are replaced with --force."""
    rss_file = tmp / "rss.txt"
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), CINEMA_BENCH_RSS=str(rss_file))
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, *arguments, "--force"], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"cinema {' '.join(arguments)} failed ({done.returncode}):\n{done.stderr}")
    return seconds, int(rss_file.read_text()) / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_shared = Path(os.environ.get("CINEMA_SHARED_DIR", REPO_ROOT.parent / "shared"))
    parser.add_argument("--shared-dir", type=Path, default=default_shared, help="folder holding data/acdc")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=tuple(VARIANTS),
        default=None,
        help="default: fp32, onnxruntime and openvino where installed, bf16 where the CPU has AMX or AVX-512 BF16",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    if not (args.shared_dir / "data" / "acdc").is_dir():
        parser.error(f"{args.shared_dir}/data/acdc: no such folder (set --shared-dir)")
    from cinema.models.engines import engine_available

    variants = args.variants or [
        v
        for v in VARIANTS
        if v == "fp32" or (v in ("onnxruntime", "openvino") and engine_available(v)) or (v == "bf16" and bf16_flags())
    ]
    header = describe()

    runs: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="cinema-speed-") as folder:
        tmp = Path(folder)
        os.environ["CINEMA_CACHE_DIR"] = str(tmp / "cache")  # the exported network, as a user's first run leaves it
        commands = case_commands(args.shared_dir, tmp)
        exporting = [v for v in variants if v in ("onnxruntime", "openvino")]
        if exporting:  # both read the same exported file
            run_once(commands["single frame"] + VARIANTS[exporting[0]], args.threads, tmp)
        for case in args.cases:
            for _ in range(args.repeats):
                for variant in variants:
                    runs.setdefault((case, variant), []).append(
                        run_once(commands[case] + VARIANTS[variant], args.threads, tmp)
                    )

    print(f"\n{header}; torch threads per process: {args.threads}; median of {args.repeats} runs")
    print(f"{'case':<15} {'variant':<12} {'seconds':>8} {'min s':>7} {'peak RSS':>9}  vs fp32")
    results = []
    for (case, variant), values in runs.items():
        seconds = statistics.median(s for s, _ in values)
        fp32 = statistics.median(s for s, _ in runs.get((case, "fp32"), values))
        rss = max(r for _, r in values)
        fastest = min(s for s, _ in values)
        print(f"{case:<15} {variant:<12} {seconds:8.2f} {fastest:7.2f} {rss:7.0f}MB  {fp32 / seconds:.2f}x")
        results.append({"case": case, "variant": variant, "median_s": seconds, "peak_rss_mb": rss, "runs": values})
    load_after = os.getloadavg()[0]
    print(f"load average after: {load_after:.1f} (others' work on a shared machine inflates wall times)")
    if args.json:
        args.json.write_text(json.dumps({"machine": header, "threads": args.threads, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
