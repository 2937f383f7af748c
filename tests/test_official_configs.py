"""The configs shipped in configs/: every one parses and validates, and those of CineMA's official fine-tuning tasks
(classification_cvd, _sex, _vendor, regression_ef, _age, _bmi) give, with the overrides their headers document, each
released checkpoint's task, view, class list or regression constants and the reference recipe
(docs/cinema-reference.md §4). ``cinema finetune --check`` then reads a small generated copy of CineMA's preprocessed
layout (real model-space example images, shrunk) with every one of them.
"""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from cinema.config import config_from_dict, load_config, load_pretrain_config

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CACHE = "~/.cache/cinema_datasets"

# released checkpoint (finetuned/<task>/<data>_<view>) -> (config, overrides documented in its header)
OFFICIAL: dict[str, tuple[str, list[str]]] = {
    "classification_cvd/mnms2_sax": ("classification_cvd", []),
    "classification_cvd/mnms2_lax_4c": ("classification_cvd", ["model.views=[lax_4c]"]),
    "classification_cvd/mnms_sax": (
        "classification_cvd",
        [f"data.dir={CACHE}/mnms/processed", "data.classes=[DCM,HCM,NOR,ARV,HHD]"],
    ),
    "classification_cvd/acdc_sax": (
        "classification_cvd",
        [
            f"data.dir={CACHE}/acdc/processed",
            "data.classes=[DCM,HCM,MINF,NOR,RV]",
            "data.manifest=train_metadata.csv",
            "data.split_column=null",
            "data.val_fraction=0.1",
        ],
    ),
    "classification_sex/mnms_sax": ("classification_sex", []),
    "classification_vendor/mnms2_sax": ("classification_vendor", []),
    "classification_vendor/mnms2_lax_4c": ("classification_vendor", ["model.views=[lax_4c]"]),
    "regression_ef/mnms2_sax": ("regression_ef", []),
    "regression_ef/mnms2_lax_4c": ("regression_ef", ["model.views=[lax_4c]"]),
    "regression_ef/mnms_sax": (
        "regression_ef",
        [
            f"data.dir={CACHE}/mnms/processed",
            "data.regression_mean=39.75061820807878",
            "data.regression_std=9.459011847661206",
        ],
    ),
    "regression_ef/acdc_sax": (
        "regression_ef",
        [
            f"data.dir={CACHE}/acdc/processed",
            "data.manifest=train_metadata.csv",
            "data.split_column=null",
            "data.val_fraction=0.1",
            "data.regression_mean=27.698811590282546",
            "data.regression_std=10.848138374627386",
        ],
    ),
    "regression_age/mnms_sax": ("regression_age", []),
    "regression_bmi/acdc_sax": ("regression_bmi", []),
}

# the released heads' class lists and normalisation constants (reference configs, docs/cinema-reference.md §4)
CLASSES = {
    ("cvd", "acdc"): ["DCM", "HCM", "MINF", "NOR", "RV"],
    ("cvd", "mnms"): ["DCM", "HCM", "NOR", "ARV", "HHD"],
    ("cvd", "mnms2"): ["ARR", "CIA", "FALL", "HCM", "LV", "NOR"],
    ("sex", "mnms"): ["M", "F"],
    ("vendor", "mnms2"): ["GE MEDICAL SYSTEMS", "Philips Medical Systems", "SIEMENS"],
}
COLUMNS = {"cvd": "pathology", "sex": "sex", "vendor": "vendor"}
REGRESSION = {
    ("ef", "acdc"): (27.698811590282546, 10.848138374627386),
    ("bmi", "acdc"): (25.561040294207242, 4.732639548868183),
    ("ef", "mnms"): (39.75061820807878, 9.459011847661206),
    ("age", "mnms"): (52.026666666666664, 18.760570771166726),
    ("ef", "mnms2"): (37.97920801605608, 10.328604573626588),
}


def _split(name: str) -> tuple[str, str, str, str]:
    """``classification_cvd/mnms2_lax_4c`` -> ("classification", "cvd", "mnms2", "lax_4c")."""
    task_name, folder = name.split("/")
    task, target = task_name.split("_", 1)
    dataset, view = folder.split("_", 1)
    return task, target, dataset, view


def test_every_shipped_config_parses_and_validates():
    paths = sorted(CONFIG_DIR.glob("*.yaml"))
    assert len(paths) >= 19
    for path in paths:
        if path.name.startswith("pretrain"):
            data = yaml.safe_load(path.read_text())["data"]
            # the data is named on the command line where the file leaves it open
            load_pretrain_config(path, [] if data.get("shards") or data.get("index") else ["data.shards=shards"])
        else:
            load_config(path)


