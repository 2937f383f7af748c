"""The fine-tuning config: YAML + dotted overrides -> validated dataclasses, clear errors before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cinema.config import FinetuneConfig, config_from_dict, load_config
from cinema.config.parse import parse_overrides

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def minimal(**changes) -> dict:
    config = {
        "task": "segmentation",
        "output_dir": "runs/x",
        "data": {"format": "acdc", "dir": "data/acdc"},
        "model": {"name": "convunetr", "views": "sax"},
    }
    for key, value in changes.items():
        node = config
        parts = key.split("__")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return config


FINETUNE_CONFIGS = sorted(p for p in CONFIG_DIR.glob("*.yaml") if not p.name.startswith("pretrain_"))


@pytest.mark.parametrize("path", FINETUNE_CONFIGS, ids=lambda p: p.name)
def test_example_configs_validate(path: Path) -> None:
    config = load_config(path)
    assert isinstance(config, FinetuneConfig)
    official = config.model_config()
    assert official["model"]["name"] == config.model.name
    assert official["model"]["out_chans"] == config.out_chans


def test_defaults_follow_the_reference_recipe() -> None:
    config = config_from_dict(minimal())
    assert config.model.views == ["sax"]  # "views: sax" as the reference writes it
    assert (config.train.lr, config.train.min_lr, config.train.weight_decay) == (1e-3, 1e-5, 0.05)
    assert config.train.layer_decay == 0.75 and config.train.betas == [0.9, 0.95] and config.train.clip_grad == 5.0
    assert config.data.sax.patch_size == [192, 192, 16] and config.data.sax.spacing == [1.0, 1.0, 10.0]
    assert config.transform.sax.translate_range == [60.0, 60.0, 0.0]
    assert config.transform.lax.translate_range == [80.0, 80.0]
    assert config.out_chans == 4 and config.n_frames == 1


def test_yaml_scientific_notation_and_overrides(tmp_path: Path) -> None:
    values = minimal()
    values["train"] = {"lr": "1e-3"}  # what PyYAML gives for `lr: 1e-3`
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(values))
    config = load_config(
        path, ["train.lr=2e-4", "train.early_stopping.patience=3", "model.views=[sax]", "data.max_subjects=5"]
    )
    assert config.train.lr == pytest.approx(2e-4) and isinstance(config.train.lr, float)
    assert config.train.early_stopping.patience == 3
    assert config.data.max_subjects == 5
    assert parse_overrides(["a.b=1", "a.c=[1, 2]", "d=x"]) == {"a": {"b": 1, "c": [1, 2]}, "d": "x"}


@pytest.mark.parametrize(
    ("values", "overrides", "message"),
    [
        (minimal(data__dirr="x"), [], "unknown config key 'data.dirr' (did you mean 'dir'?)"),
        (minimal(), ["train.learning_rate=1"], "unknown config key 'train.learning_rate'"),
        ({k: v for k, v in minimal().items() if k != "model"}, [], "missing required config key 'model'"),
        (minimal(model={"name": "convunetr"}), [], "missing required config key 'model.views'"),
        (minimal(), ["train.n_epochs=ten"], "config key 'train.n_epochs': expected int"),
        (minimal(), ["data.sax.patch_size=[1, x, 2]"], "config key 'data.sax.patch_size[1]'"),
        (minimal(task="classify"), [], "config key 'task': 'classify' is not one of"),
        (minimal(task="classification"), [], "'model.name': 'convunetr' cannot do classification"),
        (minimal(task="classification", model__name="convvit"), [], "'data.class_column' is required"),
        (minimal(task="regression", model__name="convvit"), [], "'data.regression_column' is required"),
        (minimal(task="survival", model__name="convvit"), [], "'data.time_column' is required"),
        (minimal(data__slice_2d=True), [], "data.slice_2d needs model.name unet"),
        (minimal(model__views=["sax", "lax_5c"]), [], "unknown view 'lax_5c'"),
        (minimal(model__init="pretrained"), [], "'model.weights' is required"),
        (minimal(model__name="unet", model__init="pretrained", model__weights="w"), [], "cannot initialise unet"),
        (minimal(train__batch_size=6, train__batch_size_per_device=4), [], "multiple of train.batch_size_per_device"),
        (minimal(data__format="mnms"), [], "'data.manifest' is required"),
        (minimal(), ["train.lr"], "must look like key=value"),
    ],
)
def test_bad_configs_name_the_key(values: dict, overrides: list[str], message: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        config_from_dict(values, overrides)
    assert message in str(excinfo.value)


def test_load_config_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(minimal(train={"nepochs": 3})))
    with pytest.raises(ValueError, match=r"bad\.yaml: unknown config key 'train\.nepochs' \(did you mean 'n_epochs'"):
        load_config(path)
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_model_config_is_the_official_format() -> None:
    config = config_from_dict(
        minimal(
            task="classification",
            model={"name": "convvit", "views": "sax", "convvit": {"size": "tiny"}},
            data={"format": "acdc", "dir": "d", "class_column": "group", "classes": ["A", "B", "C"]},
        )
    )
    official = config.model_config()
    # what cinema.models.checkpoint reads: output size from data[class_column], frames stacked as channels
    assert official["data"]["class_column"] == "group" and official["data"]["group"] == ["A", "B", "C"]
    assert official["model"]["n_frames"] == 2 and official["model"]["convvit"]["size"] == "tiny"
    assert official["data"]["sax"] == {"spacing": [1.0, 1.0, 10.0], "patch_size": [192, 192, 16], "in_chans": 1}

    slices = config_from_dict(minimal(data__slice_2d=True, model={"name": "unet", "views": ["sax"]})).model_config()
    assert slices["model"]["unet"]["n_dims"] == 2 and slices["data"]["sax"]["patch_size"] == [192, 192]


@pytest.mark.parametrize("module", ["cinema.tasks", "cinema.train.trainer", "cinema.cli.finetune"])
def test_no_import_cycle_whichever_package_comes_first(module: str) -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
