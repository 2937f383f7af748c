"""Package a finished default-segmentation run (or an ensemble of packaged runs) as the shipped weights.

Usage:
    python scripts/package_default_segmentation.py RUN_DIR TRAIN_LOG [--out DIR]
    python scripts/package_default_segmentation.py --ensemble PACKAGED_DIR PACKAGED_DIR ... [--out DIR]

A run becomes ``config.yaml``, ``model.safetensors`` (fp16 storage; loads as fp32) and ``recipe.json`` (training
config, split, seed, device, epochs, wall time, torch version, and the validation numbers of the full inference
pipeline with the fp32 run weights and with the fp16 package, without and with largest-component post-processing).
``--ensemble`` copies already packaged folders (each with its recipe.json) into one folder as members, writes
``ensemble.yaml`` (`cinema.analysis.segment` averages the members' probabilities) and a recipe.json with the
ensemble's own validation numbers. ``--out`` defaults to ``cinema/weights/sax_segmentation_unet2d/`` (replaced whole).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import sys
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

from segment import evaluate_patients  # noqa: E402  (benchmarks/segment.py)
from train_default_segmentation import training_seconds  # noqa: E402  (scripts/, beside this file)

from cinema.analysis.segment import POSTPROCESS_CLASSES, load_segmentation_model  # noqa: E402

TARGET = REPO_ROOT / "cinema" / "weights" / "sax_segmentation_unet2d"
CI_PATIENTS = ("patient012", "patient043", "patient081")  # tests/test_segment.py


def _cpu() -> str:
    try:
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"
    bf16 = " with AMX" if "amx_bf16" in flags else " with AVX-512 BF16" if "avx512_bf16" in flags else ""
    return f"{os.cpu_count()}-core CPU ({names[0] if names else 'unknown'}{bf16})"


def _replace(tmp: Path, target: Path) -> None:
    """Move the finished ``tmp`` folder to ``target`` (replacing it), readable by every user of the package."""
    for path in tmp.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old)
    else:
        os.replace(tmp, target)


def _ci_numbers(result: dict) -> dict:
    return {
        row["id"]: {k: v for k, v in row.items() if k.startswith("lcc_dice")}
        for row in result["patients"]
        if row["id"] in CI_PATIENTS
    }


def package_ensemble(members: list[Path], target: Path) -> None:
    """Copy packaged model folders into ``target`` as the members of one ensemble, and score the ensemble."""
    torch.set_num_threads(int(os.environ.get("CINEMA_THREADS", "1")))
    recipes = {}
    for folder in members:
        if not (folder / "recipe.json").is_file():
            raise SystemExit(f"{folder}: not a packaged model folder (no recipe.json); package the run first")
        recipes[folder.name] = json.loads((folder / "recipe.json").read_text())
    if len(recipes) != len(members):
        raise SystemExit("ensemble members need distinct folder names")
    splits = {json.dumps(r["split"]["val"]) for r in recipes.values()}
    if len(splits) != 1:
        raise SystemExit("ensemble members were validated on different splits")
    split = next(iter(recipes.values()))["split"]
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for folder in members:
        shutil.copytree(folder, tmp / folder.name)
    names = [folder.name for folder in members]
    (tmp / "ensemble.yaml").write_text(
        "# cinema.analysis.segment averages the softmax probabilities of these model folders\n"
        + yaml.safe_dump({"members": names})
    )
    acdc = REPO_ROOT.parent / "shared" / "data" / "acdc"
    result = evaluate_patients(load_segmentation_model(tmp), [acdc / i for i in split["val"]])
    recipe = {
        "model": f"ensemble of {len(names)} models (mean of their softmax probabilities): "
        + "; ".join(f"{n}: {recipes[n]['model']}" for n in names),
        "members": names,
        "reproduce": "reproduce and package each member (its own recipe.json), then python "
        "scripts/package_default_segmentation.py --ensemble " + " ".join(names),
        "data": next(iter(recipes.values()))["data"],
        "split": split,
        "device": "inference as for any model; each member's training device is in its recipe.json",
        "torch": torch.__version__,
        "validation_pipeline": next(iter(recipes.values()))["validation_pipeline"],
        "validation_fp16_shipped": result["summary"],
        "members_validation_fp16": {n: recipes[n]["validation_fp16_shipped"] for n in names},
        "ci_check": _ci_numbers(result),
    }
    (tmp / "recipe.json").write_text(json.dumps(recipe, indent=1))
    _replace(tmp, target)
    for variant in ("raw", "lcc"):
        print("ensemble", variant, json.dumps({k: round(v, 4) for k, v in result["summary"][variant].items()}))
    print("CI patients", json.dumps(recipe["ci_check"], indent=1))


def main(run_dir: Path, log: Path, target: Path = TARGET) -> None:
    torch.set_num_threads(1)
    acdc = REPO_ROOT.parent / "shared" / "data" / "acdc"
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    splits = json.loads((run_dir / "splits.json").read_text())
    with open(run_dir / "val_log.csv") as f:
        val_log = list(csv.DictReader(f))
    best = max(val_log, key=lambda row: float(row["mean_dice"]))
    # a run that continued the shipped model records the recipe it started from (read before it is replaced)
    started_from = None
    if config["model"].get("init") == "finetuned":
        source = (REPO_ROOT / config["model"]["weights"]).resolve()
        if not (source / "recipe.json").is_file():
            raise SystemExit(f"{source}: the run continued weights without a recipe.json, so it cannot be reproduced")
        started_from = json.loads((source / "recipe.json").read_text())
        started_from.pop("ci_check", None)

    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copy(run_dir / "model" / "config.yaml", tmp / "config.yaml")
    state = load_file(str(run_dir / "model" / "model.safetensors"))
    save_file({k: v.half().contiguous() for k, v in state.items()}, str(tmp / "model.safetensors"))

    folders = [acdc / i for i in splits["val"]]
    fp32 = evaluate_patients(load_segmentation_model(run_dir / "model"), folders)
    fp16 = evaluate_patients(load_segmentation_model(tmp), folders)
    ci = _ci_numbers(fp16)
    recipe = {
        "model": "2-D residual U-Net on SAX slices (cinema.models.unet), 1.5 mm in-plane, 128 x 128 canvas"
        + (
            f", {config['data']['context_slices']} neighbouring slice(s) on each side as input channels (2.5-D)"
            if config["data"].get("context_slices")
            else ""
        ),
        "n_parameters": sum(v.numel() for v in state.values()),
        "reproduce": "CINEMA_THREADS=2 python scripts/train_default_segmentation.py  (config "
        "configs/default_sax_segmentation.yaml), then python scripts/package_default_segmentation.py RUN_DIR TRAIN_LOG",
        "data": "shared ACDC copy (80 patients, ED and ES frames with ground truth), nothing else",
        "split": {
            "rule": "3 validation patients per ACDC Group (DCM, HCM, MINF, NOR, RV), numpy default_rng(0) "
            "permutation of each group's sorted patient list; the rest train",
            "train": splits["train"],
            "val": splits["val"],
        },
        "seed": config["seed"],
        # how the run was trained (scripts/train_default_segmentation.py reads the same variables)
        "device": f"{_cpu()}, {os.environ.get('CINEMA_THREADS', '1')} torch thread(s), "
        + ("bf16 autocast" if config["train"]["amp"] else "fp32")
        + (f", {os.environ['CINEMA_TRAIN_NOTE']}" if os.environ.get("CINEMA_TRAIN_NOTE") else ""),
        "torch": torch.__version__,
        "epochs": int(config["train"]["n_epochs"]),
        "selected_epoch": int(best["epoch"]),
        "training_wall_seconds": training_seconds(log),
        "trainer_validation": {k: float(v) for k, v in best.items() if k not in ("epoch", "step")},
        "validation_pipeline": "cinema.analysis.segment.segment_study on the native grid, label-free heart crop; "
        "Dice per class averaged over the 15 validation patients; EF from native-grid volumes; raw = no "
        f"post-processing, lcc = the default one (largest component of classes {list(POSTPROCESS_CLASSES)})",
        "validation_fp32": fp32["summary"],
        "validation_fp16_shipped": fp16["summary"],
        "ci_check": ci,
        "config": config,
    }
    if started_from is not None:
        recipe["reproduce"] = (
            "reproduce the model in initialised_from (its own reproduce line), then CINEMA_THREADS=2 python "
            "scripts/train_default_segmentation.py with this config's overrides (model.init=finetuned, model.weights "
            "= that model), then python scripts/package_default_segmentation.py RUN_DIR TRAIN_LOG"
        )
        recipe["initialised_from"] = started_from
    (tmp / "recipe.json").write_text(json.dumps(recipe, indent=1))
    _replace(tmp, target)
    for name, result in (("fp32", fp32), ("fp16 shipped", fp16)):
        for variant in ("raw", "lcc"):
            print(name, variant, json.dumps({k: round(v, 4) for k, v in result["summary"][variant].items()}))
    print("CI patients", json.dumps(ci, indent=1))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=Path, help="RUN_DIR TRAIN_LOG, or the packaged members")
    parser.add_argument("--ensemble", action="store_true", help="the paths are packaged folders to combine")
    parser.add_argument("--out", type=Path, default=TARGET, help=f"folder to write (default {TARGET})")
    args = parser.parse_args()
    if args.ensemble:
        package_ensemble(args.paths, args.out)
    elif len(args.paths) == 2:
        main(args.paths[0], args.paths[1], args.out)
    else:
        parser.error("expected RUN_DIR TRAIN_LOG (or --ensemble with packaged folders)")
