"""Small real-data cohorts and configs shared by the pre-training tests.

A cohort is a folder of links to real studies from ../shared: ACDC patients (SAX, ED and ES), the preprocessed
M&Ms-2 example (SAX and LAX 4C) and a LAX-only copy of it, so that studies with missing views are always present.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TINY_GEOMETRY = {
    "sax": {"spacing": [6.0, 6.0, 10.0], "patch_size": [32, 32, 8]},
    "lax": {"spacing": [8.0, 8.0], "patch_size": [32, 32]},
}
TINY_MODEL = {"size": "tiny", "views": ["sax", "lax_4c"], "enc_conv_chans": [4, 8], "enc_conv_n_blocks": 1}


def make_cohort(shared_dir: Path, root: Path, n_acdc: int) -> Path:
    """``root/data`` with n_acdc ACDC patients, the M&Ms-2 example (SAX + LAX 4C) and a LAX-only study."""
    data = root / "data"
    acdc = shared_dir / "data" / "acdc"
    examples = shared_dir / "data" / "preprocessed_examples"
    (data / "acdc").mkdir(parents=True)
    for patient in sorted(p for p in acdc.iterdir() if p.is_dir())[:n_acdc]:
        (data / "acdc" / patient.name).symlink_to(patient)
    (data / "mnms2").symlink_to(examples / "mnms2")
    lax_only = data / "lax_only"
    lax_only.mkdir()
    for name in ("lax_4c_ed.nii.gz", "lax_4c_es.nii.gz"):
        (lax_only / name).symlink_to(examples / "mnms2" / name)
    return data


def tiny_pretrain_config(output_dir: Path, data: dict[str, Any], **train: Any) -> dict[str, Any]:
    """Tiny MAE on a coarse model space, fp32 on the CPU: a step takes milliseconds."""
    return {
        "output_dir": str(output_dir),
        "seed": 3,
        "data": {**TINY_GEOMETRY, **data},
        "model": dict(TINY_MODEL),
        "train": {
            "n_epochs": 2,
            "n_warmup_epochs": 0.5,
            "lr": 3e-3,
            "batch_size": 4,
            "batch_size_per_device": 2,
            "precision": "fp32",
            "progress_bar": False,
            **train,
        },
    }
