"""``cinema segment INPUT OUTPUT``: segmentation (0 bg, 1 RV, 2 MYO, 3 LV) on the input's own grid.

INPUT is a NIfTI (one 3-D frame or a 4-D cine), an ACDC patient folder, a `cinema convert` folder, an M&Ms
subject folder or a DICOM exam folder. The model's view is segmented: SAX with the shipped default model (or an
official CineMA ConvUNetR SAX checkpoint), a long-axis view with a LAX model given by ``--weights`` (the official
``finetuned/segmentation/mnms2_lax_4c``). OUTPUT is a uint8 label NIfTI with that image's exact shape and affine: the
NIfTI's own shape for a NIfTI input, else (X, Y, Z, T) for SAX and (X, Y, 1, T) for a long-axis view.

A NIfTI's view is ``--view``, else its file name's, else a long-axis model's (the model names it); a single-slice
NIfTI given to a SAX model without ``--view sax`` is refused, never read as a one-slice short-axis stack.
"""

from __future__ import annotations

import argparse

from cinema.cli.options import add_engine_option, add_precision_option, add_study_option, amp_of

HELP = "segment the short-axis cine of an exam (RV, MYO, LV) with the shipped model, or its LAX cine with LAX weights"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="NIfTI (3-D or 4-D), ACDC / M&Ms / cinema-convert folder, or DICOM folder")
    parser.add_argument("output", help="label NIfTI to write (.nii.gz)")
    parser.add_argument(
        "--weights",
        default=None,
        help="model folder (config.yaml + *.safetensors), config.yaml, .safetensors file, or ensemble folder "
        "(ensemble.yaml naming model folders; their probabilities are averaged); a SAX or a LAX model "
        "(default: shipped SAX model)",
    )
    parser.add_argument(
        "--view",
        default=None,
        help="the view of a NIfTI input: sax, lax_4c, lax_2c, lax_3c (default: its file name, else the LAX "
        "model's view, else SAX for a stack of several slices)",
    )
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    parser.add_argument("--batch-size", type=int, default=32, help="slices (2-D model) or frames (3-D) per pass")
    parser.add_argument(
        "--no-postprocess",
        action="store_true",
        help="keep every connected component (default: only the LV cavity's largest)",
    )
    add_precision_option(parser)
    add_engine_option(parser)
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

    from cinema.analysis.segment import SegmentationPredictor, segmentation_view
    from cinema.io import read_study, write_label_nifti
    from cinema.io.datasets import nifti_shape
    from cinema.io.nifti import guess_view_name
    from cinema.io.read import detect_input_kind
    from cinema.io.study import SAX, view_name_for

    kind = detect_input_kind(source)
    model_view = segmentation_view(args.weights)
    named = None if args.view is None else view_name_for(args.view)
    if kind == "nifti" and named is None and model_view != SAX and guess_view_name(source) is None:
        named = model_view  # a one-view LAX model names the view of an unnamed file, as in cinema predict
    study = read_study(source, view=named if kind == "nifti" else None, study=args.study_id)
    if model_view not in study.views:
        hint = (
            "give a long-axis segmentation model with --weights (e.g. the official finetuned/segmentation/mnms2_lax_4c)"
            if model_view == SAX
            else "give a model of that view with --weights"
        )
        raise CinemaError(
            f"{source}: the model segments {model_view}; the input holds {', '.join(study.view_names)}: {hint}"
        )
    view = study.view(model_view)
    predictor = SegmentationPredictor.from_weights(
        args.weights,
        device=args.device,
        batch_size=args.batch_size,
        postprocess=not args.no_postprocess,
        amp=amp_of(args),
        engine=args.engine,
        mirror=args.mirror,
        rotate=args.rotate,
    )
    labels = predictor.segment_study(study)
    stacked = np.stack([labels[f] for f in range(view.n_frames)], axis=-1)
    if not view.is_sax:
        stacked = stacked[:, :, None, :]  # a long-axis cine file's single-slice axis
    if kind == "nifti":
        stacked = stacked.reshape(nifti_shape(source))  # the input's own shape: only singleton axes differ
    check_output(output, inputs, folder=False, force=args.force, is_own_file=is_cinema_label_nifti)
    write_label_nifti(stacked, view.affine, output, keep_2d=stacked.ndim == 2)
    print(f"wrote {output}: {stacked.shape} uint8 labels (1 RV, 2 MYO, 3 LV), {view.n_frames} {view.name} frame(s)")
    if not view.is_sax:
        from cinema.analysis.measure import CLASS_NAMES

        pixel = view.spacing[0] * view.spacing[1]
        ranges = [
            f"{name.upper()} {min(areas):.0f}-{max(areas):.0f} mm2"
            for value, name in sorted(CLASS_NAMES.items(), reverse=True)
            for areas in [[float((labels[f] == value).sum()) * pixel for f in range(view.n_frames)]]
        ]
        print(f"areas over the frames: {', '.join(ranges)}")
        return 0
    if study.ed_frame is not None and study.es_frame is not None and study.ed_frame != study.es_frame:
        from cinema.metrics import ventricular_function

        function = ventricular_function(labels[study.ed_frame], labels[study.es_frame], view.spacing)
        print(
            f"LV EDV {function['lv_edv']:.1f} ml, ESV {function['lv_esv']:.1f} ml, EF {function['lv_ef']:.1f} %; "
            f"RV EDV {function['rv_edv']:.1f} ml, ESV {function['rv_esv']:.1f} ml, EF {function['rv_ef']:.1f} %"
        )
    return 0
