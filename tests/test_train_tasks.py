"""Every task trains end to end through the one trainer: segmentation and classification on real ACDC patients,
regression on ACDC's LV ejection fraction (from its ground truth), landmarks and survival on generated cohorts.

Models are tiny (transformer width 16, a few conv channels) and patches small (SAX 32 x 32 x 8 at 6 x 6 x 10 mm) so
each run takes seconds on the CPU; the point is that the whole pipeline runs and learns, not the accuracy.
"""

from __future__ import annotations

from pathlib import Path

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

from cinema.config import config_from_dict
from cinema.models.checkpoint import load_model
from cinema.models.inference import to_device
from cinema.train.runlog import read_csv_log
from cinema.train.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def fit(values: dict, *overrides: str) -> tuple[Trainer, object]:
    trainer = Trainer(config_from_dict(values, list(overrides)))
    return trainer, trainer.fit()


def check_run(trainer: Trainer, result, expected_metrics: set[str]) -> torch.nn.Module:
    """Common checks: logs, finite losses, a reloadable official-format model equal to the trained one."""
    out = result.output_dir
    assert result.epochs_completed == trainer.config.train.n_epochs
    train_rows = read_csv_log(out / "train_log.csv")
    assert len(train_rows) == result.global_step == trainer.steps_per_epoch * result.epochs_completed
    assert all(np.isfinite(row["loss"]) for row in train_rows)
    val_rows = read_csv_log(out / "val_log.csv")
    assert len(val_rows) == len(result.val_metrics) and expected_metrics <= set(val_rows[0])
    model = load_model(out / "model")
    best = max(range(len(val_rows)), key=lambda i: val_rows[i][result.metric] * (1 if _maximise(result) else -1))
    assert result.best_epoch == val_rows[best]["epoch"]
    assert (out / "checkpoint.pt").is_file() and (out / "config.yaml").is_file() and (out / "splits.json").is_file()
    return model


def _maximise(result) -> bool:
    return result.metric in ("mean_dice", "mcc", "accuracy", "auroc", "c_index")


def test_segmentation_convunetr_on_acdc(acdc_dir: Path, tmp_path: Path) -> None:
    values = tiny_config("segmentation", "convunetr", acdc_data(acdc_dir, 4, val_fraction=0.25), tmp_path)
    trainer, result = fit(values)
    assert len(trainer.train_set) == 6 and len(trainer.val_set) == 2  # ED + ES of 3 and of 1 patient
    model = check_run(trainer, result, {"mean_dice", "dice_rv", "dice_myo", "dice_lv"})
    assert 0.0 <= result.val_metrics[-1]["mean_dice"] <= 1.0
    assert model.config["task"] == "segmentation" and model.config["model"]["out_chans"] == 4
    sample = trainer.val_set[0]["image"]["sax"][None, ..., :8]
    with torch.no_grad():
        trainer.model.eval()
        if result.best_epoch == result.epochs_completed:  # the saved model is the last one
            assert torch.allclose(model({"sax": sample})["sax"], trainer.model({"sax": sample})["sax"], atol=1e-5)


def test_segmentation_unet_on_sax_slices(acdc_dir: Path, tmp_path: Path) -> None:
    data = acdc_data(acdc_dir, 3, val_fraction=0.34, slice_2d=True)
    values = tiny_config("segmentation", "unet", data, tmp_path, batch_size=16, batch_size_per_device=8)
    trainer, result = fit(values)
    slices = sum(s.images["sax"].shape[0] * s.images["sax"].shape[-1] for s in trainer.train_set.subjects)
    assert len(trainer.train_set) == slices  # every slice of ED and ES is a sample
    assert trainer.train_set[(0, 0)]["image"]["sax"].shape == (1, 32, 32)
    model = check_run(trainer, result, {"mean_dice"})
    assert model.n_dims == 2 and trainer.n_accum == 2
    # validation scores whole volumes: one row per labelled frame of the validation patient
    assert len(trainer.val_set) == 2 and trainer.val_set[0]["image"]["sax"].ndim == 4


@pytest.mark.parametrize("model_name", ["convvit", "resnet"])
def test_classification_on_acdc(acdc_dir: Path, tmp_path: Path, model_name: str) -> None:
    data = acdc_data(acdc_dir, 10, val_fraction=0.2, class_column="group", classes=ACDC_CLASSES)
    trainer, result = fit(tiny_config("classification", model_name, data, tmp_path))
    targets = sorted(int(s.target) for s in trainer.train_set.subjects + trainer.val_set.subjects)
    assert targets == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]  # two patients of each group
    assert trainer.train_set[(0, 0)]["image"]["sax"].shape == (2, 32, 32, 8)  # ED and ES as channels
    model = check_run(trainer, result, {"mcc", "accuracy", "auroc", "sensitivity", "specificity"})
    assert model.config["data"]["group"] == ACDC_CLASSES
    with torch.no_grad():
        assert model({"sax": torch.rand(1, 2, 32, 32, 8)}).shape == (1, 5)


