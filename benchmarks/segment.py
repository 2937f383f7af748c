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
``--shift`` also scores ACDC through each acquisition shift of `cinema.preprocess.shifts` on its own (bias field,
gamma, Rician noise, blur, in-plane pixel size, thick slices, slice gaps, rotated and flipped grids, partial
coverage; parameters drawn per exam from ``--shift-seed``) and prints one table: Dice per class (mean of ED and ES),
mean Dice, LVEF / RVEF MAE, with default post-processing, the exams missed altogether, and the mean over the shifted
sets. ``--table-from OUT.json`` prints that table again from a saved ``--json``.

    .venv/bin/python benchmarks/segment.py [--weights DIR] [--shared-dir ../shared] [--ids patient003 ...]
        [--json OUT.json] [--threads 1] [--compare-mirror] [--reversed-stack] [--in-plane-spacing MM ...]
        [--shift [NAME ...]] [--shift-seed 0] [--table-from OUT.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cinema.analysis.segment import (
    MIRROR_DEFAULT,
    POSTPROCESS_CLASSES,
    ROTATE_DEFAULT,
    InferenceOptions,
    SegmentationModel,
    SegmentationPredictor,
    keep_largest_components,
    load_segmentation_model,
    segment_study,
)
from cinema.io import read_acdc_patient, read_dicom_study, read_sunnybrook_contours
from cinema.io.study import SAX, Study
from cinema.metrics import ACDC_CLASSES, dice_per_class, ventricular_function
from cinema.models.engines import ENGINES
from cinema.preprocess.model_space import model_space_transform, resample_to_model
from cinema.preprocess.shifts import SHIFTS, random_shift

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
    shift: Callable[[Study, int], Study] | None = None,
    engine: str = "torch",
) -> dict[str, Any]:
    """Per-patient rows and summary numbers, raw and post-processed (largest component per class).

    ``shift(study, index)`` transforms each exam (and its labels) before everything else; Dice and EF are then
    scored against the shifted labels on the shifted grid."""
    rows = []
    options = InferenceOptions(postprocess=False, amp=amp, mirror=mirror, rotate=rotate, engine=engine)
    predictor = SegmentationPredictor(model, options)  # one per run: an engine's compiled network is reused
    for index, folder in enumerate(folders):
        study = read_acdc_patient(folder)
        if shift is not None:
            study = shift(study, index)
        if mirrored_input:
            study = _mirrored(study)
        if reversed_stack:
            study = _reversed_stack(study)
        if in_plane_spacing is not None:
            study = _resampled_in_plane(study, in_plane_spacing)
        started = time.perf_counter()
        frames = [study.ed_frame, study.es_frame]
        raw = predictor.segment_study(study, frames=frames)
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
    model: SegmentationModel,
    exams: list[Path],
    mirror: bool = MIRROR_DEFAULT,
    rotate: bool = ROTATE_DEFAULT,
    amp: bool = False,
    engine: str = "torch",
) -> dict[str, Any]:
    """LV cavity and myocardium Dice on the contoured images of Sunnybrook exams (GE, another vendor than ACDC),
    pooled over each exam's contoured slices; post-processed predictions of the contoured frames."""
    results = {}
    for exam in exams:
        study = read_dicom_study(exam / "dicom")
        contours = read_sunnybrook_contours(exam, study)
        frames = sorted({frame for _, frame in contours})
        pred = segment_study(study, model, frames=frames, mirror=mirror, rotate=rotate, amp=amp, engine=engine)
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


def shift_function(name: str, seed: int) -> Callable[[Study, int], Study]:
    """The shift ``name`` with its parameters drawn per exam from (seed, shift, exam index): reproducible, and the
    same exams get the same shifts whichever model is scored."""

    def apply(study: Study, index: int) -> Study:
        rng = np.random.default_rng([seed, zlib.crc32(name.encode()), index])
        return random_shift(study, name, rng)

    return apply


