"""Regional measurements (`cinema.analysis.regional`): ACDC group comparison and the time they add to `cinema analyze`.

(a) On every shared ACDC patient, from the ground-truth ED/ES labels: global and segmental wall thickness,
    thickening and circumferential strain, summarised per group (DCM, HCM, MINF, NOR, RV) as means with 95 %
    confidence intervals (t distribution over patients), plus the comparisons the groups are defined by: HCM vs NOR
    thickness, MINF reduced (and more uneven) thickening, DCM low global thickening.
(c) With --held-out: the shipped segmentation on the 15 ACDC patients held out from its training (the `val` list
    of its recipe.json), compared with the same measurements from their manual labels (model - manual: mean
    difference and 95 % limits of agreement per exam, and for segment mean thickness over all segments).
(b) On the bundled example exam (Sunnybrook SCD0000301, 20 frames x 10 slices) with the shipped model: the time of
    `analyze_study` + `write_analysis` (segmentation, measurements, QC, report) and, in the same process, the time
    of the regional part (regional_measurements, its QC, the bullseye and rate plots).

    .venv/bin/python benchmarks/regional.py [--acdc ../shared/data/acdc] [--skip-analyze] [--skip-acdc] [--held-out]
        [--threads 2] [--json OUT]

No patient identifiers are printed: only group-level numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import stats

from cinema.analysis.regional import regional_analysis
from cinema.io.datasets import read_acdc_patient

GROUPS = ("NOR", "HCM", "DCM", "MINF", "RV")
DEFAULT_ACDC = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "acdc"


def mean_ci(values: list[float]) -> tuple[float, float, float, int]:
    """Mean and its 95 % confidence interval (t distribution), and n."""
    data = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    n = data.size
    if n == 0:
        return np.nan, np.nan, np.nan, 0
    mean = float(data.mean())
    if n == 1:
        return mean, np.nan, np.nan, 1
    half = float(stats.t.ppf(0.975, n - 1) * data.std(ddof=1) / np.sqrt(n))
    return mean, mean - half, mean + half, n


def welch(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Difference of means (a - b), its 95 % CI (Welch) and the two-sided p value."""
    a_arr, b_arr = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    a_arr, b_arr = a_arr[np.isfinite(a_arr)], b_arr[np.isfinite(b_arr)]
    va, vb = a_arr.var(ddof=1) / a_arr.size, b_arr.var(ddof=1) / b_arr.size
    dof = (va + vb) ** 2 / (va**2 / (a_arr.size - 1) + vb**2 / (b_arr.size - 1))
    diff = float(a_arr.mean() - b_arr.mean())
    half = float(stats.t.ppf(0.975, dof) * np.sqrt(va + vb))
    p = float(stats.ttest_ind(a_arr, b_arr, equal_var=False).pvalue)
    return diff, diff - half, diff + half, p


def exam_features(result: dict) -> dict[str, float]:
    """Per-exam numbers for the group table (None -> NaN)."""

    def number(value: float | None) -> float:
        return np.nan if value is None else float(value)

    segments = result["segments"]
    ed_mean = [number(s["ed"]["thickness_mean_mm"]) for s in segments]
    ed_max = [number(s["ed"]["thickness_max_mm"]) for s in segments]
    thickening = np.array([number(s["thickening_pct"]) for s in segments])
    finite = thickening[np.isfinite(thickening)]
    return {
        "ed_thickness_mean_mm": number(result["global"]["ed_thickness_mean_mm"]),
        "ed_segment_max_mm": float(np.nanmax(ed_max)) if np.isfinite(ed_max).any() else np.nan,
        "ed_segment_mean_max_mm": float(np.nanmax(ed_mean)) if np.isfinite(ed_mean).any() else np.nan,
        "radial_strain_pct": number(result["global"]["radial_strain_pct"]),
        "circumferential_strain_pct": number(result["global"]["circumferential_strain_pct"]),
        "min_segment_thickening_pct": float(finite.min()) if finite.size else np.nan,
        "segments_thickening_below_10pct": float((finite < 10).sum()) if finite.size else np.nan,
        "thickening_sd_across_segments_pct": float(finite.std(ddof=1)) if finite.size > 1 else np.nan,
    }


