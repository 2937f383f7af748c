"""Benchmark heart localisation on single 3-D frames (no motion): the coarse pass against the old full sweep.

`cinema segment` on one frame cannot locate the heart from motion, so the network finds it
(`cinema.analysis.segment._heart_from_prediction`). Every shared ACDC frame (80 patients x ED and ES) is given as a
one-frame cine and located twice in the same process: with the coarse pass (first ensemble member, middle slices,
coarse spacing; falls back to the full sweep when unsure) and with the old full sweep (the whole ensemble, sliding
windows over the whole field of view of every slice). It prints one table: the fraction of ground-truth heart voxels
(RV + MYO + LV) inside the final crop of the real pass, the seconds per frame of the localisation alone, how often the
coarse pass fell back, and on a subset the end-to-end `SegmentationPredictor.segment_study` time per frame with each
localisation plus the Dice of the new labels against the old ones (and of both against the ground truth).

The old full sweep takes tens of seconds per frame on a laptop-class CPU, so by default it runs on every
``--old-every``-th frame only (every 4th: 40 frames); ``--old-every 1`` runs it on all 160.

    .venv/bin/python benchmarks/single_frame.py [--shared-dir ../shared] [--threads 1] [--old-every 4] [--e2e-frames 10]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from machine import cpu_name

from cinema.analysis import segment
from cinema.io import read_acdc_patient
from cinema.io.study import SAX, CineView, Study
from cinema.preprocess import crop_coverage

REPO_ROOT = Path(__file__).resolve().parents[1]
FULL_COVERAGE = 0.999


class _Fallbacks(logging.Handler):
    """Counts the coarse pass's "unsure" messages (each one is a fall back to the full sweep)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "coarse heart search unsure" in record.getMessage():
            self.messages.append(record.getMessage())


@contextlib.contextmanager
def old_localisation() -> Iterator[None]:
    """Make `SegmentationPredictor` locate the heart the old way (the full sweep) inside the block."""
    new = segment._heart_from_prediction
    segment._heart_from_prediction = segment._heart_full_sweep
    try:
        yield
    finally:
        segment._heart_from_prediction = new


def frames(acdc_dir: Path) -> list[tuple[str, CineView, np.ndarray]]:
    """(name, one-frame SAX cine, ground-truth labels) of every labelled ACDC frame."""
    out = []
    for folder in sorted(acdc_dir.glob("patient*")):
        study = read_acdc_patient(folder)
        sax = study.sax
        names = {study.ed_frame: "ED", study.es_frame: "ES"}
        for frame, labels in sorted(sax.labels.items()):
            view = CineView(image=sax.image[..., frame : frame + 1], affine=sax.affine, source=str(folder), name=SAX)
            out.append((f"{folder.name} {names.get(frame, frame)}", view, labels))
    return out


