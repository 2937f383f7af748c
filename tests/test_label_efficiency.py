"""scripts/label_efficiency.py: label fractions x (scratch, MAE-pretrained) on real ACDC with a tiny model."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import matplotlib.image
import pytest
import torch
import yaml
from test_train_data import acdc_data, tiny_config

from cinema.models.checkpoint import build_model, save_model

pytestmark = pytest.mark.usefixtures("one_thread")

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "label_efficiency.py"


@pytest.fixture(scope="module")
def label_efficiency():
    spec = importlib.util.spec_from_file_location("label_efficiency", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sweep_config(acdc_dir: Path, tmp_path: Path) -> Path:
    values = tiny_config("segmentation", "convunetr", acdc_data(acdc_dir, 5, val_fraction=0.2), tmp_path, n_epochs=1)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def _tiny_sax_mae(folder: Path) -> Path:
    torch.manual_seed(0)
    mae = build_model(
        {
            "data": {"sax": {"patch_size": [32, 32, 8], "in_chans": 1}},
            "model": {
                "name": "mae",
                "size": "tiny",
                "views": ["sax"],
                "enc_conv_chans": [4, 8],
                "enc_conv_n_blocks": 1,
            },
        }
    )
    return save_model(mae, folder)


def test_sweep_writes_table_and_plot(acdc_dir: Path, tmp_path: Path, label_efficiency, capsys) -> None:
    config = _sweep_config(acdc_dir, tmp_path)
    mae = _tiny_sax_mae(tmp_path / "mae")
    out = tmp_path / "sweep"
    argv = [str(config), "--fractions", "0.3", "1.0", "--mae", str(mae), "-o", str(out), "--quiet"]
    assert label_efficiency.main(argv) == 0

    with open(out / "label_efficiency.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["init"], float(r["fraction"])) for r in rows] == [
        ("scratch", 0.3),
        ("scratch", 1.0),
        ("pretrained", 0.3),
        ("pretrained", 1.0),
    ]
    # 5 studies: 1 validation, 4 training; 30 % keeps one of them
    assert [int(r["n_train_studies"]) for r in rows] == [1, 4, 1, 4]
    assert all(r["metric"] == "mean_dice" and 0.0 <= float(r["best"]) <= 1.0 for r in rows)
    for row in rows:
        run = Path(row["run"])
        splits = json.loads((run / "splits.json").read_text())
        assert len(splits["val"]) == 1 and len(splits["train"]) == int(row["n_train_studies"])
        saved = yaml.safe_load((run / "config.yaml").read_text())
        assert saved["data"]["proportion"] == float(row["fraction"]) and saved["model"]["init"] == row["init"]
        val_log = list(csv.DictReader(open(run / "val_log.csv", newline="")))
        assert float(val_log[-1]["mean_dice"]) == pytest.approx(float(row["best"]))
    # every run scores the same validation studies; the smaller training set is inside the larger one
    splits = [json.loads((Path(r["run"]) / "splits.json").read_text()) for r in rows]
    assert all(s["val"] == splits[0]["val"] for s in splits)
    assert set(splits[0]["train"]) <= set(splits[1]["train"])
    # the pretrained runs start from the MAE encoder, the scratch runs do not
    pretrained = yaml.safe_load((Path(rows[2]["run"]) / "config.yaml").read_text())
    assert pretrained["model"]["weights"] == str(mae)
    image = matplotlib.image.imread(out / "label_efficiency.png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert "wrote" in capsys.readouterr().out

    # a second call resumes the finished runs instead of training them again
    before = (Path(rows[0]["run"]) / "train_log.csv").read_text()
    assert label_efficiency.main(argv) == 0
    assert (Path(rows[0]["run"]) / "train_log.csv").read_text() == before


def test_bad_arguments_fail_before_training(acdc_dir: Path, tmp_path: Path, label_efficiency, capsys) -> None:
    config = _sweep_config(acdc_dir, tmp_path)
    assert label_efficiency.main([str(config), "--inits", "pretrained", "-o", str(tmp_path / "a")]) == 1
    assert "need --mae" in capsys.readouterr().err
    assert label_efficiency.main([str(config), "--fractions", "0", "-o", str(tmp_path / "b")]) == 1
    assert "(0, 1]" in capsys.readouterr().err
    assert label_efficiency.main([str(config), "--mae", str(tmp_path / "none"), "-o", str(tmp_path / "c")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_pretrained_config_brings_its_own_mae(acdc_dir: Path, tmp_path: Path, label_efficiency) -> None:
    """Without --mae the config's MAE weights are used; the scratch run trains every weight, frozen or not."""
    mae = _tiny_sax_mae(tmp_path / "mae")
    config = _sweep_config(acdc_dir, tmp_path)
    values = yaml.safe_load(config.read_text())
    values["model"].update({"init": "pretrained", "weights": str(mae), "freeze_pretrained": True})
    config.write_text(yaml.safe_dump(values))
    out = tmp_path / "sweep"
    assert label_efficiency.main([str(config), "--fractions", "1.0", "-o", str(out), "--quiet"]) == 0
    rows = list(csv.DictReader(open(out / "label_efficiency.csv", newline="")))
    assert [r["init"] for r in rows] == ["scratch", "pretrained"]
    saved = {r["init"]: yaml.safe_load((Path(r["run"]) / "config.yaml").read_text())["model"] for r in rows}
    assert saved["pretrained"]["weights"] == str(mae) and saved["pretrained"]["freeze_pretrained"] is True
    assert saved["scratch"]["init"] == "scratch" and saved["scratch"]["freeze_pretrained"] is False
