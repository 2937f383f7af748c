"""``cinema analyze [STUDY] [-o OUT]``: an exam in; volumes, EF, LV mass, QC warnings and a report out.

STUDY is a DICOM exam folder, a 4-D SAX NIfTI cine, an ACDC patient folder or a `cinema convert` folder; without it
the small real exam bundled with the package is analysed. OUT (default ``<study name>_analysis``) receives
seg_sax.nii.gz, volumes.csv, metrics.json, report.html and cine_overlay.gif, all at once or not at all.

An exam with long-axis cines only, a long-axis NIfTI (its view named by ``--view lax_4c`` or its file name) or
``--view lax_4c`` on any exam gives the long-axis analysis with a LAX segmentation model (``--lax-weights``, or
``--weights`` naming a LAX model): seg_<view>.nii.gz, areas.csv (per-frame LV, RV, MYO areas), metrics.json (FAC,
MAPSE with ``--landmark-weights``), report.html, cine_overlay.gif. A single-slice NIfTI whose view is not named is
refused rather than read as a one-slice short-axis stack.
"""

from __future__ import annotations

import argparse

from cinema.cli.options import add_engine_option, add_force_option, add_precision_option, add_study_option, amp_of

HELP = (
    "analyse an exam: segment every SAX frame, measure volumes, EF and LV mass, check quality, write a report "
    "(long-axis cines: areas, FAC, MAPSE)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "study",
        nargs="?",
        default=None,
        help="DICOM folder, SAX NIfTI cine, ACDC or cinema-convert folder (default: the bundled example exam)",
    )
    parser.add_argument("-o", "--out", default=None, help="output folder (default: <study name>_analysis)")
    parser.add_argument(
        "--weights",
        default=None,
        help="SAX segmentation model folder, config.yaml or .safetensors, e.g. an official CineMA fine-tuned "
        "checkpoint, or an ensemble folder (ensemble.yaml) (default: shipped model); a LAX model here is taken "
        "as --lax-weights",
    )
    parser.add_argument(
        "--lax-weights",
        default=None,
        help="LAX segmentation model (official format, e.g. finetuned/segmentation/mnms2_lax_4c) for long-axis "
        "cines: per-frame areas and fractional area change (none ships)",
    )
    parser.add_argument(
        "--view",
        default=None,
        help="the view to analyse and a NIfTI's view: sax, lax_4c, lax_2c, lax_3c (default: SAX when the exam "
        "has it, else its long-axis view; a NIfTI's file name or slice count)",
    )
    parser.add_argument(
        "--landmark-weights",
        default=None,
        help="LAX landmark checkpoint (heatmap or coordinate model, official format): mitral valve points and MAPSE",
    )
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    parser.add_argument("--batch-size", type=int, default=32, help="slices (2-D model) or frames (3-D) per pass")
    parser.add_argument("--ed", type=int, default=None, help="end-diastolic frame, 0-based (default: max LV volume)")
    parser.add_argument("--es", type=int, default=None, help="end-systolic frame, 0-based (default: min LV volume)")
    add_precision_option(parser)
    add_engine_option(parser)
    add_study_option(parser, "analyse")
    add_force_option(parser, "OUT")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from cinema.cli import CinemaError
    from cinema.io.atomic import check_output

    if args.batch_size < 1:
        raise CinemaError(f"--batch-size must be >= 1, got {args.batch_size}")
    for name in ("ed", "es"):
        if getattr(args, name) is not None and getattr(args, name) < 0:
            raise CinemaError(f"--{name} must be a 0-based frame index, got {getattr(args, name)}")

    from cinema.analysis.analyze import analyze_path, example_study_path, summary_lines

    source = Path(args.study) if args.study is not None else example_study_path()
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such file or folder")
    name = source.name.removesuffix(".gz").removesuffix(".nii") if source.is_file() else source.name
    out = Path(args.out) if args.out is not None else Path(f"{name}_analysis")
    inputs = [p for p in (source, args.weights, args.lax_weights, args.landmark_weights) if p]
    check_output(out, inputs, folder=True, force=args.force)  # before minutes of work

    from cinema.analysis.segment import SegmentationPredictor, segmentation_view

    started = time.perf_counter()
    if args.study is None:
        print(f"no STUDY given: analysing the bundled example exam ({source.name}, Sunnybrook Cardiac Data, CC0)")
    sax_weights, lax_weights = args.weights, args.lax_weights
    if sax_weights is not None and segmentation_view(sax_weights) != "sax":
        if lax_weights is not None:
            raise CinemaError(f"--weights {sax_weights} is a long-axis model and --lax-weights is given too")
        sax_weights, lax_weights = None, sax_weights
    if lax_weights is not None and segmentation_view(lax_weights) == "sax":
        raise CinemaError(f"--lax-weights {lax_weights} is a short-axis model; give it with --weights")
    options = {"device": args.device, "batch_size": args.batch_size, "amp": amp_of(args), "engine": args.engine}
    lax_predictor = None
    if lax_weights is not None:
        lax_predictor = SegmentationPredictor.from_weights(lax_weights, **options)

    def predictor() -> SegmentationPredictor:  # loaded only when the exam's SAX cine is analysed
        return SegmentationPredictor.from_weights(sax_weights, **options)

    landmark_model = None
    if args.landmark_weights is not None:
        from cinema.analysis.landmarks import load_landmark_model

        landmark_model = load_landmark_model(args.landmark_weights, device=args.device)
    analysis = analyze_path(
        source,
        out,
        predictor,
        ed=args.ed,
        es=args.es,
        study_id=args.study_id,
        landmark_model=landmark_model,
        force=args.force,
        progress=not args.quiet,
        other_inputs=inputs[1:],
        view=args.view,
        lax_predictor=lax_predictor,
    )
    for line in summary_lines(analysis.metrics):
        print(line)
    seg, table = ("seg_sax.nii.gz", "volumes.csv") if analysis.is_sax else (f"seg_{analysis.view}.nii.gz", "areas.csv")
    print(
        f"wrote {out}/ (report.html, metrics.json, {table}, {seg}, cine_overlay.gif) "
        f"in {time.perf_counter() - started:.1f} s"
    )
    return 0