def coverage(view: CineView, labels: np.ndarray, model: segment.SegmentationModel, center: np.ndarray | None) -> float:
    """Fraction of the ground-truth heart inside the crop the real pass takes around ``center``."""
    _, transform = segment._model_space(view, [0], model, center)
    return crop_coverage(labels > 0, transform)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Mean Dice over the classes RV, MYO, LV (1 for a class absent from both)."""
    scores = []
    for value in (1, 2, 3):
        total = (a == value).sum() + (b == value).sum()
        scores.append(1.0 if total == 0 else float(2.0 * ((a == value) & (b == value)).sum() / total))
    return float(np.mean(scores))


def spread(n: int, step: int) -> list[int]:
    """Every ``step``-th of ``n`` frames (stored as ED, ES of each patient), taking ED and ES in turn."""
    if step <= 1:
        return list(range(n))
    picked = [k * step + (k % 2 if step % 2 == 0 else 0) for k in range(-(-n // step))]
    return [i for i in picked if i < n]


def timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(os.environ.get("CINEMA_SHARED_DIR", REPO_ROOT.parent / "shared"))
    parser.add_argument("--shared-dir", type=Path, default=default, help="folder holding data/acdc")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--old-every", type=int, default=4, help="run the old full sweep on every N-th frame")
    parser.add_argument("--e2e-frames", type=int, default=10, help="frames segmented end to end, old and new")
    parser.add_argument("--limit", type=int, default=None, help="only the first N frames (a quick check)")
    parser.add_argument("--verbose", action="store_true", help="one line per frame")
    args = parser.parse_args()
    acdc_dir = args.shared_dir / "data" / "acdc"
    if not acdc_dir.is_dir():
        parser.error(f"{acdc_dir}: no such folder (set --shared-dir)")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    model = segment.load_segmentation_model()
    predictor = segment.SegmentationPredictor(model)
    batch, amp = predictor.options.batch_size, predictor.options.amp
    cases = frames(acdc_dir)[: args.limit]
    fallbacks = _Fallbacks()
    seg_logger = logging.getLogger(segment.__name__)
    seg_logger.addHandler(fallbacks)
    seg_logger.setLevel(logging.INFO)

    old_frames = set(spread(len(cases), args.old_every))
    new_cov, new_s, old_cov, old_s, paired_new_s, fell_back = [], [], [], [], [], []
    for i, (name, view, labels) in enumerate(cases):
        before = len(fallbacks.messages)
        center, seconds = timed(segment._heart_from_prediction, view, model, 0, batch, amp)
        new_cov.append(coverage(view, labels, model, center))
        new_s.append(seconds)
        if len(fallbacks.messages) > before:
            fell_back.append(f"{name} ({fallbacks.messages[-1].split('(', 1)[1].split(')')[0]})")
        line = f"  {name:<16} new {new_cov[-1]:.4f} {seconds:6.2f} s"
        if i in old_frames:
            old_center, seconds = timed(segment._heart_full_sweep, view, model, 0, batch, amp)
            old_cov.append(coverage(view, labels, model, old_center))
            old_s.append(seconds)
            paired_new_s.append(new_s[-1])
            line += f" | old {old_cov[-1]:.4f} {seconds:6.2f} s"
        if args.verbose:
            print(line, flush=True)

    # end to end on a subset spread over the patients
    e2e = [cases[i] for i in spread(len(cases), max(1, len(cases) // max(1, args.e2e_frames)))][: args.e2e_frames]
    e2e_new_s, e2e_old_s, new_vs_old, new_vs_gt, old_vs_gt = [], [], [], [], []
    for name, view, labels in e2e:
        study = Study(views={SAX: view}, source=name)
        new, seconds = timed(predictor.segment_study, study)
        e2e_new_s.append(seconds)
        with old_localisation():
            old, seconds = timed(predictor.segment_study, study)
        e2e_old_s.append(seconds)
        new_vs_old.append(dice(new[0], old[0]))
        new_vs_gt.append(dice(new[0], labels))
        old_vs_gt.append(dice(old[0], labels))
        if args.verbose:
            print(f"  {name:<16} end to end new {e2e_new_s[-1]:.1f} s, old {seconds:.1f} s, Dice {new_vs_old[-1]:.4f}")
    seg_logger.removeHandler(fallbacks)

    new_cov, old_cov = np.array(new_cov), np.array(old_cov)
    n, n_old, n_e2e = len(cases), len(old_cov), len(e2e)
    paired = np.array(paired_new_s)

    def cov_rows(values: np.ndarray) -> list[str]:
        return [f"{values.min():.4f}", f"{values.mean():.5f}", f"{(values < FULL_COVERAGE).sum()} / {len(values)}"]

    rows = []
    old_c, new_c = cov_rows(old_cov), cov_rows(new_cov)
    rows.append(("heart voxels in crop: min", old_c[0], new_c[0]))
    rows.append(("heart voxels in crop: mean", old_c[1], new_c[1]))
    rows.append((f"frames below {FULL_COVERAGE}", old_c[2], new_c[2]))
    rows.append(("localisation s / frame: mean", f"{np.mean(old_s):.2f}", f"{np.mean(new_s):.2f}"))
    rows.append(("localisation s / frame: median", f"{np.median(old_s):.2f}", f"{np.median(new_s):.2f}"))
    rows.append(("localisation s / frame: max", f"{np.max(old_s):.2f}", f"{np.max(new_s):.2f}"))
    rows.append(
        (
            f"  on the same {n_old} frames: mean",
            f"{np.mean(old_s):.2f}",
            f"{paired.mean():.2f} ({np.mean(old_s) / paired.mean():.0f}x faster)",
        )
    )
    rows.append(("fell back to the full sweep", "-", f"{len(fell_back)} / {n}"))
    rows.append(
        (
            f"segment_study s / frame ({n_e2e} frames)",
            f"{np.mean(e2e_old_s):.2f}",
            f"{np.mean(e2e_new_s):.2f} ({np.mean(e2e_old_s) / np.mean(e2e_new_s):.1f}x faster)",
        )
    )
    rows.append(
        (
            f"Dice new vs old labels ({n_e2e} frames)",
            "",
            f"mean {np.mean(new_vs_old):.4f}, min {np.min(new_vs_old):.4f}",
        )
    )
    rows.append((f"Dice vs ground truth ({n_e2e} frames)", f"{np.mean(old_vs_gt):.4f}", f"{np.mean(new_vs_gt):.4f}"))

    print(
        f"\nCPU: {cpu_name()} ({os.cpu_count()} logical CPUs), torch threads: {torch.get_num_threads()}; "
        f"model: {model.source} ({model.n_members} members)"
    )
    print(
        f"{n} ACDC frames, each segmented as a single 3-D frame; old full sweep on every {args.old_every}-th, ED and "
        f"ES in turn ({n_old} frames); new coarse pass on all {n}\n"
    )
    width = max(len(r[0]) for r in rows)
    print(f"  {'':<{width}}  {'old full sweep':>16}  {'new coarse pass':<}")
    for label, old, new in rows:
        print(f"  {label:<{width}}  {old:>16}  {new}")
    if fell_back:
        print(f"\nfell back: {'; '.join(fell_back)}")
    worst = int(np.argmin(new_cov))
    print(f"lowest new coverage: {cases[worst][0]} {new_cov[worst]:.4f}")
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
