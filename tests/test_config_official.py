"""The typed official configs (`cinema.config.official`): dict round trips, the golden config.yaml files, errors that
name the key, the fine-tuning config's model section, and that the model classes no longer import checkpoint I/O."""

from __future__ import annotations

import ast
import copy
import dataclasses
from pathlib import Path

import pytest
import torch
import yaml

import cinema.models
from cinema.config import config_from_dict
from cinema.config.official import (
    MODEL_CONFIGS,
    ConvUNetRModelConfig,
    ConvViTModelConfig,
    MAEModelConfig,
    ResNetModelConfig,
    UNetModelConfig,
    model_config_from_dict,
    model_kind,
)
from cinema.models.checkpoint import MODEL_CLASSES, build_model, load_model, save_model

SAX, LAX = [32, 32, 2], [32, 32]

# Per family: typed configs as the models build them (fields only) and as fine-tuning writes them (every field).
EXAMPLES = {
    "mae": [
        MAEModelConfig({"sax": SAX, "lax_2c": LAX, "lax_3c": LAX, "lax_4c": LAX}, size="tiny"),
        MAEModelConfig({"lax_4c": [64, 32], "lax_2c": LAX}, in_chans={"lax_4c": 2, "lax_2c": 1}, size="tiny"),
        MAEModelConfig(
            {"sax": SAX}, size="tiny", enc_conv_chans=[8, 16], grad_ckpt=True, spacing={"sax": [1.0, 1.0, 10.0]}
        ),
    ],
    "convunetr": [
        ConvUNetRModelConfig({"sax": SAX}, out_chans=4, size="tiny", dec_chans=[4, 8, 8, 16, 16]),
        ConvUNetRModelConfig(
            {"sax": SAX, "lax_4c": LAX},
            out_chans=3,
            in_chans={"sax": 1, "lax_4c": 2},
            dropout=0.1,
            drop_path=0.1,
            task="landmark_heatmap",
            spacing={"sax": [1.0, 1.0, 10.0], "lax_4c": [1.0, 1.0]},
        ),
    ],
    "convvit": [
        ConvViTModelConfig({"sax": SAX}, out_chans=5, n_frames=2, size="tiny"),
        ConvViTModelConfig(
            {"sax": SAX},
            out_chans=3,
            n_frames=2,
            task="classification",
            dropout=0.1,
            class_column="group",
            classes=["A", "B", "C"],
        ),
        ConvViTModelConfig(
            {"sax": SAX, "lax_4c": LAX},
            out_chans=1,
            task="regression",
            regression_column="ef",
            regression_mean=55.5,
            regression_std=9,
            spacing={"sax": [1.0, 1.0, 10.0], "lax_4c": [1.0, 1.0]},
        ),
    ],
    "unet": [
        UNetModelConfig("sax", in_chans=1, out_chans=4, chans=[4, 8]),
        UNetModelConfig(
            "sax",
            in_chans=3,
            out_chans=4,
            n_dims=2,
            chans=[4, 8],
            patch_size=[2, 2],
            scale_factor=[2, 2],
            task="landmark_heatmap",
            data_key="sax",
            spacing=[1.0, 1.0],
            image_size=[192, 192],
            context_slices=1,
        ),
    ],
    "resnet": [
        ResNetModelConfig("lax_4c", in_chans=1, out_chans=6, n_frames=2, depth=10),
        ResNetModelConfig(
            "sax",
            in_chans=1,
            out_chans=3,
            n_frames=2,
            grad_ckpt=False,
            spacing=[1.0, 1.0, 10.0],
            image_size=[192, 192, 16],
            class_column="group",
            classes=["A", "B", "C"],
        ),
    ],
}
CASES = [pytest.param(c, id=f"{kind}-{i}") for kind, configs in EXAMPLES.items() for i, c in enumerate(configs)]


@pytest.mark.parametrize("config", CASES)
def test_dict_round_trip(config) -> None:
    cls = type(config)
    as_dict = config.to_dict()
    assert model_kind(as_dict) == cls.KIND and MODEL_CONFIGS[cls.KIND] is cls
    back = cls.from_dict(yaml.safe_load(yaml.safe_dump(as_dict, sort_keys=False)))
    assert back == config
    assert back.to_dict() == as_dict
    assert yaml.safe_dump(back.to_dict(), sort_keys=False) == yaml.safe_dump(as_dict, sort_keys=False)  # key order


@pytest.mark.parametrize("config", CASES)
def test_model_kwargs_build_the_model_that_writes_the_config(config) -> None:
    cls = MODEL_CLASSES[config.KIND]
    with torch.device("meta"):
        direct = cls(**config.model_kwargs())
        via_dict = build_model(config.to_dict())
    assert type(via_dict) is cls
    assert via_dict.config == config.to_dict()
    assert list(direct.state_dict()) == list(via_dict.state_dict())
    # built from its arguments, a model writes the fields it has (the extra metadata comes from a config)
    fields_only = cls.from_config(config).config
    assert model_config_from_dict(direct.config).model_kwargs() == model_config_from_dict(fields_only).model_kwargs()


