"""``cinema segment INPUT OUTPUT``: short-axis segmentation (0 bg, 1 RV, 2 MYO, 3 LV) on the input's own grid.

INPUT is a SAX NIfTI (one 3-D frame or a 4-D cine), an ACDC patient folder, a `cinema convert` folder, an M&Ms
subject folder or a DICOM exam folder. OUTPUT is a uint8 label NIfTI with the SAX image's exact shape and affine: 3-D
for a 3-D NIfTI, else (X, Y, Z, T) over the stored frames. The shipped default model is used unless ``--weights``
names another (an official CineMA ConvUNetR SAX segmentation checkpoint works too).
"""

from __future__ import annotations

import argparse

from cinema.cli.options import add_study_option

HELP = "segment the short-axis cine of an exam (RV, MYO, LV) with the shipped model or given weights"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="SAX NIfTI (3-D or 4-D), ACDC / M&Ms / cinema-convert folder, or DICOM folder")
    parser.add_argument("output", help="label NIfTI to write (.nii.gz)")
    parser.add_argument(
        "--weights",
        default=None,
        help="model folder (config.yaml + *.safetensors), config.yaml, .safetensors file, or ensemble folder "
        "(ensemble.yaml naming model folders; their probabilities are averaged) (default: shipped model)",
    )
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    parser.add_argument("--batch-size", type=int, default=32, help="slices (2-D model) or frames (3-D) per pass")
    parser.add_argument(
        "--no-postprocess",
        action="store_true",
        help="keep every connected component (default: only the LV cavity's largest)",
    )
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (faster on AMX CPUs and GPUs)")
    parser.add_argument(
        "--mirror", action="store_true", help="also predict the mirror image and average (mirror-image exams)"
    )
    parser.add_argument(
        "--rotate",
        action="store_true",
        help="also predict the three other in-plane quarter turns and average (4x the time; no better on ACDC)",
    )
    add_study_option(parser, "segment")
    parser.add_argument(
        "--force", action="store_true", help="overwrite OUTPUT if it is a label map cinema wrote (never anything else)"
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np

    from cinema.cli import CinemaError
    from cinema.io.atomic import check_output
    from cinema.io.nifti import is_cinema_label_nifti

    source, output = Path(args.input), Path(args.output)
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such file or folder")
    if not output.name.endswith(".nii.gz"):
        raise CinemaError(f"{output}: OUTPUT must be a gzipped NIfTI file name ending in .nii.gz")
    inputs = [p for p in (source, args.weights) if p]
    check_output(output, inputs, folder=False, force=args.force, is_own_file=is_cinema_label_nifti)
    if args.batch_size < 1:
        raise CinemaError(f"--batch-size must be >= 1, got {args.batch_size}")

    from cinema.analysis.segment import SegmentationPredictor
    from cinema.io import read_study, write_label_nifti
    from cinema.io.datasets import nifti_shape
    from cinema.io.read import detect_input_kind
    from cinema.io.study import SAX

    kind = detect_input_kind(source)
    study = read_study(source, view=SAX if kind == "nifti" else None, study=args.study_id)
    view = study.view(SAX)
    predictor = SegmentationPredictor.from_weights(
        args.weights,
        device=args.device,
        batch_size=args.batch_size,
        postprocess=not args.no_postprocess,
        amp=args.amp,
        mirror=args.mirror,
        rotate=args.rotate,
    )
    labels = predictor.segment_study(study)
    stacked = np.stack([labels[f] for f in range(view.n_frames)], axis=-1)
    if kind == "nifti" and len(nifti_shape(source)) == 3:
        stacked = stacked[..., 0]
    check_output(output, inputs, folder=False, force=args.force, is_own_file=is_cinema_label_nifti)
    write_label_nifti(stacked, view.affine, output)
    print(f"wrote {output}: {stacked.shape} uint8 labels (1 RV, 2 MYO, 3 LV), {view.n_frames} frame(s)")
    if study.ed_frame is not None and study.es_frame is not None and study.ed_frame != study.es_frame:
        from cinema.metrics import ventricular_function

        function = ventricular_function(labels[study.ed_frame], labels[study.es_frame], view.spacing)
        print(
            f"LV EDV {function['lv_edv']:.1f} ml, ESV {function['lv_esv']:.1f} ml, EF {function['lv_ef']:.1f} %; "
            f"RV EDV {function['rv_edv']:.1f} ml, ESV {function['rv_esv']:.1f} ml, EF {function['rv_ef']:.1f} %"
        )
    return 0
