"""Same-budget comparison of SAX segmentation networks on ACDC: the 2-D U-Net baseline against CineMA's ConvUNetR.

Every leg is the default recipe (``scripts/train_default_segmentation.py``: data, split, augmentation, Dice + CE loss,
AdamW, cosine schedule) with its own overrides, trained from scratch. All legs run at once with one torch thread each,
so they share the machine alike; their epochs are set so that each trains for about the same wall time on a 2-core
CPU (measured: 32 min for the U-Net, 42 for the ConvUNetR, which got the longer budget). Then ``benchmarks/segment.py``
scores each selected model the way users get it (``cinema segment``'s pipeline on the native grid) on the recipe's 15
validation patients, and a Markdown table is printed.

The ConvUNetR is the official architecture (ViT-base encoder, 125.7 M parameters) applied to one SAX slice at a time:
its SAX conv stem and decoder have no z-stride, so a ``[128, 128, 1]`` patch is a valid input and the weights keep the
official format (``cinema segment --weights`` loads them and feeds native slices).

    python scripts/compare_segmentation.py [--out runs/compare] [--legs unet2d convunetr] [--eval-only]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from train_default_segmentation import training_seconds  # scripts/, beside this file

REPO_ROOT = Path(__file__).resolve().parents[1]

COMMON = ["train.amp=false", "train.early_stopping.patience=100"]
LEGS: dict[str, tuple[str, list[str]]] = {
    # 1254 slices per epoch; 5 epochs (780 steps of 8) took 32 min at one thread beside the other leg (AMD EPYC)
    "unet2d": ("2-D U-Net (6.7 M)", ["train.n_epochs=5", "train.eval_interval=5"]),
    # one random slice per labelled frame (130 samples, 16 steps per epoch); 8 epochs (128 steps) took 42 min
    "convunetr": (
        "ConvUNetR-base on slices (125.7 M), scratch",
        [
            "model.name=convunetr",
            "data.slice_2d=false",
            "data.sax.patch_size=[128,128,1]",
            "train.n_epochs=8",
            "train.eval_interval=8",
            "train.n_warmup_epochs=1",
            "train.lr=1e-3",
        ],
    ),
}


def train_legs(legs: list[str], out: Path) -> None:
    env = {**os.environ, "CINEMA_THREADS": "1"}
    running = []
    for leg in legs:
        overrides = [f"output_dir={out / leg}", *COMMON, *LEGS[leg][1]]
        log = open(out / f"{leg}.log", "w")  # noqa: SIM115 - closed after the process ends
        command = [sys.executable, str(REPO_ROOT / "scripts" / "train_default_segmentation.py"), *overrides]
        running.append((leg, subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env), log))
    for leg, process, log in running:
        if process.wait() != 0:
            raise SystemExit(f"{leg}: training failed, see {out / f'{leg}.log'}")
        log.close()


def evaluate_leg(leg: str, out: Path, threads: int) -> dict:
    result = out / leg / "validation.json"
    command = [sys.executable, str(REPO_ROOT / "benchmarks" / "segment.py"), "--weights", str(out / leg / "model")]
    subprocess.run([*command, "--json", str(result), "--threads", str(threads)], check=True)
    return json.loads(result.read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO_ROOT / "runs" / "compare"))
    parser.add_argument("--legs", nargs="*", default=list(LEGS), choices=list(LEGS))
    parser.add_argument("--eval-only", action="store_true", help="score legs already trained in --out")
    parser.add_argument("--eval-threads", type=int, default=2)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.eval_only:
        train_legs(args.legs, out)
    print(
        "| model | training | Dice RV ED / ES | Dice MYO ED / ES | Dice LV ED / ES | mean | LVEF MAE | RVEF MAE "
        "| Sunnybrook LV / MYO |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for leg in args.legs:
        result = evaluate_leg(leg, out, args.eval_threads)
        scores = result["acdc_plain"]["summary"]["lcc"]
        sunnybrook = list(result["sunnybrook_plain"].values())
        other = " / ".join(f"{sum(e[f'dice_{c}'] for e in sunnybrook) / len(sunnybrook):.3f}" for c in ("lv", "myo"))
        seconds = training_seconds(out / f"{leg}.log")
        wall = f"{seconds / 60:.0f} min" if seconds else "?"
        cells = [f"{scores[f'dice_ed_{c}']:.3f} / {scores[f'dice_es_{c}']:.3f}" for c in ("rv", "myo", "lv")]
        print(
            f"| {LEGS[leg][0]} | {wall} | {' | '.join(cells)} | {scores['mean_dice']:.3f} | "
            f"{scores['lv_ef_mae']:.2f} | {scores['rv_ef_mae']:.2f} | {other} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