def _golden_configs(golden_dir: Path) -> list[Path]:
    paths = sorted(golden_dir.glob("*/config.yaml"))
    if not paths:
        pytest.skip("no golden folders")
    return paths


def test_golden_config_files_round_trip(golden_dir: Path) -> None:
    for path in _golden_configs(golden_dir):
        text = path.read_text()
        official = yaml.safe_load(text)
        config = model_config_from_dict(official)
        assert type(config).from_dict(config.to_dict()) == config, path
        expected = copy.deepcopy(official)
        if expected["model"].get("out_chans", 0) is None:  # "out_chans: null" is resolved from the class list
            expected["model"]["out_chans"] = config.out_chans
        assert config.to_dict() == expected, path
        assert yaml.safe_dump(config.to_dict(), sort_keys=False) == yaml.safe_dump(expected, sort_keys=False)
        if expected == official:
            assert yaml.safe_dump(config.to_dict(), sort_keys=False) == text, path  # byte for byte


def test_fields_read_from_official_configs() -> None:
    classification = ConvViTModelConfig.from_dict(
        {
            "task": "classification",
            "data": {"sax": {"patch_size": SAX}, "class_column": "pathology", "pathology": ["DCM", "HCM"]},
            "model": {"name": "convvit", "views": "sax", "n_frames": 2, "out_chans": None, "convvit": {"size": "tiny"}},
        }
    )
    assert (classification.out_chans, classification.classes) == (2, ["DCM", "HCM"])
    assert classification.in_chans == {"sax": 1}
    assert classification.model_kwargs()["n_frames"] == 2
    data = {"sax": {"patch_size": SAX}, "lax": {"patch_size": LAX}}
    mae = MAEModelConfig.from_dict({"data": data, "model": {"size": "base", "views": ["sax"]}})
    assert mae.views == ["sax", "lax_2c", "lax_3c", "lax_4c"]  # the released loader builds all four views
    assert (mae.patch_size, mae.enc_conv_chans, mae.in_chans["lax_4c"]) == ([4, 4, 1], [64, 128], 1)  # defaults


def test_unknown_keys_survive_and_baselines_are_written_back_as_read() -> None:
    source = {
        "task": "segmentation",
        "data": {"name": "acdc", "sax": {"spacing": [1, 1, 10], "patch_size": SAX, "in_chans": 1}},
        "model": {"views": ["sax"], "out_chans": 4, "convunetr": {"size": "tiny", "note": "x"}},
        "train": {"lr": 0.001},
    }
    out = ConvUNetRModelConfig.from_dict(source).to_dict()
    assert out["train"] == {"lr": 0.001} and out["data"]["name"] == "acdc" and out["model"]["convunetr"]["note"] == "x"
    assert out["data"]["sax"]["spacing"] == [1, 1, 10]  # read, but written back as it was (ints stay ints)
    assert out["model"]["name"] == "convunetr" and out["model"]["convunetr"]["dropout"] == 0.0  # resolved

    unet = {
        "data": {"lax": {"in_chans": 1}},
        "model": {"name": "unet", "views": ["lax_4c"], "out_chans": 2, "unet": {"chans": [4, 8], "patch_size": 2}},
    }
    read = UNetModelConfig.from_dict(unet)
    assert read.to_dict() == unet  # unchanged: as it was read
    changed = dataclasses.replace(read, out_chans=3).to_dict()
    assert changed["model"]["out_chans"] == 3 and changed["model"]["unet"]["n_dims"] == 2
    assert changed["data"]["lax"] == {"spacing": [1.0, 1.0], "in_chans": 1}


def test_landmark_heatmap_convunetr_keeps_its_task(tmp_path: Path) -> None:
    config = {
        "task": "landmark_heatmap",
        "data": {"lax": {"patch_size": LAX}},
        "model": {"views": "lax_4c", "out_chans": 3, "convunetr": {"size": "tiny", "dec_chans": [4, 8, 8, 16, 16]}},
    }
    folder = save_model(build_model(config), tmp_path / "heatmap")
    assert yaml.safe_load((folder / "config.yaml").read_text())["task"] == "landmark_heatmap"
    assert load_model(folder).config["task"] == "landmark_heatmap"


def _base(kind: str) -> dict:
    data = {"sax": {"patch_size": SAX, "in_chans": 1}, "lax": {"patch_size": LAX, "in_chans": 1}}
    return {
        "mae": {"data": data, "model": {"size": "tiny"}},
        "convunetr": {
            "task": "segmentation",
            "data": data,
            "model": {"name": "convunetr", "views": "sax", "out_chans": 4, "convunetr": {"size": "tiny"}},
        },
        "convvit": {
            "data": data,
            "model": {"name": "convvit", "views": "sax", "out_chans": 2, "convvit": {"size": "tiny"}},
        },
        "unet": {"data": data, "model": {"name": "unet", "views": "sax", "out_chans": 4, "unet": {"chans": [4, 8]}}},
        "resnet": {"data": data, "model": {"name": "resnet", "views": "sax", "out_chans": 2, "resnet": {"depth": 10}}},
    }[kind]


