"""``cinema predict WEIGHTS INPUT [INPUT ...] -o OUT``: any released CineMA fine-tuned model, every seed, offline.

WEIGHTS is a fine-tuned folder (config.yaml + ``<name>_<N>.safetensors`` seeds, all run and averaged; a `cinema
finetune` output folder too) or one seed file with its config.yaml beside it. INPUT is, for a two-frame model
(classification, regression), ED then ES as two NIfTI files or one exam / cine (ED and ES from the exam, else from
the shipped SAX segmentation's LV volume curve); for a one-frame model (segmentation, landmarks), one NIfTI frame or
cine, or an exam (DICOM folder, ACDC folder, `cinema convert` output), of which the model's view is used.
OUT receives prediction.json (and mask.nii.gz for segmentation, on the input's own grid); see docs/predict.md.
"""

from __future__ import annotations

import argparse

from cinema.cli.options import add_force_option, add_study_option

HELP = "run a released CineMA fine-tuned model (all its seeds) on NIfTI files or an exam: prediction.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "weights", metavar="WEIGHTS", help="fine-tuned folder (config.yaml + *_N.safetensors) or one seed .safetensors"
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="ED and ES NIfTI files (two-frame models), or one NIfTI frame / cine or exam folder",
    )
    parser.add_argument("-o", "--out", required=True, help="output folder (prediction.json, mask.nii.gz)")
    parser.add_argument(
        "--preprocessed",
        action="store_true",
        help="inputs are already in CineMA's model space (like the official example files): only the official "
        "min-max scaling and end padding, no resampling",
    )
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    add_study_option(parser, "predict on")
    add_force_option(parser, "OUT")


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from cinema.io.atomic import atomic_directory, check_output

    out = Path(args.out)
    inputs = [Path(args.weights), *(Path(p) for p in args.inputs)]
    for path in inputs:
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or folder")
    check_output(out, inputs, folder=True, force=args.force)  # before loading anything

    from cinema.analysis.predict import Predictor
    from cinema.io import write_label_nifti

    predictor = Predictor.from_weights(args.weights, device=args.device, preprocessed=args.preprocessed)
    prediction = predictor.predict(args.inputs, study_id=args.study_id)
    with atomic_directory(out, force=args.force, inputs=inputs, command="predict") as tmp:
        if prediction.mask is not None:
            write_label_nifti(prediction.mask, prediction.affine, tmp / prediction.result["mask"])
        text = json.dumps(prediction.result, indent=2) + "\n"
        (tmp / "prediction.json").write_text(text, encoding="utf-8")
    result = prediction.result
    n_seeds = len(result["seeds"])
    summary = {
        "classification": lambda: f"{result.get('prediction')} ({max(result['probabilities'].values()):.3f})",
        "regression": lambda: f"{result['target']} = {result['value']:.3f}",
        "segmentation": lambda: f"labels in {out / result['mask']}",
        "landmark": lambda: f"{len(result['points'])} frame(s) of {len(result['points'][0])} points",
    }[result["task"]]()
    print(f"{result['task']} with {n_seeds} seed(s): {summary}; wrote {out / 'prediction.json'}")
    return 0
