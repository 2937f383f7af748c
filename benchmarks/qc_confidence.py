"""Model confidence (`cinema.analysis.segment.heart_confidence`) on real exams and on non-anatomical input.

The QC threshold `cinema.analysis.qc.MIN_CONFIDENCE` must sit between the two groups; this prints the per-frame
range of each, for the shipped model (or ``--weights``):

- the held-out ACDC patients of the model's recipe (ED and ES);
- the two Sunnybrook DICOM exams (GE; every frame);
- gamma noise with the geometry of each held-out exam (two frames, so the motion locator has something to read);
- each held-out exam with its pixels scrambled in 8 x 8 blocks within every slice (intensities kept, anatomy gone).

    .venv/bin/python benchmarks/qc_confidence.py [--weights DIR] [--shared-dir ../shared] [--threads 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from cinema.analysis.qc import MIN_CONFIDENCE
from cinema.analysis.segment import load_segmentation_model, segment_study
from cinema.io import read_acdc_patient, read_dicom_study
from cinema.io.study import SAX, CineView, Study

REPO_ROOT = Path(__file__).resolve().parents[1]


def _with_image(study: Study, image: np.ndarray) -> Study:
    return dataclasses.replace(study, views={SAX: dataclasses.replace(study.sax, image=image, labels={})})


def scrambled(image: np.ndarray, rng: np.random.Generator, block: int = 8) -> np.ndarray:
    """Every slice of every frame cut into block x block tiles (edges dropped), the tiles shuffled."""
    x, y = (image.shape[0] // block) * block, (image.shape[1] // block) * block
    out = image.copy()
    for z in range(image.shape[2]):
        for f in range(image.shape[3]):
            tiles = image[:x, :y, z, f].reshape(x // block, block, y // block, block).swapaxes(1, 2)
            tiles = tiles.reshape(-1, block, block)[rng.permutation((x // block) * (y // block))]
            out[:x, :y, z, f] = tiles.reshape(x // block, y // block, block, block).swapaxes(1, 2).reshape(x, y)
    return out


def confidences(study: Study, model, frames: list[int] | None = None) -> list[float]:
    found: dict[int, float] = {}
    segment_study(study, model, frames=frames, confidence=found)
    return [found[f] for f in sorted(found)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=None, help="model folder (default: the shipped model)")
    parser.add_argument("--shared-dir", default=str(REPO_ROOT.parent / "shared"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_segmentation_model(args.weights)
    recipe = json.loads((Path(args.weights or _shipped()) / "recipe.json").read_text())
    shared = Path(args.shared_dir)
    rng = np.random.default_rng(0)
    groups: dict[str, list[float]] = {"acdc_held_out": [], "sunnybrook": [], "gamma_noise": [], "scrambled_8x8": []}
    for patient in recipe["split"]["val"]:
        study = read_acdc_patient(shared / "data" / "acdc" / patient)
        frames = [study.ed_frame, study.es_frame]
        groups["acdc_held_out"] += confidences(study, model, frames)
        image = study.sax.image[..., frames].astype(np.float32)
        noise = rng.gamma(2.0, float(image.mean()) / 2.0 + 1e-3, image.shape).astype(np.float32)
        two_frames = Study({SAX: CineView(image=noise, affine=study.sax.affine)}, 0, 1)
        groups["gamma_noise"] += confidences(two_frames, model)
        mixed = _with_image(study, scrambled(study.sax.image.astype(np.float32), rng))
        groups["scrambled_8x8"] += confidences(mixed, model, frames)
    for exam in sorted(p for p in (shared / "data" / "sunnybrook").iterdir() if (p / "dicom").is_dir()):
        groups["sunnybrook"] += confidences(read_dicom_study(exam / "dicom"), model)
    for name, values in groups.items():
        finite = [v for v in values if np.isfinite(v)]
        below = sum(v < MIN_CONFIDENCE for v in finite)
        low, high = (min(finite), max(finite)) if finite else (float("nan"), float("nan"))
        print(
            f"{name}: {len(values)} frames, confidence {low:.3f}-{high:.3f}, {below} below {MIN_CONFIDENCE}, "
            f"{len(values) - len(finite)} without a heart"
        )


def _shipped() -> Path:
    from cinema.weights import default_weights_dir

    return default_weights_dir("sax_segmentation")


if __name__ == "__main__":
    main()
