"""End-to-end time and peak memory of `cinema analyze` on a 30-frame, 10-slice SAX cine (target: <= 60 s, <= 4 GB
on a 2-core CPU with the shipped model).

The cine is the bundled real exam (Sunnybrook SCD0000301, 160 x 160 x 10, 20 frames) resampled cyclically to 30
frames in time (linear interpolation between neighbouring frames), written as a 4-D NIfTI. The command runs in a
fresh Python process, exactly as a user starts it, so the time includes start-up, imports, reading, segmentation,
measurement, QC and writing every output; the memory is that process's peak resident set size.

    .venv/bin/python benchmarks/analyze.py [--weights DIR] [--frames 30] [--threads 2] [--device cpu] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cinema.analysis.analyze import example_study_path
from cinema.io import CineView, read_study, write_cine_nifti

# the child registers the sub-command itself, so this works before and after `cinema.cli` lists it
CHILD = (
    "import sys; from cinema import cli; from cinema.cli.analyze import HELP; "
    "cli.COMMANDS.setdefault('analyze', ('cinema.cli.analyze', HELP)); sys.exit(cli.main(sys.argv[1:]))"
)


def resampled_cine(n_frames: int) -> CineView:
    """The bundled exam with its cardiac cycle linearly resampled to `n_frames` frames."""
    sax = read_study(example_study_path()).sax
    source = sax.n_frames
    positions = np.arange(n_frames) * source / n_frames
    lower = np.floor(positions).astype(int)
    upper = (lower + 1) % source  # the cycle wraps around: the last frame blends into the first
    weight = (positions - lower).astype(np.float32)
    image = sax.image[..., lower] * (1.0 - weight) + sax.image[..., upper] * weight
    period = sax.frame_times_ms[-1] + (sax.frame_times_ms[-1] - sax.frame_times_ms[-2])
    times = [sax.frame_times_ms[0] + float(p) * period / source for p in positions]
    return CineView(image=image.astype(np.float32), affine=sax.affine, frame_times_ms=times, name="sax")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=None, help="model folder (default: the shipped model)")
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2, help="torch / OpenMP threads of the analysis process")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--json", default=None, help="write the numbers here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="cinema-bench-") as tmp:
        cine = Path(tmp) / "sax_30.nii.gz"
        view = resampled_cine(args.frames)
        write_cine_nifti(view, cine)
        out = Path(tmp) / "analysis"
        command = [sys.executable, "-c", CHILD, "analyze", str(cine), "-o", str(out), "--quiet"]
        command += ["--device", args.device, "--batch-size", str(args.batch_size)]
        if args.weights:
            command += ["--weights", args.weights]
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
        started = time.perf_counter()
        completed = subprocess.run(command, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if completed.returncode != 0:
            sys.exit(f"cinema analyze failed ({completed.returncode}):\n{completed.stderr}")
        # ru_maxrss of children is the largest peak among them, in KiB on Linux
        peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 1e9
        metrics = json.loads((out / "metrics.json").read_text())

    result = {
        "shape": list(view.image.shape),
        "seconds_end_to_end": round(seconds, 2),
        "peak_rss_gb": round(peak_gb, 3),
        "within_60_s": seconds <= 60.0,
        "within_4_gb": peak_gb <= 4.0,
        "threads": args.threads,
        "device": args.device,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores visible",
        "weights": args.weights or "shipped default",
        "lv_ef_pct": metrics["lv_ef_pct"],
        "n_qc_warnings": len(metrics["qc_warnings"]),
    }
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