def acdc_table(acdc: Path) -> dict:
    per_group: dict[str, list[dict[str, float]]] = {g: [] for g in GROUPS}
    seconds = []
    for folder in sorted(p for p in acdc.iterdir() if (p / "Info.cfg").is_file()):
        study = read_acdc_patient(folder)
        view = study.sax
        started = time.perf_counter()
        result = regional_analysis(view.labels[study.ed_frame], view.labels[study.es_frame], view.affine)
        seconds.append(time.perf_counter() - started)
        per_group[study.metadata["group"]].append(exam_features(result))
    keys = list(next(iter(per_group.values()))[0])
    table = {
        group: {key: mean_ci([row[key] for row in rows]) for key in keys} for group, rows in per_group.items() if rows
    }
    print(f"\n(a) ACDC ground truth, {sum(len(r) for r in per_group.values())} patients; mean [95 % CI]")
    header = f"{'':38s}" + "".join(f"{g + ' (n=' + str(len(per_group[g])) + ')':>22s}" for g in GROUPS)
    print(header)
    for key in keys:
        cells = []
        for group in GROUPS:
            mean, low, high, _ = table[group][key]
            cells.append(f"{mean:7.1f} [{low:5.1f}, {high:5.1f}]")
        print(f"{key:38s}" + "".join(f"{c:>22s}" for c in cells))

    def column(group: str, key: str) -> list[float]:
        return [row[key] for row in per_group[group]]

    comparisons = {
        "HCM - NOR, ED wall thickness mean (mm)": welch(
            column("HCM", "ed_thickness_mean_mm"), column("NOR", "ed_thickness_mean_mm")
        ),
        "HCM - NOR, thickest segment mean (mm)": welch(
            column("HCM", "ed_segment_mean_max_mm"), column("NOR", "ed_segment_mean_max_mm")
        ),
        "MINF - NOR, least-thickening segment (%)": welch(
            column("MINF", "min_segment_thickening_pct"), column("NOR", "min_segment_thickening_pct")
        ),
        "MINF - NOR, global radial strain (%)": welch(
            column("MINF", "radial_strain_pct"), column("NOR", "radial_strain_pct")
        ),
        "DCM - NOR, global radial strain (%)": welch(
            column("DCM", "radial_strain_pct"), column("NOR", "radial_strain_pct")
        ),
        "DCM - NOR, global circumferential strain (%)": welch(
            column("DCM", "circumferential_strain_pct"), column("NOR", "circumferential_strain_pct")
        ),
    }
    print("\nDifferences of group means [95 % CI, Welch], p")
    for name, (diff, low, high, p) in comparisons.items():
        print(f"  {name:46s} {diff:+6.1f} [{low:+6.1f}, {high:+6.1f}]  p = {p:.1g}")
    print(f"\nregional_analysis per exam (ED + ES): median {np.median(seconds):.2f} s, max {max(seconds):.2f} s")
    return {
        "groups": {g: {k: list(v) for k, v in t.items()} for g, t in table.items()},
        "comparisons": {k: list(v) for k, v in comparisons.items()},
        "seconds_per_exam_median": float(np.median(seconds)),
    }


