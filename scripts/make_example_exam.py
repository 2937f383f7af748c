"""Build the small real example exam shipped in the package (`cinema/examples/sunnybrook_scd0000301`).

Source: Sunnybrook Cardiac Data exam SCD0000301 (SC-HF-I-4; Radau et al., MIDAS Journal 2009; CC0), the raw cine
DICOM in ../shared/data/sunnybrook. The whole exam is kept (every slice, every phase, native intensities and
geometry); only the in-plane field of view is cropped to 160 x 160 voxels (206 mm) around the manually contoured LV
so that the package stays small. The crop shifts the affine's origin, so every voxel keeps its world position.

    .venv/bin/python scripts/make_example_exam.py ../shared/data/sunnybrook/SCD0000301
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np

from cinema.io import read_dicom_study, read_sunnybrook_contours, write_study
from cinema.io.study import Study

CROP = 160
OUT = Path(__file__).resolve().parents[1] / "cinema" / "examples" / "sunnybrook_scd0000301"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("exam_dir", type=Path)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    study = read_dicom_study(args.exam_dir / "dicom")
    contours = read_sunnybrook_contours(args.exam_dir, study)
    endo = np.argwhere(np.any([masks["endo"] for masks in contours.values()], axis=0))
    center = endo.mean(axis=0).round().astype(int)
    sax = study.sax
    low = np.clip(center - CROP // 2, 0, np.asarray(sax.spatial_shape[:2]) - CROP)
    shift = np.eye(4)
    shift[:2, 3] = low
    cropped = dataclasses.replace(
        sax,
        image=np.ascontiguousarray(sax.image[low[0] : low[0] + CROP, low[1] : low[1] + CROP]),
        affine=sax.affine @ shift,
        source="Sunnybrook Cardiac Data SCD0000301 (CC0), in-plane crop",
    )
    metadata = {key: study.metadata[key] for key in ("source_format", "scanner", "warnings") if key in study.metadata}
    metadata["licence"] = "Sunnybrook Cardiac Data, Radau et al., MIDAS Journal 2009, CC0"
    write_study(Study(views={"sax": cropped}, metadata=metadata, source="SCD0000301"), args.out, force=True)
    print(f"wrote {args.out}: sax {cropped.image.shape}, crop origin voxel {low.tolist()}")


if __name__ == "__main__":
    main()
