"""Evaluate a SAX segmentation model the way users get it: `cinema.analysis.segment_study` on the native grid.

For each ACDC patient (default: the validation split of the shipped model's recipe.json) it segments ED and ES with
the label-free heart crop, then reports Dice per class at ED and ES and the absolute LVEF / RVEF errors (volumes from
native-grid masks and native spacing), without ("raw") and with ("lcc") the default post-processing (the largest
LV-cavity component; same predictions), plus the wall time per exam on this machine. Then LV cavity and myocardium
Dice on the two contoured Sunnybrook DICOM exams (GE scanner: another vendor, DICOM geometry, never seen in training).
``--compare-mirror`` repeats everything with and without mirror averaging, and on mirror-image ACDC input (the other
in-plane handedness); ``--reversed-stack`` also scores ACDC with the slices stored in the opposite order (same world
geometry), which a 2.5-D model must handle: ACDC stacks run base -> apex, the Sunnybrook DICOM stacks apex -> base.
``--in-plane-spacing MM ...`` also scores ACDC resampled to other in-plane pixel sizes (images linear, labels nearest
neighbour, same world geometry), as other scanners and protocols store them.

    .venv/bin/python benchmarks/segment.py [--weights DIR] [--shared-dir ../shared] [--ids patient003 ...]
        [--json OUT.json] [--threads 1] [--compare-mirror] [--reversed-stack] [--in-plane-spacing MM ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cinema.analysis.segment import (
    MIRROR_DEFAULT,
    POSTPROCESS_CLASSES,
    ROTATE_DEFAULT,
    SegmentationModel,
    keep_largest_components,
    load_segmentation_model,
    segment_study,
)
from cinema.io import read_acdc_patient, read_dicom_study, read_sunnybrook_contours
from cinema.io.study import SAX, Study
from cinema.metrics import ACDC_CLASSES, dice_per_class, ventricular_function
from cinema.preprocess.model_space import model_space_transform, resample_to_model

REPO_ROOT = Path(__file__).resolve().parents[1]


def _mirrored(study: Study) -> Study:
    """The same exam with its in-plane x axis reversed in the array but not in the affine: mirrored anatomy."""
    view = study.sax
    flipped = dataclasses.replace(
        view, image=view.image[::-1].copy(), labels={f: lab[::-1].copy() for f, lab in view.labels.items()}
    )
    return dataclasses.replace(study, views={SAX: flipped})


def _reversed_stack(study: Study) -> Study:
    """The same exam with its slices stored in the opposite order (affine adjusted: identical world geometry)."""
    view = study.sax
    flip = np.eye(4)
    flip[2, 2], flip[2, 3] = -1.0, view.image.shape[2] - 1.0
    reversed_view = dataclasses.replace(
        view,
        image=view.image[:, :, ::-1].copy(),
        affine=view.affine @ flip,
        labels={f: lab[:, :, ::-1].copy() for f, lab in view.labels.items()},
    )
    return dataclasses.replace(study, views={SAX: reversed_view})


def _resampled_in_plane(study: Study, spacing_mm: float) -> Study:
    """The same exam as a scanner would store it at another in-plane pixel size: the model-space resampling
    (images linear, labels nearest neighbour, voxel corners kept, native slices), whole field, no crop or padding."""
    view = study.sax
    grid = {"z_spacing": "native", "min_slices": None, "in_plane_spacing": (spacing_mm, spacing_mm)}
    whole = model_space_transform(view.spatial_shape, view.affine, "sax", **grid).resampled_shape[:2]
    transform = model_space_transform(view.spatial_shape, view.affine, "sax", in_plane_shape=whole, **grid)
    resampled = dataclasses.replace(
        view,
        image=resample_to_model(view.image, transform, "image"),
        affine=transform.model_affine,
        labels={f: resample_to_model(lab, transform, "label") for f, lab in view.labels.items()},
    )
    return dataclasses.replace(study, views={SAX: resampled})


def evaluate_patients(
    model: SegmentationModel,
    folders: list[Path],
    amp: bool = False,
    mirror: bool = MIRROR_DEFAULT,
    mirrored_input: bool = False,
    reversed_stack: bool = False,
    rotate: bool = ROTATE_DEFAULT,
    in_plane_spacing: float | None = None,
) -> dict[str, Any]:
    """Per-patient rows and summary numbers, raw and post-processed (largest component per class)."""
    rows = []
    for folder in folders:
        study = read_acdc_patient(folder)
        if mirrored_input:
            study = _mirrored(study)
        if reversed_stack:
            study = _reversed_stack(study)
        if in_plane_spacing is not None:
            study = _resampled_in_plane(study, in_plane_spacing)
        started = time.perf_counter()
        frames = [study.ed_frame, study.es_frame]
        raw = segment_study(study, model, frames=frames, postprocess=False, amp=amp, mirror=mirror, rotate=rotate)
        seconds = time.perf_counter() - started
        spacing = study.sax.spacing
        row: dict[str, Any] = {"id": folder.name, "group": study.metadata.get("group"), "seconds": seconds}
        truth = ventricular_function(study.sax.labels[study.ed_frame], study.sax.labels[study.es_frame], spacing)
        for variant in ("raw", "lcc"):
            pred = (
                raw
                if variant == "raw"
                else {f: keep_largest_components(lab, POSTPROCESS_CLASSES) for f, lab in raw.items()}
            )
            for phase, frame in (("ed", study.ed_frame), ("es", study.es_frame)):
                dice = dice_per_class(pred[frame], study.sax.labels[frame])
                for label, name in ACDC_CLASSES.items():
                    row[f"{variant}_dice_{phase}_{name}"] = dice[label]
            function = ventricular_function(pred[study.ed_frame], pred[study.es_frame], spacing)
            for key in ("lv_ef", "rv_ef"):
                row[f"{variant}_{key}_error"] = function[key] - truth[key]
        rows.append(row)
    return {"patients": rows, "summary": summarise(rows)}


def evaluate_sunnybrook(
    model: SegmentationModel, exams: list[Path], mirror: bool = MIRROR_DEFAULT, rotate: bool = ROTATE_DEFAULT
) -> dict[str, Any]:
    """LV cavity and myocardium Dice on the contoured images of Sunnybrook exams (GE, another vendor than ACDC),
    pooled over each exam's contoured slices; post-processed predictions of the contoured frames."""
    results = {}
    for exam in exams:
        study = read_dicom_study(exam / "dicom")
        contours = read_sunnybrook_contours(exam, study)
        frames = sorted({frame for _, frame in contours})
        pred = segment_study(study, model, frames=frames, mirror=mirror, rotate=rotate)
        counts = {"lv": [0, 0], "myo": [0, 0]}  # [2 * intersection, |pred| + |true|]
        for (z, frame), masks in contours.items():
            labels = pred[frame][:, :, z]
            truths = {"lv": masks["endo"]}
            if "epi" in masks:
                truths["myo"] = masks["epi"] & ~masks["endo"]
            for name, truth in truths.items():
                guess = labels == (3 if name == "lv" else 2)
                counts[name][0] += 2 * int((guess & truth).sum())
                counts[name][1] += int(guess.sum() + truth.sum())
        results[exam.name] = {f"dice_{k}": v[0] / v[1] if v[1] else float("nan") for k, v in counts.items()}
        results[exam.name]["n_contoured_images"] = len(contours)
    return results


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    summary = {}
    for variant in ("raw", "lcc"):
        numbers: dict[str, float] = {}
        for phase in ("ed", "es"):
            for name in ACDC_CLASSES.values():
                numbers[f"dice_{phase}_{name}"] = float(np.mean([r[f"{variant}_dice_{phase}_{name}"] for r in rows]))
        numbers["mean_dice"] = float(np.mean([v for k, v in numbers.items() if k.startswith("dice_")]))
        for key in ("lv_ef", "rv_ef"):
            numbers[f"{key}_mae"] = float(np.mean([abs(r[f"{variant}_{key}_error"]) for r in rows]))
        summary[variant] = numbers
    summary["seconds_per_exam"] = {"mean": float(np.mean([r["seconds"] for r in rows]))}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=None, help="model folder (default: the shipped model)")
    parser.add_argument("--shared-dir", default=str(REPO_ROOT.parent / "shared"))
    parser.add_argument("--ids", nargs="*", default=None, help="ACDC patients (default: the recipe's validation split)")
    parser.add_argument("--json", default=None, help="write every result here")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--compare-mirror", action="store_true", help="also without mirror averaging / mirrored input")
    parser.add_argument(
        "--reversed-stack", action="store_true", help="also ACDC with the slices stored in the opposite order"
    )
    parser.add_argument(
        "--rotate", action="store_true", help="average the four in-plane quarter turns (test-time augmentation)"
    )
    parser.add_argument(
        "--in-plane-spacing",
        type=float,
        nargs="*",
        default=[],
        metavar="MM",
        help="also ACDC resampled to these in-plane pixel sizes (labels nearest neighbour, same world geometry)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_segmentation_model(args.weights)
    ids = args.ids
    if ids is None:
        recipe = Path(model.source) / "recipe.json"
        if not recipe.is_file():
            from cinema.weights import default_weights_dir

            recipe = default_weights_dir("sax_segmentation") / "recipe.json"
        ids = json.loads(recipe.read_text())["split"]["val"]
    shared = Path(args.shared_dir)
    folders = [shared / "data" / "acdc" / i for i in ids]
    # (mirror averaging, mirror-image input, slices stored the other way round)
    settings: list[tuple[Any, ...]] = [(MIRROR_DEFAULT, False, False)]
    if args.compare_mirror:
        settings = [(m, flipped, False) for flipped in (False, True) for m in (False, True)]
    if args.reversed_stack:
        # world geometry unchanged; a 2.5-D model must not depend on which way the stack is stored
        settings.append((MIRROR_DEFAULT, False, True))
    # (mirror averaging, mirror-image input, slices stored the other way round, in-plane spacing or None)
    settings = [(*setting, None) for setting in settings]
    settings += [(MIRROR_DEFAULT, False, False, float(mm)) for mm in args.in_plane_spacing]
    output: dict[str, Any] = {}
    for mirror, flipped, reversed_stack, spacing in settings:
        changed = "_mirrored_input" if flipped else "_reversed_stack" if reversed_stack else ""
        changed += f"_{spacing:g}mm" if spacing is not None else ""
        name = f"acdc{changed}_{'mirror_avg' if mirror else 'plain'}"
        result = evaluate_patients(
            model,
            folders,
            amp=args.amp,
            mirror=mirror,
            mirrored_input=flipped,
            reversed_stack=reversed_stack,
            rotate=args.rotate,
            in_plane_spacing=spacing,
        )
        output[name] = result
        for variant in ("raw", "lcc"):
            print(name, variant, json.dumps({k: round(v, 4) for k, v in result["summary"][variant].items()}))
        print(name, "seconds per exam (ED + ES)", round(result["summary"]["seconds_per_exam"]["mean"], 2))
    exams = sorted(p for p in (shared / "data" / "sunnybrook").glob("SCD*") if p.is_dir())
    for mirror in sorted({m for m, *_ in settings}):
        name = f"sunnybrook_{'mirror_avg' if mirror else 'plain'}"
        output[name] = evaluate_sunnybrook(model, exams, mirror=mirror, rotate=args.rotate)
        print(name, json.dumps(output[name]))
    if args.json:
        Path(args.json).write_text(json.dumps(output, indent=1))


if __name__ == "__main__":
    main()