def analyze_timing(threads: int) -> dict:
    """Analyze time of the bundled example and the regional part of it, in one process."""
    import torch

    from cinema.analysis.analyze import (
        analyze_study,
        example_study_path,
        regional_measurements,
        write_analysis,
    )
    from cinema.analysis.qc import regional_warnings
    from cinema.analysis.report import bullseye_png, rate_plot_png
    from cinema.analysis.segment import SegmentationPredictor
    from cinema.io import read_study

    torch.set_num_threads(threads)
    predictor = SegmentationPredictor.from_weights(None)
    study = read_study(example_study_path())
    started = time.perf_counter()
    analysis = analyze_study(study, predictor)
    with tempfile.TemporaryDirectory(prefix="cinema-bench-") as tmp:
        write_analysis(analysis, Path(tmp) / "out")
    total = time.perf_counter() - started

    view = study.sax
    metrics = analysis.metrics
    ed, es = metrics["ed_frame"], metrics["es_frame"]
    rr = study.metadata["scanner"]["rr_interval_ms"]
    repeats = []
    for _ in range(5):
        started = time.perf_counter()
        regional = regional_measurements(analysis.labels, ed, es, view, analysis.curves["lv"], rr_interval_ms=rr)
        regional_warnings(regional)
        bullseye_png(regional["segments"])
        rate_plot_png(regional["volume_rates"], metrics["es_time_ms"])
        repeats.append(time.perf_counter() - started)
    part = float(np.median(repeats))
    print(f"\n(b) bundled example ({view.n_frames} frames x {view.spatial_shape[2]} slices), {threads} torch threads")
    print(f"  analyze_study + write_analysis: {total:.1f} s (regional part included)")
    print(f"  regional part (median of 5): {part:.2f} s = {100 * part / (total - part):.1f} % added to the rest")
    summary = metrics["regional"]["summary"]
    print(f"  example regional summary: {json.dumps(summary)}")
    return {"analyze_seconds": total, "regional_seconds": part, "added_pct": 100 * part / (total - part)}


def held_out_agreement(acdc: Path, threads: int) -> dict:
    """The shipped segmentation against the manual labels on the held-out ACDC patients."""
    import torch

    from cinema.analysis.segment import SegmentationPredictor
    from cinema.weights import __file__ as weights_init

    torch.set_num_threads(threads)
    recipe = json.loads((Path(weights_init).parent / "sax_segmentation_unet2d" / "recipe.json").read_text())
    patients = recipe["split"]["val"]
    predictor = SegmentationPredictor.from_weights(None)
    keys = ("ed_thickness_mean_mm", "radial_strain_pct", "circumferential_strain_pct")
    differences: dict[str, list[float]] = {k: [] for k in (*keys, "segment_ed_thickness_mean_mm")}
    started = time.perf_counter()
    for patient in patients:
        study = read_acdc_patient(acdc / patient)
        view = study.sax
        with torch.no_grad():
            predicted = predictor.segment_study(study)
        results = []
        for labels in (view.labels, predicted):
            results.append(regional_analysis(labels[study.ed_frame], labels[study.es_frame], view.affine))
        manual, model = results
        for key in keys:
            a, b = model["global"][key], manual["global"][key]
            if a is not None and b is not None:
                differences[key].append(a - b)
        for a, b in zip(model["segments"], manual["segments"], strict=True):
            x, y = a["ed"]["thickness_mean_mm"], b["ed"]["thickness_mean_mm"]
            if x is not None and y is not None:
                differences["segment_ed_thickness_mean_mm"].append(x - y)
    seconds = time.perf_counter() - started
    print(f"\n(c) shipped segmentation - manual labels, {len(patients)} held-out ACDC patients ({seconds:.0f} s)")
    out = {}
    for key, values in differences.items():
        data = np.asarray(values)
        bias, sd = float(data.mean()), float(data.std(ddof=1))
        out[key] = {"n": int(data.size), "bias": bias, "loa": [bias - 1.96 * sd, bias + 1.96 * sd]}
        print(
            f"  {key:34s} n={data.size:3d}  bias {bias:+6.2f}  95 % limits of agreement [{bias - 1.96 * sd:+6.2f}, "
            f"{bias + 1.96 * sd:+6.2f}]  mean |difference| {np.abs(data).mean():.2f}"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--acdc", type=Path, default=Path(os.environ.get("CINEMA_ACDC_DIR", DEFAULT_ACDC)))
    parser.add_argument("--skip-analyze", action="store_true", help="only the ACDC table")
    parser.add_argument("--skip-acdc", action="store_true", help="only the timing")
    parser.add_argument("--held-out", action="store_true", help="also the shipped model on the held-out patients")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="write the numbers here")
    args = parser.parse_args()
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("Model name")), "")
    print(f"CPU: {model or platform.processor()} ({os.cpu_count()} cores visible)")
    result: dict = {"cpu": model}
    if not args.skip_acdc:
        result["acdc"] = acdc_table(args.acdc)
    if args.held_out:
        result["held_out"] = held_out_agreement(args.acdc, args.threads)
    if not args.skip_analyze:
        result["timing"] = analyze_timing(args.threads)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
