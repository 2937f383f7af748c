"""Issue 19 leftovers: classes outside the config's list (``data.unlisted_classes``), ``cinema finetune`` overrides
around its flags, and two more layouts of CineMA's preprocessing, each generated here in small with the reference's
file and column names: the Kaggle Data Science Bowl (``<pid>_sax_t`` and (x, y, t) long-axis cines, reference volumes
in ``<split>_metadata.csv``, no masks) and Rescan (files without the pid prefix, nested train ids, ``ed_index`` /
``es_index``, pseudo-labels of every frame, the paired ``test_retest_100`` split with EDV / ESV only).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from cinema.io.errors import InputError

pytestmark = pytest.mark.usefixtures("one_thread")

SAX_AFFINE = np.diag([4.0, 4.0, 10.0, 1.0])


def _save(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))


# ---------------------------------------------------------------------------------------------------------------------
# 1. data.unlisted_classes
# ---------------------------------------------------------------------------------------------------------------------

# as in the official M&Ms-2 data: the val split holds RV, a class absent from training and from the released head
SUBJECTS = {
    "train": [("001", "NOR"), ("002", "NOR"), ("003", "LV"), ("004", "LV")],
    "val": [("161", "RV"), ("162", "NOR")],
}


@pytest.fixture(scope="module")
def classes_layout(tmp_path_factory) -> Path:
    """CineMA's preprocessed layout: <split>_metadata.csv + <split>/<pid>/<pid>_sax_ed/_es.nii.gz (small synthetic)."""
    root = tmp_path_factory.mktemp("mnms2") / "processed"
    rng = np.random.default_rng(0)
    for split, subjects in SUBJECTS.items():
        for pid, _ in subjects:
            for phase in ("ed", "es"):
                image = rng.integers(0, 255, (24, 24, 4)).astype(np.uint8)
                _save(image, SAX_AFFINE, root / split / pid / f"{pid}_sax_{phase}.nii.gz")
        rows = "".join(f"{pid},{pathology},SIEMENS\n" for pid, pathology in subjects)
        (root / f"{split}_metadata.csv").write_text("pid,pathology,vendor\n" + rows)
    return root


def _classification(root: Path, tmp_path: Path, **data: object) -> dict:
    values = {"task": "classification", "output_dir": str(tmp_path / "run")}
    values["data"] = {
        "format": "cinema",
        "dir": str(root),
        "split_column": "split",
        "class_column": "pathology",
        "classes": ["LV", "NOR"],
        "crop_center": "image",
        "sax": {"spacing": [6.0, 6.0, 10.0], "patch_size": [16, 16, 4]},
        **data,
    }
    values["model"] = {"name": "resnet", "views": "sax", "resnet": {"depth": 10, "layer_inplanes": [4, 8, 8, 16]}}
    values["train"] = {"device": "cpu", "progress_bar": False, "batch_size": 4, "n_epochs": 2, "n_warmup_epochs": 0}
    return values


def test_an_unlisted_class_in_the_val_split_is_an_error_naming_it_by_default(classes_layout, tmp_path):
    from cinema.config import config_from_dict
    from cinema.train.datasets import build_datasets

    config = config_from_dict(_classification(classes_layout, tmp_path))
    assert config.data.unlisted_classes == "error"
    with pytest.raises(InputError) as caught:
        build_datasets(config)
    message = str(caught.value)
    assert "\n" not in message
    assert str(classes_layout / "val" / "161") in message  # the subject
    assert "'RV'" in message and "data.unlisted_classes" in message  # the class and the option


def test_drop_leaves_unlisted_classes_out_and_logs_them_per_split(classes_layout, tmp_path, caplog):
    from cinema.config import config_from_dict
    from cinema.evaluate import select_entries
    from cinema.train.datasets import build_datasets, list_entries

    config = config_from_dict(_classification(classes_layout, tmp_path, unlisted_classes="drop"))
    with caplog.at_level(logging.WARNING, logger="cinema.train.datasets"):
        entries = list_entries(config)
    assert [e.id for e in entries] == ["001", "002", "003", "004", "162"]
    (record,) = [r for r in caplog.records if "unlisted_classes" in r.getMessage()]
    assert "left out 1 of 2 studies of split val" in record.getMessage() and "RV 1" in record.getMessage()
    train, val = build_datasets(config)
    assert train.subject_ids == ["001", "002", "003", "004"] and val.subject_ids == ["162"]
    assert [int(val[0]["target"])] == [config.data.classes.index("NOR")]
    assert [e.id for e in select_entries(config, "val")] == ["162"]  # cinema evaluate reads the same split


