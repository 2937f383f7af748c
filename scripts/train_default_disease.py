"""Train and package the default disease classifier (cinema/weights/acdc_disease_classifier).

Usage: python scripts/train_default_disease.py [--acdc ../shared/data/acdc] [--seg-weights DIR] [--out DIR]

1. Features (`cinema.analysis.disease.disease_features`) of the 65 training patients of the default segmentation
   model's split (its recipe.json), so classifier and segmentation never see the 15 validation patients: from their
   ground-truth ED/ES labels and (default ``--train-on truth+segmentation``) also from the segmentation model's
   predictions, so the classifier learns the features as users' exams will have them.
2. The L2 strength is chosen by patient-level 5-fold cross-validation repeated 10 times (numpy default_rng(0)).
3. Fit on all 65; validate on the 15 held-out patients twice: from their ground-truth labels and — the number users
   get — from the shipped segmentation model's predictions (`segment_study`, label-free crop, post-processing on).
4. Write config.json, model.safetensors and recipe.json (split, seed, chosen L2, CV and validation numbers, device).
Deterministic: no random initialisation, L-BFGS from zeros.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from cinema.analysis.disease import (
    ACDC_GROUPS,
    FEATURE_NAMES,
    disease_features,
    fit_disease_classifier,
    save_disease_classifier,
)
from cinema.analysis.segment import load_segmentation_model, segment_study
from cinema.io import read_acdc_patient
from cinema.metrics import classification_metrics
from cinema.metrics.classification import confusion_matrix

REPO_ROOT = Path(__file__).resolve().parents[1]
L2_GRID = (0.1, 0.3, 1.0, 3.0, 10.0)


def _cpu() -> str:
    try:
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
    except OSError:
        names = []
    return f"{len(names) or '?'}-core {names[0] if names else platform.machine()} CPU"


def _row(features: dict[str, float]) -> list[float]:
    return [features[name] for name in FEATURE_NAMES]


def cross_validate(
    x: np.ndarray, y: list[str], patients: list[str], l2: float, repeats: int = 10, folds: int = 5
) -> float:
    """Accuracy over repeated patient-level folds (a patient's rows never straddle train and test)."""
    rng = np.random.default_rng(0)
    unique = sorted(set(patients))
    correct = total = 0
    for _ in range(repeats):
        parts = np.array_split(rng.permutation(len(unique)), folds)
        for part in parts:
            held = {unique[i] for i in part}
            test = [i for i, p in enumerate(patients) if p in held]
            train = [i for i, p in enumerate(patients) if p not in held]
            model = fit_disease_classifier(x[train], [y[i] for i in train], l2=l2)
            guess = model.predict_proba(x[test]).argmax(axis=1)
            correct += sum(model.classes[g] == y[i] for g, i in zip(guess, test, strict=True))
            total += len(test)
    return correct / total


def _scores(model, x: np.ndarray, y: list[str]) -> dict:
    proba = model.predict_proba(x)
    truth = [model.classes.index(v) for v in y]
    metrics = classification_metrics(truth, proba)
    matrix = confusion_matrix(truth, proba.argmax(axis=1), n_classes=len(model.classes))
    return {
        "accuracy": float(metrics["accuracy"]),
        "mcc": float(metrics["mcc"]),
        "auroc": float(metrics["auroc"]),
        "confusion_rows_true_cols_pred": np.asarray(matrix).tolist(),
        "predicted": [model.classes[i] for i in proba.argmax(axis=1)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--acdc", default=str(REPO_ROOT.parent / "shared" / "data" / "acdc"))
    parser.add_argument("--seg-weights", default=None, help="segmentation model (default: the shipped one)")
    parser.add_argument("--out", default=str(REPO_ROOT / "cinema" / "weights" / "acdc_disease_classifier"))
    parser.add_argument(
        "--train-on",
        choices=("truth", "truth+segmentation"),
        default="truth+segmentation",
        help="training rows: ground-truth features only, or also the segmentation model's (its bias included)",
    )
    parser.add_argument("--note", default="", help="recorded with the device, e.g. 'machine shared with ...'")
    args = parser.parse_args()
    torch.set_num_threads(1)
    seg = load_segmentation_model(args.seg_weights)
    split = json.loads((Path(seg.source) / "recipe.json").read_text())["split"]
    acdc = Path(args.acdc)

    started = time.perf_counter()
    train_x, train_y, train_ids = [], [], []
    for pid in split["train"]:
        study = read_acdc_patient(acdc / pid)
        labels, spacing = study.sax.labels, study.sax.spacing
        rows = [_row(disease_features(labels[study.ed_frame], labels[study.es_frame], spacing))]
        if args.train_on == "truth+segmentation":
            pred = segment_study(study, seg, frames=[study.ed_frame, study.es_frame])
            rows.append(_row(disease_features(pred[study.ed_frame], pred[study.es_frame], spacing)))
        train_x += rows
        train_y += [study.metadata["group"]] * len(rows)
        train_ids += [pid] * len(rows)
    x = np.array(train_x)
    cv = {str(l2): cross_validate(x, train_y, train_ids, l2) for l2 in L2_GRID}
    best_l2 = max(L2_GRID, key=lambda v: (cv[str(v)], -abs(np.log(v))))  # ties -> closest to 1
    model = fit_disease_classifier(x, train_y, l2=best_l2)

    val_truth_x, val_pred_x, val_y, seconds = [], [], [], []
    for pid in split["val"]:
        study = read_acdc_patient(acdc / pid)
        labels, spacing = study.sax.labels, study.sax.spacing
        val_truth_x.append(_row(disease_features(labels[study.ed_frame], labels[study.es_frame], spacing)))
        t0 = time.perf_counter()
        pred = segment_study(study, seg, frames=[study.ed_frame, study.es_frame])
        val_pred_x.append(_row(disease_features(pred[study.ed_frame], pred[study.es_frame], spacing)))
        seconds.append(time.perf_counter() - t0)
        val_y.append(study.metadata["group"])
    from_truth = _scores(model, np.array(val_truth_x), val_y)
    from_segmentation = _scores(model, np.array(val_pred_x), val_y)
    recipe = {
        "model": "multinomial logistic regression (L2) on 15 segmentation features; cinema.analysis.disease",
        "classes": list(ACDC_GROUPS),
        "features": list(FEATURE_NAMES),
        "reproduce": "python scripts/train_default_disease.py",
        "data": "shared ACDC copy, the default segmentation model's 65 training patients: features of their "
        + (
            "ground-truth ED/ES labels and of the segmentation model's ED/ES predictions (two rows per patient)"
            if args.train_on == "truth+segmentation"
            else "ground-truth ED/ES labels"
        ),
        "train_on": args.train_on,
        "split": {"train": split["train"], "val": split["val"], "rule": "the segmentation model's split"},
        "seed": 0,
        "l2_grid_cv_accuracy": cv,
        "l2": best_l2,
        "cv": "5-fold x 10 repeats on the 65 training patients, numpy default_rng(0)",
        "validation_from_ground_truth_labels": from_truth,
        "validation_from_segmentation": from_segmentation,
        "validation_truth": val_y,
        "segmentation_model": str(Path(seg.source).name),
        "device": f"{_cpu()}, 1 torch thread" + (f", {args.note}" if args.note else ""),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "segmentation_seconds_per_exam": round(float(np.mean(seconds)), 2),
    }
    save_disease_classifier(model, args.out, recipe)
    print(json.dumps({k: recipe[k] for k in ("l2_grid_cv_accuracy", "l2")}))
    print("validation from ground truth:", json.dumps(from_truth))
    print("validation from segmentation:", json.dumps(from_segmentation))


if __name__ == "__main__":
    main()
