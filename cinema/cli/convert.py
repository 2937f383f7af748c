"""`cinema convert DICOM_DIR OUT_DIR`: a DICOM cine exam to NIfTI cines plus study.json.

Writes ``sax.nii.gz`` (4-D, time last), ``lax_2c/3c/4c.nii.gz`` for the long-axis views present and
``study.json`` (geometry, frames, trigger times, orientation, source series). The output folder is built beside
OUT_DIR and renamed into place, so a failure leaves nothing half-written. Patient-identifying DICOM fields are left
out of every output unless --keep-phi.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cinema.cli.options import add_force_option, add_study_option

HELP = "convert a DICOM cine exam to NIfTI cines + study.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dicom_dir", type=Path, help="folder holding one exam's DICOM files (any names, any depth)")
    parser.add_argument("out_dir", type=Path, help="output folder (must not exist or be empty unless --force)")
    parser.add_argument(
        "--keep-phi",
        action="store_true",
        help="keep patient-identifying DICOM fields (name, ID, dates, institution...) in study.json",
    )
    add_study_option(parser, "convert")
    add_force_option(parser, "OUT_DIR")


def run(args: argparse.Namespace) -> int:
    from cinema.io import read_study, write_study
    from cinema.io.atomic import check_output

    source, out_dir = Path(args.dicom_dir), Path(args.out_dir)
    if not source.is_dir():
        raise FileNotFoundError(f"{source}: no such folder")
    check_output(out_dir, [source], folder=True, force=args.force)
    study = read_study(source, keep_phi=args.keep_phi, study=args.study_id)
    write_study(study, out_dir, force=args.force, keep_phi=args.keep_phi, inputs=[source])
    for message in study.metadata.get("warnings", []):
        print(f"cinema convert: warning: {message}", file=sys.stderr)
    for name in study.view_names:
        view = study.views[name]
        shape = "x".join(str(n) for n in view.as_4d().shape)
        spacing = "x".join(f"{s:.2f}" for s in view.spacing)
        print(f"{name}: {shape} voxels, {spacing} mm, {view.n_frames} frames -> {out_dir / (name + '.nii.gz')}")
    print(f"wrote {out_dir / 'study.json'}")
    return 0
