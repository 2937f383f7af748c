"""Evaluate a SAX segmentation model the way users get it: `cinema.analysis.segment_study` on the native grid.

For each ACDC patient (default: the validation split of the shipped model's recipe.json) it segments ED and ES with
the label-free heart crop, then reports Dice per class at ED and ES and the absolute LVEF / RVEF errors (volumes from
native-grid masks and native spacing), without and with largest-component post-processing (same predictions), plus
the wall time per exam on this machine.

    .venv/bin/python benchmarks/segment.py [--weights DIR] [--acdc-dir ../shared/data/acdc] [--ids patient003 ...]
        [--json OUT.json] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cinema.analysis.segment import SegmentationModel, keep_largest_components, load_segmentation_model, segment_study
from cinema.io import read_acdc_patient
from cinema.metrics import ACDC_CLASSES, dice_per_class, ventricular_function

REPO_ROOT = Path(__file__).resolve().parents[1]


def evaluate_patients(model: SegmentationModel, folders: list[Path], amp: bool = False) -> dict[str, Any]:
    """Per-patient rows and summary numbers, raw and post-processed."""
    rows = []
    for folder in folders:
        study = read_acdc_patient(folder)
        started = time.perf_counter()
        raw = segment_study(study, model, frames=[study.ed_frame, study.es_frame], postprocess=False, amp=amp)
        seconds = time.perf_counter() - started
        spacing = study.sax.spacing
        row: dict[str, Any] = {"id": folder.name, "group": study.metadata.get("group"), "seconds": seconds}
        truth = ventricular_function(study.sax.labels[study.ed_frame], study.sax.labels[study.es_frame], spacing)
        for variant in ("raw", "lcc"):
            pred = raw if variant == "raw" else {f: keep_largest_components(lab) for f, lab in raw.items()}
            for phase, frame in (("ed", study.ed_frame), ("es", study.es_frame)):
                dice = dice_per_class(pred[frame], study.sax.labels[frame])
                for label, name in ACDC_CLASSES.items():
                    row[f"{variant}_dice_{phase}_{name}"] = dice[label]
            function = ventricular_function(pred[study.ed_frame], pred[study.es_frame], spacing)
            for key in ("lv_ef", "rv_ef"):
                row[f"{variant}_{key}_error"] = function[key] - truth[key]
        rows.append(row)
    return {"patients": rows, "summary": summarise(rows)}


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
    parser.add_argument("--acdc-dir", default=str(REPO_ROOT.parent / "shared" / "data" / "acdc"))
    parser.add_argument("--ids", nargs="*", default=None, help="patients (default: the recipe's validation split)")
    parser.add_argument("--json", default=None, help="write rows and summary here")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--amp", action="store_true")
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
    result = evaluate_patients(model, [Path(args.acdc_dir) / i for i in ids], amp=args.amp)
    for variant in ("raw", "lcc"):
        print(variant, json.dumps({k: round(v, 4) for k, v in result["summary"][variant].items()}))
    print("seconds per exam (ED + ES)", round(result["summary"]["seconds_per_exam"]["mean"], 2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