def test_the_official_configs_cover_every_released_task():
    released = {name.split("/")[0] for name in OFFICIAL}
    assert released == {f"classification_{t}" for t in ("cvd", "sex", "vendor")} | {
        f"regression_{t}" for t in ("ef", "age", "bmi")
    }
    for task in released:  # one file per task, named as the release names it
        assert (CONFIG_DIR / f"{task}.yaml").is_file()


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_official_config_gives_the_released_model(name):
    config_name, overrides = OFFICIAL[name]
    path = CONFIG_DIR / f"{config_name}.yaml"
    text = path.read_text()
    for override in overrides:  # the header documents exactly these
        assert override in text, override
    config = load_config(path, overrides)
    task, target, dataset, view = _split(name)
    assert config.task == task and config.views == [view] and config.n_frames == 2
    assert config.data.format == "cinema" and f"/{dataset}/processed" in config.data.dir
    official = config.official_model_config().to_dict()
    if task == "classification":
        assert config.data.class_column == COLUMNS[target]
        assert official["data"]["class_column"] == COLUMNS[target]
        assert official["data"][COLUMNS[target]] == CLASSES[(target, dataset)]
        assert config.out_chans == len(CLASSES[(target, dataset)])
        assert config.train.label_smoothing == 0.1
        assert (config.train.early_stopping.metric, config.train.early_stopping.mode) == ("mcc", "max")
    else:
        assert config.data.regression_column == target
        mean, std = REGRESSION[(target, dataset)]
        assert (config.data.regression_mean, config.data.regression_std) == (mean, std)
        assert (config.train.early_stopping.metric, config.train.early_stopping.mode) == ("mae", "min")
    # the reference recipe
    train = config.train
    assert (train.lr, train.min_lr, train.n_warmup_epochs, train.n_epochs) == (1e-3, 1e-5, 10, 800)
    assert (train.batch_size, train.batch_size_per_device, train.eval_interval) == (64, 4, 20)
    assert (train.weight_decay, train.layer_decay, train.early_stopping.patience) == (0.05, 0.75, 5)
    assert (config.transform.prob, config.transform.gamma, config.transform.scale_range) == (0.5, [0.5, 1.5], 0.2)
    assert config.model.name == "convvit" and config.model.init == "pretrained" and config.model.convvit.size == "base"
    assert config.patch_size(view) == ((192, 192, 16) if view == "sax" else (256, 256))
    assert config.spacing(view) == ((1.0, 1.0, 10.0) if view == "sax" else (1.0, 1.0))


def test_cinema_format_needs_no_manifest_and_the_others_still_do(tmp_path):
    """CineMA's layout finds each split's CSV beside its folder; mnms / manifest / kaggle / landmark need theirs."""
    from cinema.io.errors import InputError

    base = {"task": "segmentation", "output_dir": str(tmp_path / "run")}
    base["model"] = {"name": "unet", "views": "sax"}
    config = config_from_dict({**base, "data": {"format": "cinema", "dir": str(tmp_path), "split_column": "split"}})
    assert config.data.manifest is None
    for data_format in ("mnms", "manifest", "kaggle", "landmark"):
        with pytest.raises(InputError, match="data.manifest' is required"):
            config_from_dict({**base, "data": {"format": data_format, "dir": str(tmp_path)}})


# -------------------------------------------------------------------------------------------------------------------
# --check on a generated copy of the preprocessed layout
# -------------------------------------------------------------------------------------------------------------------

# per dataset and split: (pid, pathology, sex, vendor); val and test hold classes the training split lacks, as in
# the official data (M&Ms-2: RV, TRI)
SUBJECTS = {
    "mnms2": {
        "train": [("001", "NOR"), ("002", "NOR"), ("003", "LV"), ("004", "LV"), ("005", "HCM"), ("006", "ARR")],
        "val": [("161", "RV"), ("162", "NOR")],
        "test": [("201", "TRI")],
    },
    "mnms": {
        "train": [("A0S9V9", "DCM"), ("A1D0Q7", "DCM"), ("A1D9Z7", "HCM"), ("A1E9Q1", "HCM"), ("A1O8Z3", "NOR")],
        "val": [("B0I2Z0", "AHS"), ("B2D9L0", "NOR")],
        "test": [("C0K1P0", "LVNC")],
    },
    "acdc": {
        "train": [
            ("patient001", "DCM"),
            ("patient002", "DCM"),
            ("patient021", "HCM"),
            ("patient022", "HCM"),
            ("patient061", "NOR"),
        ],
        "test": [("patient101", "DCM")],
    },
}
VENDORS = ["GE MEDICAL SYSTEMS", "Philips Medical Systems", "SIEMENS"]
SHRINK = 4  # the example images at a quarter of their in-plane size: the checks read a few hundred kB


def _save_shrunk(source: Path, target: Path) -> None:
    image = nib.load(str(source))
    affine = image.affine.copy()
    affine[:3, :2] *= SHRINK
    target.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[::SHRINK, ::SHRINK], affine), str(target))