def test_unlisted_classes_takes_error_or_drop(classes_layout, tmp_path):
    from cinema.config import config_from_dict

    with pytest.raises(InputError, match="data.unlisted_classes' must be one of error, drop"):
        config_from_dict(_classification(classes_layout, tmp_path, unlisted_classes="skip"))


# ---------------------------------------------------------------------------------------------------------------------
# 2. cinema finetune: overrides before and after the flags
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "order",
    [
        ["CONFIG", "data.unlisted_classes=drop", "--check"],
        ["CONFIG", "--check", "data.unlisted_classes=drop"],
        ["CONFIG", "train.n_epochs=3", "--check", "data.unlisted_classes=drop"],
        ["--check", "CONFIG", "data.unlisted_classes=drop", "--quiet", "train.n_epochs=3"],
    ],
    ids=["overrides-then-flag", "flag-then-overrides", "around-the-flag", "flags-between"],
)
def test_finetune_takes_overrides_before_and_after_its_flags(classes_layout, tmp_path, capsys, order):
    from cinema.cli import main

    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(_classification(classes_layout, tmp_path)))
    argv = ["finetune", *(str(config_path) if a == "CONFIG" else a for a in order)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    # the override after (or before) --check took effect: the RV subject left out instead of an error
    assert re.search(r"4 training samples, 1 validation samples", out), out


# ---------------------------------------------------------------------------------------------------------------------
# 3. Kaggle DSB after CineMA's preprocessing
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kaggle_processed(preprocessed_dir, tmp_path_factory) -> Path:
    """kaggle_preprocess's output: val_metadata.csv (pid as a number, the reference's columns) and
    val/<pid>/<pid>_sax_t.nii.gz (x, y, z, t), <pid>_lax_2c_t / _lax_4c_t.nii.gz as (x, y, t); no masks."""
    root = tmp_path_factory.mktemp("kaggle") / "processed"
    sources = {name: nib.load(str(preprocessed_dir / "mnms2" / f"{name}.nii.gz")) for name in ("sax_ed", "sax_es")}
    ed, es = (np.asarray(sources[n].dataobj).astype(np.int16) for n in ("sax_ed", "sax_es"))
    cine = np.stack([ed, (ed + es) // 2, es], axis=-1).astype(np.uint8)
    _save(cine, sources["sax_ed"].affine, root / "val" / "7" / "7_sax_t.nii.gz")
    lax = nib.load(str(preprocessed_dir / "mnms2" / "lax_4c_ed.nii.gz"))
    lax_cine = np.repeat(np.asarray(lax.dataobj), 3, axis=2)  # (256, 256, 3): time in the third axis
    for view in ("lax_2c", "lax_4c"):
        _save(lax_cine, lax.affine, root / "val" / "7" / f"7_{view}_t.nii.gz")
    (root / "val_metadata.csv").write_text(
        "pid,n_slices,n_frames,original_sax_spacing_x,original_sax_spacing_y,original_sax_spacing_z,"
        "systole_volume,diastole_volume,ef\n"
        f"7,{ed.shape[2]},3,1.40625,1.40625,10.0,58.2,151.0,61.456953642384104\n"
    )
    return root


def test_read_study_reads_a_kaggle_preprocessed_subject(kaggle_processed):
    from cinema.io import read_study

    study = read_study(kaggle_processed / "val" / "7")
    assert study.view_names == ["sax", "lax_2c", "lax_4c"]
    assert study.view("sax").n_frames == 3 and study.view("lax_4c").image.shape == (256, 256, 3)
    assert (study.ed_frame, study.es_frame) == (None, None)  # the volume curve places them
    assert study.metadata["diastole_volume"] == 151.0  # pid 7 names the folder 7, not 007
    assert not study.view("sax").labels


def _evaluate_volumes(data_dir, manifest, weights, tmp_path):
    """`cinema evaluate` of a volumes-only split (no masks) with a tiny 2-D model at a coarse model space."""
    from cinema.evaluate import evaluate

    values = {"task": "segmentation", "output_dir": str(tmp_path / "run")}
    values["data"] = {"format": "kaggle", "dir": str(data_dir), "manifest": manifest}
    values["data"] |= {"slice_2d": True, "sax": {"spacing": [6.0, 6.0, 10.0], "patch_size": [32, 32, 8]}}
    values["model"] = {"name": "unet", "views": "sax", "unet": {"chans": [8, 16, 32]}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(values))
    return evaluate(tmp_path / "config.yaml", tmp_path / "eval", weights=weights, split="all")


def test_kaggle_preprocessed_split_is_evaluated_on_volumes_without_masks(kaggle_processed, tiny_weights, tmp_path):
    from cinema.analysis.measure import label_series, volume_curves
    from cinema.analysis.segment import SegmentationPredictor
    from cinema.io import read_study

    result = _evaluate_volumes(kaggle_processed, "val_metadata.csv", tiny_weights, tmp_path)
    (row,) = result.rows
    assert row["id"] == "7" and row["split"] == "val" and row["n_frames"] == 3
    assert (row["lv_edv_true"], row["lv_esv_true"]) == (151.0, 58.2)
    assert row["lv_ef_true"] == pytest.approx(61.456953642384104)  # the CSV's own ef
    study = read_study(kaggle_processed / "val" / "7")
    labels = SegmentationPredictor.from_weights(tiny_weights, amp=False).segment_study(study)  # evaluate runs fp32
    lv = volume_curves(label_series(labels, 3), study.sax.spacing)["lv"]
    assert (row["lv_edv_pred"], row["lv_esv_pred"]) == pytest.approx((lv.max(), lv.min()))
    assert "lv_ef_mae" in result.summary["overall"]


def test_kaggle_preprocessed_rows_need_their_volumes(kaggle_processed, tmp_path):
    from cinema.config import config_from_dict
    from cinema.train.datasets import list_entries

    root = tmp_path / "processed"
    (root / "val").mkdir(parents=True)
    (root / "val" / "7").symlink_to(kaggle_processed / "val" / "7")
    (root / "val_metadata.csv").write_text("pid,n_slices,n_frames\n7,12,3\n")
    values = {"task": "segmentation", "output_dir": str(tmp_path / "run"), "model": {"name": "unet", "views": "sax"}}
    values["data"] = {"format": "kaggle", "dir": str(root), "manifest": "val_metadata.csv"}
    with pytest.raises(InputError, match=r"val_metadata.csv: pid 7 has no reference volumes"):
        list_entries(config_from_dict(values))


# ---------------------------------------------------------------------------------------------------------------------
# 4. Rescan after CineMA's preprocessing
# ---------------------------------------------------------------------------------------------------------------------


def _rescan_subject(folder: Path, sax: np.ndarray, affine: np.ndarray, labels: np.ndarray | None) -> None:
    _save(sax, affine, folder / "sax_t.nii.gz")
    if labels is not None:
        _save(labels, affine, folder / "sax_gt_t.nii.gz")
    lax = np.zeros((64, 64, 1, sax.shape[-1]), np.uint8)
    lax[20:40, 20:44] = 200
    for view in ("lax_2c", "lax_4c"):
        _save(lax, np.eye(4), folder / f"{view}_t.nii.gz")


@pytest.fixture(scope="module")
def rescan_processed(preprocessed_dir, tmp_path_factory) -> Path:
    """rescan_preprocess's output: train/A/s_0000 (nested id) with pseudo-labels of every frame and ed_index /
    es_index, and test_retest_100/scan_00_A, scan_00_B (no masks, edv / esv / ef); files carry no pid prefix."""
    root = tmp_path_factory.mktemp("rescan") / "processed"
    source = nib.load(str(preprocessed_dir / "mnms2" / "sax_ed.nii.gz"))
    ed = np.asarray(source.dataobj)
    es = np.asarray(nib.load(str(preprocessed_dir / "mnms2" / "sax_es.nii.gz")).dataobj)
    cine = np.stack([ed, ed // 2 + es // 2, es], axis=-1)
    labels = np.zeros(cine.shape, np.uint8)
    for t, radius in enumerate((20, 16, 12)):  # an LV disc shrinking from frame 0 to frame 2, on every frame
        x, y = np.ogrid[:192, :192]
        labels[..., 3:7, t] = (((x - 96) ** 2 + (y - 96) ** 2) < radius**2)[..., None] * 3
    _rescan_subject(root / "train" / "A" / "s_0000", cine, source.affine, labels)
    (root / "train_metadata.csv").write_text(
        "pid,orig_sax_spacing_x,orig_sax_spacing_y,orig_sax_spacing_z,orig_lax_spacing_x,orig_lax_spacing_y,"
        "n_slices,n_frames,ed_index,es_index\nA/s_0000,1.4,1.4,8.0,1.4,1.4,12,3,0,2\n"
    )
    for pid in ("scan_00_A", "scan_00_B"):
        _rescan_subject(root / "test_retest_100" / pid, cine, source.affine, None)
    (root / "test_retest_100_metadata.csv").write_text(
        "pid,orig_sax_spacing_x,orig_sax_spacing_y,orig_sax_spacing_z,orig_lax_spacing_x,orig_lax_spacing_y,"
        "n_slices,n_frames,edv,esv,ef\n"
        "scan_00_A,1.4,1.4,8.0,1.4,1.4,12,3,150.0,60.0,60.0\n"
        "scan_00_B,1.4,1.4,8.0,1.4,1.4,12,3,140.0,63.0,55.0\n"
    )
    return root


def test_read_study_reads_a_rescan_subject_with_its_frames_and_labels(rescan_processed):
    from cinema.io import read_study
    from cinema.io.read import detect_input_kind

    folder = rescan_processed / "train" / "A" / "s_0000"
    assert detect_input_kind(folder) == "cinema_preprocessed"
    study = read_study(folder)
    assert study.view_names == ["sax", "lax_2c", "lax_4c"]
    assert (study.ed_frame, study.es_frame) == (0, 2)  # ed_index / es_index, 0-based
    sax = study.view("sax")
    assert sorted(sax.labels) == [0, 1, 2]  # pseudo-labels of every frame
    assert (sax.labels[0] == 3).sum() > (sax.labels[2] == 3).sum() > 0
    assert study.view("lax_4c").image.shape == (64, 64, 3)
    assert study.metadata["n_frames"] == 3 and "ed_index" not in study.metadata  # its row, found two levels up


def test_finetune_lists_nested_rescan_ids(rescan_processed, tmp_path):
    from cinema.config import config_from_dict
    from cinema.train.datasets import list_entries, prepare_subject

    values = {"task": "segmentation", "output_dir": str(tmp_path / "run")}
    values["data"] = {"format": "cinema", "dir": str(rescan_processed), "manifest": "train_metadata.csv"}
    values["data"] |= {"crop_center": "image", "sax": {"spacing": [6.0, 6.0, 10.0], "patch_size": [32, 32, 8]}}
    values["model"] = {"name": "convunetr", "views": "sax"}
    config = config_from_dict(values)
    (entry,) = list_entries(config)
    assert entry.id == "A/s_0000" and entry.metadata["split"] == "train"
    subject = prepare_subject(entry, config)
    assert subject.frames == [0, 1, 2] and subject.labels["sax"].shape[0] == 3


def test_rescan_pairs_are_evaluated_on_volumes_with_their_cv(rescan_processed, tiny_weights, tmp_path, monkeypatch):
    from cinema.analysis.segment import SegmentationPredictor

    def bright_is_lv(self, study, **_):  # a stand-in segmenter: the layout, the pairs and the volumes are under test
        sax = study.view("sax")
        return {t: (sax.frame(t) > 120).astype(np.uint8) * 3 for t in range(sax.n_frames)}

    monkeypatch.setattr(SegmentationPredictor, "segment_study", bright_is_lv)

    result = _evaluate_volumes(rescan_processed, "test_retest_100_metadata.csv", tiny_weights, tmp_path)
    rows = {row["id"]: row for row in result.rows}
    assert set(rows) == {"scan_00_A", "scan_00_B"}
    assert rows["scan_00_A"]["pair_id"] == rows["scan_00_B"]["pair_id"] == "scan_00"
    assert (rows["scan_00_B"]["lv_edv_true"], rows["scan_00_B"]["lv_esv_true"]) == (140.0, 63.0)
    rescan = result.summary["scan_rescan"]
    assert rescan["n_pairs"] == 1
    # the same images twice: the predicted volumes agree exactly, the reference ones do not
    assert rows["scan_00_A"]["lv_edv_pred"] > rows["scan_00_A"]["lv_esv_pred"] > 0
    assert rescan["lv_edv_pred_cv_percent"] == pytest.approx(0.0, abs=1e-9)
    assert rescan["lv_edv_true_cv_percent"] > 0