def test_regression_of_lv_ef_on_acdc(acdc_dir: Path, tmp_path: Path) -> None:
    data = acdc_data(acdc_dir, 6, val_fraction=0.34, regression_column="lv_ef")
    trainer, result = fit(tiny_config("regression", "convvit", data, tmp_path))
    config = trainer.config.data
    # lv_ef comes from the ground-truth ED/ES volumes; ACDC mixes reduced (DCM, MINF) and normal EF
    assert 10.0 < config.regression_mean < 80.0 and config.regression_std > 1.0
    targets = np.array([s.target for s in trainer.train_set.subjects])
    assert abs(targets.mean()) < 1e-6 and abs(targets.std() - 1.0) < 1e-6  # z-scored with the training split
    model = check_run(trainer, result, {"mae", "restored_mae"})
    metrics = result.val_metrics[-1]
    assert metrics["restored_mae"] == pytest.approx(metrics["mae"] * config.regression_std, rel=1e-6)
    assert model.config["data"]["lv_ef"]["mean"] == pytest.approx(config.regression_mean)


@pytest.mark.parametrize(
    ("task", "model_name"), [("landmark_heatmap", "convunetr"), ("landmark_coordinate", "convvit")]
)
def test_landmarks_on_generated_images(tmp_path: Path, task: str, model_name: str) -> None:
    manifest = make_landmark_cohort(tmp_path / "landmarks", n=10, n_val=3)
    trainer, result = fit(tiny_config(task, model_name, landmark_data(manifest), tmp_path))
    model = check_run(trainer, result, {"mean_distance", "distance_1", "distance_2", "distance_3"})
    assert np.isfinite(result.val_metrics[-1]["mean_distance"])
    expected = (1, 3, 32, 32) if task == "landmark_heatmap" else (1, 6)
    with torch.no_grad():
        out = model({"lax_4c": torch.rand(1, 1, 32, 32)})
    assert (out["lax_4c"] if isinstance(out, dict) else out).shape == expected


def test_survival_learns_risk_from_the_image(tmp_path: Path) -> None:
    manifest = make_survival_cohort(tmp_path / "cohort", n=32, n_val=12)
    values = tiny_config(
        "survival", "convvit", survival_data(manifest), tmp_path, n_epochs=10, eval_interval=5, batch_size=8,
        batch_size_per_device=8, early_stopping={"patience": 10},
    )  # fmt: skip
    trainer = Trainer(config_from_dict(values))
    trainer.setup()
    untrained = trainer.validate(torch.utils.data.DataLoader(trainer.val_set, batch_size=1))["c_index"]
    result = trainer.fit()
    check_run(trainer, result, {"c_index", "cox_loss"})
    trained = result.val_metrics[-1]["c_index"]
    # held-out subjects: the larger the ventricle, the earlier the event; the head learns that ordering
    assert trained >= 0.75 and trained > untrained + 0.1, (untrained, trained)


@pytest.mark.parametrize(
    ("task", "model_name"),
    [
        ("segmentation", "convunetr"),
        ("segmentation", "unet"),
        ("classification", "convvit"),
        ("classification", "resnet"),
        ("regression", "resnet"),
        ("landmark_heatmap", "unet"),
        ("landmark_coordinate", "resnet"),
        ("survival", "convvit"),
    ],
)
def test_loss_decreases_on_a_fixed_batch(acdc_dir: Path, tmp_path: Path, task: str, model_name: str) -> None:
    if task.startswith("landmark"):
        data = landmark_data(make_landmark_cohort(tmp_path / "lm", n=5, n_val=1))
    elif task == "survival":
        data = survival_data(make_survival_cohort(tmp_path / "sv", n=6, n_val=1))
    else:
        extra = {"classification": {"class_column": "group", "classes": ACDC_CLASSES}}.get(task, {})
        extra.update({"regression_column": "lv_ef"} if task == "regression" else {})
        data = acdc_data(acdc_dir, 5 if task == "classification" else 2, val_fraction=0.0, **extra)
        data["slice_2d"] = model_name == "unet"  # the compact U-Net is the 2-D slice segmenter
    trainer = Trainer(config_from_dict(tiny_config(task, model_name, data, tmp_path)))
    trainer.setup()
    loader = torch.utils.data.DataLoader(trainer.train_set, batch_size=4, shuffle=False)
    batch = trainer.task.prepare_eval(to_device(next(iter(loader)), trainer.device))
    model, task_obj = trainer.model.train(), trainer.task
    if model_name in ("convunetr", "convvit"):
        for module in model.modules():  # dropout / drop path would make single-batch losses noisy
            if isinstance(module, torch.nn.Dropout) or type(module).__name__ == "DropPath":
                module.p = 0.0
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss, _ = task_obj.loss(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