def _set(config: dict, dotted: str, value) -> dict:
    config = copy.deepcopy(config)
    *parents, leaf = dotted.split(".")
    node = config
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    return config


@pytest.mark.parametrize(
    ("kind", "key", "value", "named"),
    [
        ("mae", "model.size", "giant", "'model.size'"),
        ("mae", "model.patch_size", [4, 0, 1], "'model.patch_size'"),
        ("mae", "data.sax.patch_size", [32, 32], "'data.sax.patch_size'"),
        ("mae", "model.enc_conv_n_blocks", "two", "'model.enc_conv_n_blocks'"),
        ("convunetr", "model.convunetr.size", None, "'model.convunetr.size'"),
        ("convunetr", "model.convunetr.dec_chans", "wide", "'model.convunetr.dec_chans'"),
        ("convunetr", "model.out_chans", None, "'model.out_chans'"),
        ("convunetr", "task", "classification", "'task'"),
        ("convunetr", "data.sax.in_chans", "one", "'data.sax.in_chans'"),
        ("convvit", "model.convvit.size", "giant", "'model.convvit.size'"),
        ("convvit", "model.views", ["sax", "lax"], "'model.views'"),
        ("convvit", "model.n_frames", "two", "'model.n_frames'"),
        ("convvit", "data.class_column", "pathology", "'data.pathology'"),
        ("convvit", "data.sax.spacing", "1 mm", "'data.sax.spacing'"),
        ("unet", "model.unet.chans", None, "model.unet.chans"),
        ("unet", "model.unet.n_dims", 4, "'model.unet.n_dims'"),
        ("unet", "model.unet.dropout", "high", "'model.unet.dropout'"),
        ("resnet", "model.resnet.depth", None, "model.resnet.depth"),
        ("resnet", "model.resnet.layer_inplanes", [64, "x"], "'model.resnet.layer_inplanes'"),
        ("resnet", "model.views", ["sax", "lax_4c"], "single view"),
    ],
)
def test_a_bad_field_names_itself(kind: str, key: str, value, named: str) -> None:
    config = _set(_base(kind), key, value)
    with pytest.raises(ValueError) as err:
        MODEL_CONFIGS[kind].from_dict(config)
    assert named in str(err.value)
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        build_model(config)


def _finetune(task: str, name: str, views, **data) -> dict:
    return {
        "task": task,
        "output_dir": "runs/x",
        "data": {"format": "acdc", "dir": "d", "sax": {"spacing": [1.0, 1.0, 10.0], "patch_size": SAX}, **data},
        "model": {"name": name, "views": views, "convunetr": {"size": "tiny"}, "convvit": {"size": "tiny"}},
    }


@pytest.mark.parametrize(
    "values",
    [
        _finetune("segmentation", "convunetr", "sax"),
        _finetune("classification", "convvit", "sax", class_column="group", classes=["A", "B"]),
        _finetune("regression", "resnet", "sax", regression_column="ef", regression_mean=50.0, regression_std=9.0),
        _finetune("segmentation", "unet", "sax", slice_2d=True, context_slices=1),
    ],
    ids=["convunetr", "convvit", "resnet", "unet-slices"],
)
def test_finetune_model_config_is_the_typed_config(values: dict) -> None:
    config = config_from_dict(values)
    typed = config.official_model_config()
    official = config.model_config()
    assert official == typed.to_dict() and model_config_from_dict(official) == typed
    with torch.device("meta"):
        assert build_model(official).config == official  # what the trainer saves is model_config() itself


def _checkpoint_imports(source: str) -> list[int]:
    """Lines of a cinema.models module that import cinema.models.checkpoint (also lazily, also relatively)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = f"cinema.models.{base}" if base else "cinema.models"
            names = [base, *(f"{base}.{a.name}" for a in node.names)]
        if any(n == "cinema.models.checkpoint" or n.startswith("cinema.models.checkpoint.") for n in names):
            lines.append(node.lineno)
    return lines


def test_model_modules_do_not_import_checkpoint_io() -> None:
    """Only the loaders (checkpoint.py, and hub.py, the official API on top of it) and the package's re-exports import
    cinema.models.checkpoint: the models build from their typed configs, so loaders -> models is the only direction."""
    package = Path(cinema.models.__file__).parent
    loaders = ("checkpoint.py", "hub.py", "__init__.py")
    offenders = {
        path.name: lines
        for path in sorted(package.glob("*.py"))
        if path.name not in loaders and (lines := _checkpoint_imports(path.read_text()))
    }
    assert not offenders, f"modules importing cinema.models.checkpoint (file: lines): {offenders}"
    planted = "def f():\n    from cinema.models.checkpoint import save_model\nfrom . import checkpoint\n"
    assert sorted(_checkpoint_imports(planted)) == [2, 3]
    assert _checkpoint_imports("from .checkpoint import load_model\nimport cinema.models.checkpoint\n") == [1, 2]
    assert not _checkpoint_imports("from cinema.models.conv import conv_cls\nfrom . import vit\n")