@pytest.fixture(scope="module")
def layouts(preprocessed_dir, tmp_path_factory) -> Path:
    """``<root>/<dataset>/processed`` for ACDC, M&Ms and M&Ms-2 as CineMA's preprocessing writes them (metadata CSV
    columns included), each subject's ED / ES from that dataset's official example file."""
    root = tmp_path_factory.mktemp("cinema_datasets")
    for dataset, splits in SUBJECTS.items():
        views = ("sax", "lax_4c") if dataset == "mnms2" else ("sax",)
        for split, subjects in splits.items():
            rows = []
            for number, (pid, pathology) in enumerate(subjects):
                folder = root / dataset / "processed" / split / pid
                for view in views:
                    for phase in ("ed", "es"):
                        source = preprocessed_dir / dataset / f"{view}_{phase}.nii.gz"
                        _save_shrunk(source, folder / f"{pid}_{view}_{phase}.nii.gz")
                sex, vendor, ef = "MF"[number % 2], VENDORS[number % 3], 30.0 + 3 * number
                if dataset == "acdc":
                    rows.append(f"{pid},{pathology},1.8,{70 + number},{(70 + number) / 3.24:.3f},30,1,12,{ef}")
                elif dataset == "mnms":
                    rows.append(f"{pid},{pathology},{sex},{40 + number},{vendor},{ef}")
                else:
                    rows.append(f"{pid},{pathology},{vendor},{ef}")
            header = {
                "acdc": "pid,pathology,height,weight,bmi,n_frames,ed_frame,es_frame,ef",
                "mnms": "pid,pathology,sex,age,vendor,ef",
                "mnms2": "pid,pathology,vendor,ef",
            }[dataset]
            (root / dataset / "processed" / f"{split}_metadata.csv").write_text("\n".join([header, *rows]) + "\n")
    return root


# (training studies, validation studies) each official config reads from the generated layout
EXPECTED_COUNTS = {
    "classification_cvd/mnms2_sax": (6, 1),  # the official split, val's RV subject dropped (data.unlisted_classes)
    "classification_cvd/mnms2_lax_4c": (6, 1),
    "classification_cvd/mnms_sax": (5, 1),  # val's AHS subject dropped
    "classification_cvd/acdc_sax": (3, 2),  # train_metadata.csv only: one of each class of two validates
    "classification_sex/mnms_sax": (5, 2),  # the official split: train/ and val/, never test/
    "classification_vendor/mnms2_sax": (6, 2),
    "classification_vendor/mnms2_lax_4c": (6, 2),
    "regression_ef/mnms2_sax": (6, 2),
    "regression_ef/mnms2_lax_4c": (6, 2),
    "regression_ef/mnms_sax": (5, 2),
    "regression_ef/acdc_sax": (4, 1),
    "regression_age/mnms_sax": (5, 2),
    "regression_bmi/acdc_sax": (4, 1),
}


def test_finetune_check_reads_the_official_layout_with_every_official_config(layouts, tmp_path, capsys):
    from cinema.cli import main

    assert set(EXPECTED_COUNTS) == set(OFFICIAL)
    # a tiny network and model space: the layout, the targets and the splits are what is checked
    small = [
        "data.sax.spacing=[6.0,6.0,10.0]",
        "data.sax.patch_size=[32,32,8]",
        "data.lax.spacing=[6.0,6.0]",
        "data.lax.patch_size=[32,32]",
        "model.init=scratch",
        "model.weights=null",
        "model.grad_ckpt=false",
        "model.convvit.size=tiny",
        "train.device=cpu",
    ]
    for name, (config_name, overrides) in sorted(OFFICIAL.items()):
        dataset = _split(name)[2]
        run = [f"data.dir={layouts / dataset / 'processed'}", f"output_dir={tmp_path / name.replace('/', '-')}"]
        code = main(["finetune", str(CONFIG_DIR / f"{config_name}.yaml"), *overrides, *small, *run, "--check"])
        out = capsys.readouterr().out
        assert code == 0, out
        found = re.search(r"(\d+) training samples, (\d+) validation samples", out)
        assert found and (int(found[1]), int(found[2])) == EXPECTED_COUNTS[name], (name, out)


def test_the_test_split_is_read_only_when_named(layouts):
    """Without a manifest the layout's splits are read (their names in the ``split`` column) except ``test``, so that
    a random validation fraction can never draw training studies from it; naming test_metadata.csv reads it alone."""
    from cinema.train.datasets import _cinema_entries

    processed = layouts / "mnms2" / "processed"
    every = _cinema_entries(processed)
    assert {e.metadata["split"] for e in every} == {"train", "val"}
    assert "201" not in {e.id for e in every}  # the test subject
    test = _cinema_entries(processed, processed / "test_metadata.csv")
    assert [e.id for e in test] == ["201"] and test[0].metadata["split"] == "test"
