"""Benchmark the label-free heart crop and the model-space label round trip on the shared real data.

For every shared ACDC patient (ED and ES; heart = RV + MYO + LV) and both Sunnybrook cines (contoured LV, every
contoured phase) it prints the fraction of heart voxels inside the 192 x 192 mm crop centred by `locate_heart`, next to
the image-centred crop for comparison; then the worst case and the mean. It also prints the per-class Dice of
label -> model space -> native on every ACDC ground truth, for the default slice policy and for the reference's 10 mm.

    .venv/bin/python benchmarks/heart_crop.py [--shared-dir ../shared] [--quiet]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from cinema.io import read_acdc_patient, read_dicom_study, read_sunnybrook_contours
from cinema.preprocess import crop_coverage, from_model_space, locate_heart, model_space_transform, to_model_space

REPO_ROOT = Path(__file__).resolve().parents[1]
CLASSES = {1: "RV", 2: "MYO", 3: "LV"}


def dice(a: np.ndarray, b: np.ndarray, value: int) -> float:
    total = (a == value).sum() + (b == value).sum()
    return 1.0 if total == 0 else float(2.0 * ((a == value) & (b == value)).sum() / total)


def edge_margin_mm(mask: np.ndarray, transform) -> float:
    """In-plane distance from the heart voxel closest to the crop edge to that edge (negative: outside)."""
    index = np.argwhere(mask)[:, :3]
    model = transform.native_to_model_index(index)[:, :2]
    size = np.asarray(transform.model_shape[:2])
    margin_voxels = np.minimum(model + 0.5, size - 0.5 - model)
    return float((margin_voxels * np.asarray(transform.model_spacing[:2])).min())


def coverages(spatial_shape, affine, mask, center_mm) -> tuple[float, float, float]:
    located = model_space_transform(spatial_shape, affine, "sax", center_mm=center_mm)
    centred = model_space_transform(spatial_shape, affine, "sax", center_mm=None)
    return crop_coverage(mask, located), crop_coverage(mask, centred), edge_margin_mm(mask, located)


def acdc(acdc_dir: Path, quiet: bool) -> dict:
    rows, dice_rows = [], {"auto": [], "10 mm (reference)": []}
    for folder in sorted(acdc_dir.glob("patient*")):
        study = read_acdc_patient(folder)
        sax = study.sax
        location = locate_heart(sax.image, sax.affine)
        names = {study.ed_frame: "ED", study.es_frame: "ES"}
        for frame, labels in sorted(sax.labels.items()):
            ours, centred, margin = coverages(sax.spatial_shape, sax.affine, labels > 0, location.center_mm)
            rows.append((f"{folder.name} {names.get(frame, frame)}", ours, centred, margin, location.confidence))
            for policy, z_spacing in (("auto", "auto"), ("10 mm (reference)", 10.0)):
                model, transform = to_model_space(
                    labels, sax.affine, "sax", center_mm=location.center_mm, kind="label", z_spacing=z_spacing
                )
                back = from_model_space(model, transform, "label")
                dice_rows[policy].append([dice(back, labels, value) for value in CLASSES])
    print(f"\nACDC: {len(rows)} volumes (ED and ES of {len(rows) // 2} patients), heart = RV + MYO + LV")
    report(rows, quiet)
    print("\nLabel round trip label -> model space -> native, per-class Dice over every ACDC ground truth:")
    for policy, values in dice_rows.items():
        values = np.array(values)
        worst = ", ".join(f"{name} {values[:, i].min():.4f}" for i, name in enumerate(CLASSES.values()))
        mean = ", ".join(f"{name} {values[:, i].mean():.4f}" for i, name in enumerate(CLASSES.values()))
        print(f"  z_spacing {policy:>18}: min {worst} | mean {mean}")
    return {"rows": rows}


def sunnybrook(sunnybrook_dir: Path, quiet: bool) -> None:
    rows = []
    for exam in sorted(p for p in sunnybrook_dir.iterdir() if (p / "contours").is_dir()):
        study = read_dicom_study(exam)
        contours = read_sunnybrook_contours(exam, study)
        sax = study.sax
        start = time.perf_counter()
        location = locate_heart(sax.image, sax.affine)
        located = time.perf_counter() - start
        start = time.perf_counter()
        to_model_space(sax.image, sax.affine, "sax", center_mm=location.center_mm)
        prepared = time.perf_counter() - start
        lv = np.zeros(sax.image.shape, bool)
        for (slice_index, frame), masks in contours.items():
            lv[:, :, slice_index, frame] |= masks["endo"] | masks.get("epi", masks["endo"])
        ours, centred, margin = coverages(sax.spatial_shape, sax.affine, lv, location.center_mm)
        rows.append((f"{exam.name} ({len(contours)} contoured images)", ours, centred, margin, location.confidence))
        print(
            f"  {exam.name}: cine {sax.image.shape}, locate_heart {located:.2f} s, "
            f"to_model_space of all {sax.n_frames} frames {prepared:.2f} s"
        )
    print(f"\nSunnybrook: {len(rows)} cines, heart = contoured LV (endocardium and epicardium, all contoured phases)")
    report(rows, quiet)


def report(rows: list[tuple[str, float, float, float, float]], quiet: bool) -> None:
    if not quiet:
        print(f"  {'case':<40} {'located':>9} {'centred':>9} {'margin mm':>10} {'confidence':>11}")
        for name, ours, centred, margin, confidence in rows:
            print(f"  {name:<40} {ours:>9.4f} {centred:>9.4f} {margin:>10.1f} {confidence:>11.2f}")
    ours = np.array([r[1] for r in rows])
    centred = np.array([r[2] for r in rows])
    margins = np.array([r[3] for r in rows])
    # Rank by coverage, then by how close the heart comes to the crop edge.
    worst = int(np.lexsort((margins, ours))[0])
    print(
        f"  located crop: worst {ours[worst]:.4f} ({rows[worst][0]}), mean {ours.mean():.5f}, "
        f"cases >= 0.995: {(ours >= 0.995).sum()}/{len(rows)}"
    )
    print(
        f"  heart-to-crop-edge margin: min {margins.min():.1f} mm, 5th percentile {np.percentile(margins, 5):.1f} mm, "
        f"median {np.median(margins):.1f} mm"
    )
    print(
        f"  image-centred crop (for comparison): worst {centred.min():.4f}, mean {centred.mean():.5f}, "
        f"cases >= 0.995: {(centred >= 0.995).sum()}/{len(rows)}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(os.environ.get("CINEMA_SHARED_DIR", REPO_ROOT.parent / "shared"))
    parser.add_argument("--shared-dir", type=Path, default=default, help="folder holding data/acdc, data/sunnybrook")
    parser.add_argument("--quiet", action="store_true", help="print only the summaries, not every case")
    args = parser.parse_args()
    data = args.shared_dir / "data"
    if not data.is_dir():
        parser.error(f"{data}: no such folder (set --shared-dir)")
    start = time.perf_counter()
    acdc(data / "acdc", args.quiet)
    sunnybrook(data / "sunnybrook", args.quiet)
    print(f"\ntotal {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
