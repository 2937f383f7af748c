"""`cinema evaluate` / `cinema.evaluate`: per-case CSV, summary JSON with subgroups, Bland-Altman plots, scan-rescan CV.

Models are tiny and trained for one or two epochs by the real trainer on real ACDC (or the generated LAX cohorts of
the trainer's tests); the checks are that every number in the outputs is the metric of that model's predictions on
each image's own grid, recomputed here by hand or read back from the trainer's own validation log.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import matplotlib.image
import nibabel as nib
import numpy as np
import pytest
import torch
from test_train_data import (
    ACDC_CLASSES,
    acdc_data,
    landmark_data,
    make_landmark_cohort,
    make_survival_cohort,
    survival_data,
    tiny_config,
)

from cinema import cli
from cinema.analysis.segment import load_segmentation_model, segment_study
from cinema.config import config_from_dict
from cinema.evaluate import evaluate, scan_rescan_pairs, scan_rescan_summary
from cinema.io import read_acdc_info, read_acdc_patient
from cinema.metrics import hausdorff_mm
from cinema.train.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

FUNCTION = ("lv_edv", "lv_esv", "lv_ef", "rv_edv", "rv_esv", "rv_ef", "lv_mass")


def train(values: dict) -> Path:
    torch.set_num_threads(1)
    trainer = Trainer(config_from_dict(values))
    trainer.fit()
    return trainer.output_dir


@pytest.fixture(scope="module")
def segmentation_run(acdc_dir: Path, tmp_path_factory) -> Path:
    """A 2-D slice U-Net trained for two epochs on 3 ACDC patients; 3 validation patients."""
    data = acdc_data(acdc_dir, 6, val_fraction=0.5, slice_2d=True)
    return train(tiny_config("segmentation", "unet", data, tmp_path_factory.mktemp("seg"), n_epochs=2))


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def number(text: str) -> float:
    return float("nan") if text in ("", "nan") else float(text)


def check_png(path: Path) -> None:
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
    assert image[..., :3].std() > 0.01  # not a blank canvas


def test_segmentation_outputs_match_metrics_recomputed_by_hand(
    segmentation_run: Path, acdc_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "eval"
    result = evaluate(segmentation_run, out, by=["group"])
    splits = json.loads((segmentation_run / "splits.json").read_text())
    rows = read_rows(out / "per_case.csv")
    assert [r["id"] for r in rows] == sorted(splits["val"]) and len(rows) == 3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "segmentation" and summary["split"] == "val" and summary["n_cases"] == 3
    assert result.summary["n_cases"] == 3 and [r["id"] for r in result.rows] == [r["id"] for r in rows]

    # one case by hand, on its own NIfTI grid and header spacing
    case = rows[0]
    folder = acdc_dir / case["id"]
    info = read_acdc_info(folder)
    study = read_acdc_patient(folder)
    model = load_segmentation_model(segmentation_run / "model")
    pred = segment_study(study, model, frames=[0, 1], amp=False)  # evaluate runs fp32 on every machine
    volume_ml = {}
    for phase, frame, stored in (("ed", info["ed_frame"], study.ed_frame), ("es", info["es_frame"], study.es_frame)):
        label_file = nib.load(info["frames"][frame][1])
        truth = np.asarray(label_file.dataobj).astype(np.int64)
        zooms = label_file.header.get_zooms()[:3]
        voxel_ml = float(np.prod(zooms)) / 1000.0
        mask = pred[stored]
        assert mask.shape == truth.shape
        for label, name in ((1, "rv"), (2, "myo"), (3, "lv")):
            p, t = mask == label, truth == label
            dice = 2.0 * (p & t).sum() / (p.sum() + t.sum()) if (p.sum() + t.sum()) else 1.0
            assert number(case[f"dice_{phase}_{name}"]) == pytest.approx(dice, abs=1e-9)
            hd95 = hausdorff_mm(p, t, zooms) if p.any() else math.nan
            assert number(case[f"hd95_{phase}_{name}"]) == pytest.approx(hd95, nan_ok=True, rel=1e-9)
            volume_ml[(phase, name, "pred")] = p.sum() * voxel_ml
            volume_ml[(phase, name, "true")] = t.sum() * voxel_ml
    for kind in ("pred", "true"):
        lv_edv, lv_esv = volume_ml[("ed", "lv", kind)], volume_ml[("es", "lv", kind)]
        assert number(case[f"lv_edv_{kind}"]) == pytest.approx(lv_edv, rel=1e-6)
        assert number(case[f"lv_esv_{kind}"]) == pytest.approx(lv_esv, rel=1e-6)
        ef = (lv_edv - lv_esv) / lv_edv * 100.0 if lv_edv > 0 else math.nan
        assert number(case[f"lv_ef_{kind}"]) == pytest.approx(ef, rel=1e-6, nan_ok=True)
        assert number(case[f"rv_edv_{kind}"]) == pytest.approx(volume_ml[("ed", "rv", kind)], rel=1e-6)
        assert number(case[f"lv_mass_{kind}"]) == pytest.approx(1.05 * volume_ml[("ed", "myo", kind)], rel=1e-6)
    assert number(case["lv_edv_true"]) > 50.0  # a real heart, not an empty label map
    assert case["group"] == info["group"]

    # summary: means and Bland-Altman statistics of the CSV columns, overall and per ACDC group
    overall = summary["overall"]
    dice = np.array([number(r["dice_ed_lv"]) for r in rows])
    assert overall["n"] == 3 and overall["dice_ed_lv_mean"] == pytest.approx(dice.mean())
    for quantity in ("lv_edv", "lv_esv", "lv_mass", "rv_edv"):
        diff = np.array([number(r[f"{quantity}_pred"]) - number(r[f"{quantity}_true"]) for r in rows])
        assert overall[f"{quantity}_bias"] == pytest.approx(diff.mean())
        assert overall[f"{quantity}_mae"] == pytest.approx(np.abs(diff).mean())
        sd = diff.std(ddof=1)
        assert overall[f"{quantity}_loa_low"] == pytest.approx(diff.mean() - 1.96 * sd)
        assert overall[f"{quantity}_loa_high"] == pytest.approx(diff.mean() + 1.96 * sd)
    groups = summary["subgroups"]["group"]
    assert set(groups) == {r["group"] for r in rows}
    assert sum(g["n"] for g in groups.values()) == 3
    for name, group in groups.items():
        members = [r for r in rows if r["group"] == name]
        diff = [number(r["lv_edv_pred"]) - number(r["lv_edv_true"]) for r in members]
        assert group["lv_edv_bias"] == pytest.approx(np.mean(diff))
    table = read_rows(out / "subgroups.csv")
    assert [(r["column"], r["group"]) for r in table] == [("all", "all")] + [("group", g) for g in sorted(groups)]

    # a Bland-Altman plot per function index with at least one defined pair; valid PNGs
    plotted = {p.name for p in out.glob("bland_altman_*.png")}
    expected = {f"bland_altman_{q}.png" for q in FUNCTION if overall[f"{q}_n"] > 0}
    assert plotted == expected and "bland_altman_lv_edv.png" in plotted
    for path in out.glob("*.png"):
        check_png(path)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_scan_rescan_cv_of_generated_pairs(segmentation_run: Path, acdc_dir: Path, tmp_path: Path) -> None:
    """A manifest of ACDC studies, two of them scanned twice (one rescan with a shrunken manual LV at ED)."""
    root = tmp_path / "cohort"
    for patient in ("patient001", "patient002", "patient007"):
        shutil.copytree(acdc_dir / patient, root / patient)
    shutil.copytree(acdc_dir / "patient002", root / "patient002_rescan")
    info = read_acdc_info(root / "patient002_rescan")
    gt_path = Path(info["frames"][info["ed_frame"]][1])
    gt = nib.load(gt_path)
    labels = np.asarray(gt.dataobj)
    lv = labels == 3
    from scipy import ndimage

    labels = np.where(lv & ~ndimage.binary_erosion(lv, iterations=2), 2, labels).astype(np.int16)
    nib.save(nib.Nifti1Image(labels, gt.affine, gt.header), str(gt_path))
    manifest = root / "manifest.csv"
    rows = [
        ("a", "patient001", "p1", "", "F"),
        ("a_rescan", "patient001", "p1", "", "F"),
        ("b", "patient002", "", "", "M"),
        ("b_rescan", "patient002_rescan", "", "b", "M"),
        ("c", "patient007", "", "", "F"),
    ]
    manifest.write_text("id,path,pair_id,rescan_of,sex\n" + "".join(",".join(r) + "\n" for r in rows))
    out = tmp_path / "eval"
    overrides = [f"data.dir={root}", "data.format=manifest", "data.manifest=manifest.csv", "data.max_subjects=-1"]
    result = evaluate(
        segmentation_run, out, weights=segmentation_run / "model", split="all", by=["sex"], overrides=overrides
    )
    per_case = {r["id"]: r for r in read_rows(out / "per_case.csv")}
    assert sorted(per_case) == ["a", "a_rescan", "b", "b_rescan", "c"]
    rescan = result.summary["scan_rescan"]
    assert rescan["n_pairs"] == 2
    # identical scans: the same prediction and labels twice; b's rescan differs in its manual ED LV only
    for column in ("lv_ef_pred", "lv_edv_pred", "lv_esv_pred"):
        assert per_case["a"][column] == per_case["a_rescan"][column]
    for column in ("lv_edv_true", "lv_ef_true"):
        a, b = number(per_case["b"][column]), number(per_case["b_rescan"][column])
        assert b < a
        by_hand = math.sqrt((((a - b) ** 2 / 2) / ((a + b) / 2) ** 2 + 0.0) / 2)  # mean over two pairs, one zero
        assert rescan[f"{column}_cv_percent"] == pytest.approx(100 * by_hand)
    assert rescan["lv_esv_true_cv_percent"] == pytest.approx(0.0)
    sexes = json.loads((out / "summary.json").read_text())["subgroups"]["sex"]
    assert {k: v["n"] for k, v in sexes.items()} == {"F": 3, "M": 2}


def test_scan_rescan_pairing_rules() -> None:
    rows = [
        {"id": "a", "pair_id": "x", "v": 10.0},
        {"id": "b", "pair_id": "x", "v": 12.0},
        {"id": "c", "v": 20.0},
        {"id": "d", "rescan_of": "c", "v": 20.0},
        {"id": "e", "pair_id": float("nan"), "v": 1.0},
    ]
    assert [(p[0]["id"], p[1]["id"]) for p in scan_rescan_pairs(rows)] == [("a", "b"), ("c", "d")]
    cv = scan_rescan_summary(rows, ["v"])["v_cv_percent"]
    assert cv == pytest.approx(100 * math.sqrt(((2.0**2 / 2) / 11.0**2) / 2))
    assert scan_rescan_summary([{"id": "a", "v": 1.0}], ["v"]) is None
    failed_pair = [{"id": "f", "pair_id": "y", "v": 0.0}, {"id": "g", "pair_id": "y", "v": 0.0}]
    assert math.isnan(scan_rescan_summary([*rows, *failed_pair], ["v"])["v_cv_percent"])  # not an aborted evaluation
    with pytest.raises(ValueError, match="pair_id 'x' marks 3 studies"):
        scan_rescan_pairs([*rows[:2], {"id": "z", "pair_id": "x"}])
    with pytest.raises(ValueError, match="rescan_of names 'q'"):
        scan_rescan_pairs([{"id": "a", "rescan_of": "q"}])


def _lax_run(kind: str, folder: Path) -> Path:
    if kind == "survival":
        manifest = make_survival_cohort(folder / "cohort", n=16, n_val=6)
        values = tiny_config("survival", "convvit", survival_data(manifest), folder, n_epochs=1, batch_size=8,
                             batch_size_per_device=8)  # fmt: skip
    else:
        manifest = make_landmark_cohort(folder / "cohort", n=6, n_val=3)
        values = tiny_config(kind, "convunetr" if kind == "landmark_heatmap" else "convvit", landmark_data(manifest),
                             folder, n_epochs=1, batch_size=2, batch_size_per_device=2)  # fmt: skip
    return train(values)


# (task, trainer validation metric, evaluate's overall key)
CONSISTENCY = {
    "classification": [("mcc", "classification_mcc"), ("accuracy", "classification_accuracy"),
                       ("auroc", "classification_auroc"), ("sensitivity", "classification_sensitivity")],
    "regression": [("restored_mae", "regression_mae"), ("restored_rmse", "regression_rmse")],
    "survival": [("c_index", "c_index")],
    "landmark_heatmap": [("mean_distance", "mean_distance_mean"), ("distance_2", "distance_2_mean")],
    "landmark_coordinate": [("mean_distance", "mean_distance_mean")],
}  # fmt: skip


@pytest.mark.parametrize("task", list(CONSISTENCY))
def test_task_predictions_agree_with_the_trainers_validation(task: str, acdc_dir: Path, tmp_path: Path, capsys) -> None:
    if task == "classification":
        data = acdc_data(acdc_dir, 10, val_fraction=0.4, class_column="group", classes=ACDC_CLASSES)
        run = train(tiny_config(task, "convvit", data, tmp_path, n_epochs=1))
    elif task == "regression":
        data = acdc_data(acdc_dir, 6, val_fraction=0.5, regression_column="lv_ef")
        run = train(tiny_config(task, "convvit", data, tmp_path, n_epochs=1))
    else:
        run = _lax_run(task, tmp_path)
    validation = read_rows(run / "val_log.csv")[-1]
    out = tmp_path / "eval"
    by = ["group"] if task in ("classification", "regression") else []
    argv = ["evaluate", str(run), "-o", str(out), "--quiet"] + (["--by", "group"] if by else [])
    assert cli.main(argv) == 0
    assert "evaluated" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    for val_key, key in CONSISTENCY[task]:
        assert summary["overall"][key] == pytest.approx(float(validation[val_key]), rel=1e-5, abs=1e-6), key
    rows = read_rows(out / "per_case.csv")
    assert len(rows) == summary["n_cases"] == len(json.loads((run / "splits.json").read_text())["val"])
    if task == "classification":
        proba = np.array([[float(r[f"prob_{c}"]) for c in ACDC_CLASSES] for r in rows])
        assert np.allclose(proba.sum(axis=1), 1.0, atol=1e-5)
        assert all(r["true_class"] == r["group"] for r in rows)
        correct = [r["y_true"] == r["y_pred"] for r in rows]
        assert summary["overall"]["classification_accuracy"] == pytest.approx(np.mean(correct))
        assert set(summary["subgroups"]["group"]) == {r["group"] for r in rows}
    if task == "regression":
        # the target in its own units (LVEF in %), and a Bland-Altman plot of it
        assert all(0.0 < float(r["y_true"]) < 100.0 for r in rows)
        errors = [float(r["y_pred"]) - float(r["y_true"]) for r in rows]
        assert summary["overall"]["regression_bias"] == pytest.approx(np.mean(errors))
        check_png(out / "bland_altman_lv_ef.png")
    if task.startswith("landmark"):
        distances = np.array([[float(r[f"distance_{k}"]) for k in (1, 2, 3)] for r in rows])
        assert np.allclose(distances.mean(axis=1), [float(r["mean_distance"]) for r in rows])


def test_command_line_errors(segmentation_run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "eval"
    assert cli.main(["evaluate", str(tmp_path / "nowhere"), "-o", str(out)]) == 2
    assert "no such run folder" in capsys.readouterr().err
    assert cli.main(["evaluate", str(segmentation_run), "-o", str(out), "--by", "vendor", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no metadata column ['vendor']" in err and "group" in err
    assert not out.exists()  # nothing half-written
    assert cli.main(["evaluate", str(segmentation_run), "-o", str(out), "--weights", str(tmp_path / "w")]) == 2
    assert "model not found" in capsys.readouterr().err
    out.mkdir()
    (out / "old.txt").write_text("keep")
    assert cli.main(["evaluate", str(segmentation_run), "-o", str(out), "--quiet"]) == 2
    assert "--force" in capsys.readouterr().err and (out / "old.txt").exists()
    assert cli.main(["evaluate", str(segmentation_run), "-o", str(out), "--quiet", "--force"]) == 2
    assert "not written by cinema" in capsys.readouterr().err and (out / "old.txt").exists()
    out = tmp_path / "earlier"
    assert cli.main(["evaluate", str(segmentation_run), "-o", str(out), "--quiet"]) == 0
    assert cli.main(["evaluate", str(segmentation_run), "-o", str(out), "--quiet", "--force", "--split", "train"]) == 0
    assert json.loads((out / "summary.json").read_text())["split"] == "train"