def shift_table(results: dict[str, dict[str, Any]], variant: str = "lcc") -> str:
    """Markdown table: one row per shift (``none`` first), Dice per class (mean of ED and ES), mean Dice, EF MAE."""
    lines = [
        "| shift | range | Dice RV | Dice MYO | Dice LV | mean Dice | LVEF MAE | RVEF MAE | missed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    means = []
    for name, result in results.items():
        summary = result["summary"][variant]
        dice = {c: (summary[f"dice_ed_{c}"] + summary[f"dice_es_{c}"]) / 2 for c in ACDC_CLASSES.values()}
        what = SHIFTS[name][0] if name in SHIFTS else "as stored"
        ef = {}
        for key in ("lv_ef", "rv_ef"):
            undefined = int(summary.get(f"{key}_undefined", 0))
            ef[key] = f"{summary[f'{key}_mae']:.2f}" + (f" ({undefined} undefined)" if undefined else "")
        # an exam whose mean Dice is below 0.5 was not segmented at all (the heart was not found): named, because
        # one such exam moves a row's EF errors more than all the others together
        missed = [
            row["id"]
            for row in result["patients"]
            if np.mean([row[f"{variant}_dice_{p}_{c}"] for p in ("ed", "es") for c in ACDC_CLASSES.values()]) < 0.5
        ]
        lines.append(
            f"| {name} | {what} | {dice['rv']:.3f} | {dice['myo']:.3f} | {dice['lv']:.3f} | "
            f"{summary['mean_dice']:.4f} | {ef['lv_ef']} | {ef['rv_ef']} | {', '.join(missed) or '-'} |"
        )
        if name in SHIFTS:
            means.append((summary["mean_dice"], summary["lv_ef_mae"], summary["rv_ef_mae"]))
    if means:
        dice_mean, lv_mean, rv_mean = np.mean(means, axis=0)
        lines.append(
            f"| **mean over the {len(means)} shifts** | | | | | **{dice_mean:.4f}** | {lv_mean:.2f} | {rv_mean:.2f} | |"
        )
    return "\n".join(lines)


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    summary = {}
    for variant in ("raw", "lcc"):
        numbers: dict[str, float] = {}
        for phase in ("ed", "es"):
            for name in ACDC_CLASSES.values():
                numbers[f"dice_{phase}_{name}"] = float(np.mean([r[f"{variant}_dice_{phase}_{name}"] for r in rows]))
        numbers["mean_dice"] = float(np.mean([v for k, v in numbers.items() if k.startswith("dice_")]))
        for key in ("lv_ef", "rv_ef"):
            errors = np.abs([r[f"{variant}_{key}_error"] for r in rows], dtype=np.float64)
            # an exam whose predicted ventricle is empty at ED has no EF: counted apart rather than hiding the rest
            numbers[f"{key}_mae"] = float(np.nanmean(errors)) if np.isfinite(errors).any() else float("nan")
            numbers[f"{key}_undefined"] = float(np.isnan(errors).sum())
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
    parser.add_argument("--engine", default="torch", choices=ENGINES, help="what runs the network (--engine of cinema)")
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
    parser.add_argument(
        "--shift",
        nargs="*",
        default=None,
        metavar="NAME",
        help=f"also ACDC through each acquisition shift on its own (default all: {', '.join(SHIFTS)})",
    )
    parser.add_argument("--shift-seed", type=int, default=0, help="seed of the shifts' per-exam parameters")
    parser.add_argument("--table-from", default=None, metavar="JSON", help="only print the shift table of a --json")
    args = parser.parse_args()
    if args.table_from:
        saved = json.loads(Path(args.table_from).read_text())
        rows = {"none": saved["acdc_plain"]}
        rows.update({k.removeprefix("acdc_shift_"): v for k, v in saved.items() if k.startswith("acdc_shift_")})
        for result in rows.values():
            result["summary"] = summarise(result["patients"])
        print(shift_table(rows))
        return
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
            engine=args.engine,
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
    if args.shift is not None:
        names = args.shift or list(SHIFTS)
        unknown = sorted(set(names) - set(SHIFTS))
        if unknown:
            parser.error(f"unknown shift(s) {unknown}; choose from {list(SHIFTS)}")
        shifted: dict[str, dict[str, Any]] = {"none": output[f"acdc_{'mirror_avg' if MIRROR_DEFAULT else 'plain'}"]}
        for shift_name in names:
            started = time.perf_counter()
            shifted[shift_name] = evaluate_patients(
                model,
                folders,
                amp=args.amp,
                rotate=args.rotate,
                shift=shift_function(shift_name, args.shift_seed),
                engine=args.engine,
            )
            output[f"acdc_shift_{shift_name}"] = shifted[shift_name]
            lcc = shifted[shift_name]["summary"]["lcc"]
            print(
                f"shift {shift_name}",
                json.dumps({k: round(v, 4) for k, v in lcc.items()}),
                f"{time.perf_counter() - started:.0f} s",
                flush=True,
            )
        print(shift_table(shifted))
    exams = sorted(p for p in (shared / "data" / "sunnybrook").glob("SCD*") if p.is_dir())
    for mirror in sorted({m for m, *_ in settings}):
        name = f"sunnybrook_{'mirror_avg' if mirror else 'plain'}"
        output[name] = evaluate_sunnybrook(
            model, exams, mirror=mirror, rotate=args.rotate, amp=args.amp, engine=args.engine
        )
        print(name, json.dumps(output[name]))
    if args.json:
        Path(args.json).write_text(json.dumps(output, indent=1))


if __name__ == "__main__":
    main()
