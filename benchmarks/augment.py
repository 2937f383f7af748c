"""CPU cost of the training augmentation per batch: the reference pipeline against the same with acquisition shifts.

Times `SegmentationTask.augment` on batches shaped as the default SAX segmentation recipe trains on (8 slices of
128 x 128 with one neighbour on each side, 3 channels), one torch thread, for two configs (
configs/default_sax_segmentation.yaml with data.context_slices=1, and configs/sax_segmentation_shift_finetune.yaml),
and for each shift on its own at probability 1 (its worst case). Prints the median and 90th percentile of the
process CPU time in ms (wall time on a shared CPU measures the other jobs too).

    .venv/bin/python benchmarks/augment.py [--repeats 40] [--threads 1] [--batch 8]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from cinema.config import FinetuneConfig, load_config
from cinema.tasks.segmentation import SegmentationTask

REPO_ROOT = Path(__file__).resolve().parents[1]
SHIFT_KEYS = ("bias_field", "rician_std", "blur_sigma", "low_res", "slice_blend", "context_drop")
OFF = {"bias_field": 0.0, "rician_std": 0.0, "blur_sigma": 0.0, "low_res": 1.0, "slice_blend": 0.0, "context_drop": 0.0}


def _batch(batch: int, generator: torch.Generator) -> dict:
    image = torch.rand(batch, 3, 128, 128, generator=generator) * 400
    label = torch.randint(0, 4, (batch, 1, 128, 128), generator=generator)
    return {"image": {"sax": image}, "label": {"sax": label}}


def time_augment(config: FinetuneConfig, repeats: int, batch: int) -> list[float]:
    """CPU seconds (process time, robust to other jobs sharing the cores) per call of the task's batch augmentation,
    after two warm-up calls."""
    task = SegmentationTask(config)
    generator = torch.Generator().manual_seed(0)
    data = _batch(batch, generator)
    times = []
    for i in range(repeats + 2):
        started = time.process_time()
        task.augment(data, generator)
        if i >= 2:
            times.append(time.process_time() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = load_config(REPO_ROOT / "configs" / "default_sax_segmentation.yaml", ["data.context_slices=1"])
    shifted = load_config(REPO_ROOT / "configs" / "sax_segmentation_shift_finetune.yaml")
    cases = {"reference (default_sax_segmentation)": base, "with shifts (sax_segmentation_shift_finetune)": shifted}
    for key in SHIFT_KEYS:
        only = dict(OFF)
        only[key] = 1.0 if key == "context_drop" else getattr(shifted.transform.shift, key)
        shift = dataclasses.replace(shifted.transform.shift, prob=1.0, **only)
        transform = dataclasses.replace(base.transform, shift=shift)
        cases[f"reference + {key} always"] = dataclasses.replace(base, transform=transform)
    for name, config in cases.items():
        times = np.array(time_augment(config, args.repeats, args.batch)) * 1000
        print(f"{name}: median {np.median(times):.1f} ms, p90 {np.percentile(times, 90):.1f} ms per batch")


if __name__ == "__main__":
    main()
