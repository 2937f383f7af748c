"""CineMA's preprocessed data layout (`cinema.io.datasets.CINEMA_LAYOUT_DOC`), as its preprocessing scripts write it.

A small copy is generated here with the reference's file names: an ACDC-like split (``train_metadata.csv`` with
Info.cfg's 1-based ED/ES numbers, ``<pid>_sax_t`` cine plus ``_sax_ed/_es`` and their ``_gt`` labels, from real ACDC
frames) and an M&Ms-2-like split (``val.csv`` with numeric pids as the reference writes them, SAX and LAX 4C ED/ES
files from the official example files, LAX stored as (x, y, 1), no cine).
"""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

pytestmark = pytest.mark.usefixtures("one_thread")


def _save(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))


@pytest.fixture(scope="module")
def layout(acdc_dir, preprocessed_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cinema_layout")
    # ACDC-like: a 3-frame cine (ED, a blend, ES); Info.cfg numbers ED 1, ES 3
    ed, es = (nib.load(str(acdc_dir / "patient001" / f"patient001_frame{f}.nii.gz")) for f in ("01", "12"))
    ed_gt, es_gt = (np.asarray(nib.load(str(acdc_dir / "patient001" / f"patient001_frame{f}_gt.nii.gz")).dataobj)
                    for f in ("01", "12"))  # fmt: skip
    ed_image, es_image = np.asarray(ed.dataobj), np.asarray(es.dataobj)
    cine = np.stack([ed_image, (ed_image + es_image) // 2, es_image], axis=-1)
    folder = root / "train" / "patient001"
    _save(cine.astype(np.int16), ed.affine, folder / "patient001_sax_t.nii.gz")
    for phase, image, label in (("ed", ed_image, ed_gt), ("es", es_image, es_gt)):
        # the reference normalises ED/ES files apart from the cine: they need not equal its frames
        _save((image // 2).astype(np.int16), ed.affine, folder / f"patient001_sax_{phase}.nii.gz")
        _save(label.astype(np.uint8), ed.affine, folder / f"patient001_sax_{phase}_gt.nii.gz")
    (root / "train_metadata.csv").write_text(
        "pid,pathology,height,weight,bmi,n_frames,ed_frame,es_frame,edv,esv,ef\n"
        "patient001,DCM,1.84,95.0,28.06,3,1,3,295.5,225.3,23.8\n"
    )
    # M&Ms-2-like: ED/ES only, SAX and LAX 4C; labels generated (the example files have none)
    subject = root / "val" / "001"
    for view in ("sax", "lax_4c"):
        for phase in ("ed", "es"):
            source = nib.load(str(preprocessed_dir / "mnms2" / f"{view}_{phase}.nii.gz"))
            image = np.asarray(source.dataobj)
            _save(image, source.affine, subject / f"001_{view}_{phase}.nii.gz")
            label = np.zeros(image.shape, np.uint8)
            label[100:140, 90:150] = 3 if phase == "ed" else 1
            _save(label, source.affine, subject / f"001_{view}_{phase}_gt.nii.gz")
    (root / "val.csv").write_text("pid,pathology,vendor,scanner,field\n1,NOR,SIEMENS,Avanto,1.5\n")
    return root


def test_read_study_reads_a_cine_subject_with_its_info_cfg_frames(layout, acdc_dir):
    from cinema.io import read_study
    from cinema.io.read import detect_input_kind

    folder = layout / "train" / "patient001"
    assert detect_input_kind(folder) == "cinema_preprocessed"
    study = read_study(folder)
    sax = study.view("sax")
    assert sax.n_frames == 3 and (study.ed_frame, study.es_frame) == (0, 2)
    assert sorted(sax.labels) == [0, 2]
    gt = np.asarray(nib.load(str(acdc_dir / "patient001" / "patient001_frame12_gt.nii.gz")).dataobj)
    np.testing.assert_array_equal(sax.labels[2], gt)
    np.testing.assert_array_equal(sax.affine, nib.load(str(folder / "patient001_sax_t.nii.gz")).affine)
    assert study.metadata["pathology"] == "DCM" and study.metadata["source_format"] == "cinema_preprocessed"
    assert "ed_frame" not in study.metadata  # a number of the CSV, not a metadata column


def test_read_study_reads_an_ed_es_subject_with_its_lax_view(layout):
    from cinema.io import read_study

    study = read_study(layout / "val" / "001")
    assert study.view_names == ["sax", "lax_4c"]
    assert (study.ed_frame, study.es_frame) == (0, 1)
    lax = study.view("lax_4c")
    assert lax.spatial_shape == (256, 256) and lax.n_frames == 2
    assert (lax.labels[0] == 3).sum() == 40 * 60 and (lax.labels[1] == 1).sum() == 40 * 60
    assert study.metadata["vendor"] == "SIEMENS"  # the row of pid 1 is subject 001


def test_finetune_and_evaluate_read_the_layout(layout, tiny_weights, tmp_path):
    from cinema.config import config_from_dict
    from cinema.evaluate import evaluate
    from cinema.train.datasets import list_entries

    data = {"format": "cinema", "dir": str(layout), "manifest": "train_metadata.csv"}
    data |= {"sax": {"spacing": [6.0, 6.0, 10.0], "patch_size": [32, 32, 8]}, "slice_2d": True}
    values = {
        "task": "segmentation",
        "output_dir": str(tmp_path / "run"),
        "data": data,
        "model": {"name": "unet", "views": "sax", "unet": {"chans": [8, 16, 32]}},
    }
    (entry,) = list_entries(config_from_dict(values))
    assert entry.id == "patient001" and entry.metadata["pathology"] == "DCM" and entry.metadata["split"] == "train"
    assert entry.load().view("sax").n_frames == 3
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(values))
    result = evaluate(config_path, tmp_path / "eval", weights=tiny_weights, split="all", by=["pathology"])
    (row,) = result.rows
    assert row["id"] == "patient001" and row["pathology"] == "DCM"
    with open(tmp_path / "eval" / "per_case.csv", newline="") as f:
        (written,) = list(csv.DictReader(f))
    # the manual LVEDV is the ED label's own LV volume on its grid
    spacing = nib.load(str(layout / "train" / "patient001" / "patient001_sax_ed_gt.nii.gz")).header.get_zooms()
    gt = np.asarray(nib.load(str(layout / "train" / "patient001" / "patient001_sax_ed_gt.nii.gz")).dataobj)
    assert float(written["lv_edv_true"]) == pytest.approx((gt == 3).sum() * np.prod(spacing) / 1000, rel=1e-4)


def test_the_published_mnms2_information_csv(preprocessed_dir, tmp_path):
    """M&Ms-2's dataset_information.csv as published: SUBJECT_CODE numbers name zero-padded folders."""
    from cinema.config import config_from_dict
    from cinema.io.datasets import read_mnms_subject
    from cinema.train.datasets import list_entries

    root = tmp_path / "MnM2"
    for pid in ("001", "002"):
        for view, prefix in (("sax", "SA"), ("lax_4c", "LA")):
            for phase in ("ed", "es"):
                source = nib.load(str(preprocessed_dir / "mnms2" / f"{view}_{phase}.nii.gz"))
                image = np.asarray(source.dataobj)
                _save(image, source.affine, root / "dataset" / pid / f"{pid}_{prefix}_{phase.upper()}.nii.gz")
                label = np.zeros(image.shape, np.uint8)
                label[100:120, 100:130] = 1  # M&Ms codes: 1 is the LV
                _save(label, source.affine, root / "dataset" / pid / f"{pid}_{prefix}_{phase.upper()}_gt.nii.gz")
    (root / "dataset_information.csv").write_text(
        "SUBJECT_CODE,DISEASE,VENDOR,SCANNER,FIELD\n1,NOR,SIEMENS,SymphonyTim,1.5\n2,LV,GE,Signa Excite,1.5\n,,,,\n"
    )
    study = read_mnms_subject(root / "dataset" / "002", root / "dataset_information.csv")
    assert study.metadata["DISEASE"] == "LV" and study.metadata["VENDOR"] == "GE"
    assert "SUBJECT_CODE" not in study.metadata
    assert (study.view("lax_4c").labels[0] == 3).sum() == 20 * 30  # remapped to the CineMA LV
    data = {"format": "mnms", "dir": str(root / "dataset"), "manifest": str(root / "dataset_information.csv")}
    data |= {"sax": {"spacing": [6.0, 6.0, 10.0], "patch_size": [32, 32, 8]}, "class_column": "DISEASE"}
    values = {"task": "classification", "output_dir": str(tmp_path / "run"), "data": data}
    values["model"] = {"name": "resnet", "views": "sax", "resnet": {"depth": 10, "layer_inplanes": [4, 8, 8, 16]}}
    values["data"]["classes"] = ["NOR", "LV"]
    entries = list_entries(config_from_dict(values))
    assert [(e.id, e.metadata["DISEASE"]) for e in entries] == [("001", "NOR"), ("002", "LV")]


def test_kaggle_dsb_layout_is_evaluated_on_volumes_without_masks(sunnybrook_dir, tiny_weights, tmp_path):
    """The Data Science Bowl as unzipped: train.csv (Id, Systole, Diastole) and train/train/<pid>/study/sax_<n>/,
    one DICOM series folder per slice position (here: the real Sunnybrook exam's files, split by position)."""
    import shutil

    import pydicom

    from cinema.analysis.measure import label_series, volume_curves
    from cinema.analysis.segment import SegmentationPredictor
    from cinema.evaluate import evaluate
    from cinema.io import read_study

    root = tmp_path / "second-annual-data-science-bowl"
    files = sorted((sunnybrook_dir / "SCD0000301" / "dicom").glob("*.dcm"))
    positions = {}
    for path in files:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        positions.setdefault(tuple(round(float(v), 2) for v in header.ImagePositionPatient), []).append(path)
    study_dir = root / "train" / "train" / "7" / "study"
    for number, paths in enumerate(positions.values(), start=5):
        (study_dir / f"sax_{number}").mkdir(parents=True)
        for path in paths:
            shutil.copy(path, study_dir / f"sax_{number}" / path.name)
    (root / "train.csv").write_text("Id,Systole,Diastole\n7,58.2,151.0\n")

    values = {"task": "segmentation", "output_dir": str(tmp_path / "run")}
    values["data"] = {"format": "kaggle", "dir": str(root), "manifest": "train.csv", "slice_2d": True}
    values["data"]["sax"] = {"spacing": [6.0, 6.0, 10.0], "patch_size": [32, 32, 8]}
    values["model"] = {"name": "unet", "views": "sax", "unet": {"chans": [8, 16, 32]}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(values))
    result = evaluate(tmp_path / "config.yaml", tmp_path / "eval", weights=tiny_weights, split="all")
    (row,) = result.rows
    assert row["id"] == "7" and row["lv_edv_true"] == 151.0 and row["lv_esv_true"] == 58.2
    assert row["lv_ef_true"] == pytest.approx((151.0 - 58.2) / 151.0 * 100)
    # the prediction: max / min of the LV volume curve of every frame, as cinema segment gives it in fp32 (evaluate's
    # precision on every machine)
    study = read_study(study_dir)
    labels = SegmentationPredictor.from_weights(tiny_weights, amp=False).segment_study(study)
    lv = volume_curves(label_series(labels, study.sax.n_frames), study.sax.spacing)["lv"]
    assert row["n_frames"] == study.sax.n_frames == 20
    assert (row["lv_edv_pred"], row["lv_esv_pred"]) == pytest.approx((lv.max(), lv.min()))
    assert "lv_ef_mae" in result.summary["overall"] and "dice_ed_lv" not in row


def test_the_landmark_set_png_and_csv(tmp_path):
    """CineMA's landmark set: <view>/images/<uid>.png + <view>_train.csv (x = PNG column, y = PNG row)."""
    from PIL import Image

    from cinema.config import config_from_dict
    from cinema.train.datasets import list_entries, prepare_subject

    root = tmp_path / "landmark"
    (root / "lax_4c" / "images").mkdir(parents=True)
    points = {"u1_0": [(20, 50), (45, 52), (30, 12)], "u2_3": [(18, 60), (40, 66), (28, 20)]}
    rows = ["cohort_name,uid,view,x1,y1,x2,y2,x3,y3"]
    columns, lines = np.meshgrid(np.arange(64), np.arange(80))  # a 64-wide, 80-high PNG: (row, column) arrays
    for uid, marks in points.items():
        pixels = np.zeros((80, 64))
        for (x, y), brightness in zip(marks, (250, 180, 110), strict=True):
            pixels += brightness * np.exp(-((columns - x) ** 2 + (lines - y) ** 2) / (2 * 2.0**2))
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(root / "lax_4c" / "images" / f"{uid}.png")
        rows.append(f"A,{uid},4CH," + ",".join(str(v) for mark in marks for v in mark))
    (root / "lax_4c_train.csv").write_text("\n".join(rows) + "\n")
    data = {"format": "landmark", "dir": str(root), "manifest": "lax_4c_train.csv"}
    data |= {"landmark_columns": ["x1", "y1", "x2", "y2", "x3", "y3"], "lax": {"spacing": [1.0, 1.0]}}
    data["lax"]["patch_size"] = [96, 96]
    values = {"task": "landmark_heatmap", "output_dir": str(tmp_path / "run"), "data": data}
    values["model"] = {"name": "unet", "views": "lax_4c", "unet": {"chans": [8, 16]}}
    config = config_from_dict(values)
    entries = list_entries(config)
    assert [e.id for e in entries] == ["u1_0", "u2_3"] and entries[0].metadata["cohort_name"] == "A"
    view = entries[0].load().view("lax_4c")
    assert view.image.shape == (64, 80, 1)  # (x, y) = (columns, rows)
    for (x, y), brightness in zip(points["u1_0"], (250, 180, 110), strict=True):
        assert view.image[x, y, 0] == pytest.approx(brightness, abs=2)
    subject = prepare_subject(entries[0], config)
    model_points = subject.points["lax_4c"]
    image = subject.images["lax_4c"][0]
    brightest = [image[tuple(np.round(p).astype(int))] for p in model_points]
    # every point lands on its blob in model space (the intensity scaling clips the brightest at 1)
    assert brightest[0] == pytest.approx(1.0) and min(brightest) > 0.4 and image.mean() < 0.05
