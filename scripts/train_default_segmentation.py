"""Train the default SAX segmentation model (configs/default_sax_segmentation.yaml) exactly as shipped.

Usage: python scripts/train_default_segmentation.py [key=value overrides...]

Runs torch with one thread (``CINEMA_THREADS`` to change it): the shipped weights were trained on a 2-core CPU shared
with other jobs, where two OpenMP threads competing with other processes ran many times slower than one. Checks the
config's ``data.val_ids`` against the stratified split it is documented to be.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cinema.config import load_config
from cinema.io.datasets import read_acdc_info
from cinema.train.trainer import Trainer

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "default_sax_segmentation.yaml"


def stratified_split(acdc_dir: Path, per_group: int = 3, seed: int = 0) -> list[str]:
    """Validation ids: ``per_group`` patients per ACDC Group, drawn from each group's sorted list."""
    groups: dict[str, list[str]] = {}
    for folder in sorted(p for p in acdc_dir.iterdir() if (p / "Info.cfg").is_file()):
        groups.setdefault(read_acdc_info(folder)["group"], []).append(folder.name)
    rng = np.random.default_rng(seed)
    val: list[str] = []
    for group in sorted(groups):
        members = groups[group]
        val += [members[i] for i in sorted(rng.permutation(len(members))[:per_group])]
    return sorted(val)


def training_seconds(log: Path) -> float | None:
    """Wall time from the ``done: ... s wall`` line that `main` prints at the end of a run's log, if it finished."""
    found = re.search(r"done: .* (\d+) s wall", log.read_text())
    return float(found.group(1)) if found else None


def main(overrides: list[str]) -> int:
    torch.set_num_threads(int(os.environ.get("CINEMA_THREADS", "1")))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    config = load_config(CONFIG, overrides)
    if config.data.max_subjects < 0:
        expected = stratified_split(Path(config.data.dir))
        if sorted(config.data.val_ids or []) != expected:
            raise SystemExit(f"config val_ids differ from the stratified split {expected}")
    started = time.perf_counter()
    result = Trainer(config).fit()
    print(
        f"done: {result.epochs_completed} epochs, {result.global_step} steps, best {result.metric} "
        f"{result.best_metric} at epoch {result.best_epoch}, {time.perf_counter() - started:.0f} s wall"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
