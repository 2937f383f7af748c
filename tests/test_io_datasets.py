"""ACDC, M&Ms / M&Ms-2 and CSV manifest readers, input detection and the study-folder round trip."""

from __future__ import annotations

import numpy as np
import pytest

from cinema.io import (
    CineView,
    Study,
    detect_input_kind,
    read_acdc_info,
    read_acdc_patient,
    read_manifest,
    read_mnms_subject,
    read_study,
    read_study_folder,
    write_study,
)
from cinema.io.datasets import nifti_shape
from cinema.io.nifti import load_nifti, write_label_nifti, write_nifti


def _info_cfg(path):
    return dict(line.split(": ", 1) for line in path.read_text().splitlines() if line.strip())


def test_all_acdc_folders_parse(acdc_dir):
    folders = sorted(p for p in acdc_dir.iterdir() if p.is_dir())
    assert len(folders) == 80
    groups = {}
    for folder in folders:
        info = read_acdc_info(folder)
        raw = _info_cfg(folder / "Info.cfg")
        assert info["ed_frame"] == int(raw["ED"]) - 1 and info["es_frame"] == int(raw["ES"]) - 1
        assert info["n_frames"] == int(raw["NbFrame"])
        assert {info["ed_frame"], info["es_frame"]} <= set(info["frames"])
        shapes = set()
        for image_path, label_path in info["frames"].values():
            assert label_path is not None
            shapes |= {nifti_shape(image_path), nifti_shape(label_path)}
        assert len(shapes) == 1 and len(next(iter(shapes))) == 3
        groups[info["group"]] = groups.get(info["group"], 0) + 1
    assert groups == {"DCM": 16, "HCM": 16, "MINF": 16, "NOR": 16, "RV": 16}


@pytest.mark.parametrize("patient", ["patient001", "patient090"])
def test_acdc_patient_in_detail(acdc_dir, patient):
    folder = acdc_dir / patient
    raw = _info_cfg(folder / "Info.cfg")
    ed, es = int(raw["ED"]), int(raw["ES"])
    study = read_acdc_patient(folder)
    sax = study.sax
    assert sax.n_frames == 2 and sax.frame_indices == [ed - 1, es - 1]
    assert (study.ed_frame, study.es_frame) == (0, 1)
    assert study.metadata["group"] == raw["Group"]
    assert study.metadata["height_cm"] == float(raw["Height"]) and study.metadata["weight_kg"] == float(raw["Weight"])
    assert study.metadata["n_frames_acquired"] == int(raw["NbFrame"])
    for stored, number in ((0, ed), (1, es)):
        data, affine, _ = load_nifti(folder / f"{patient}_frame{number:02d}.nii.gz")
        np.testing.assert_array_equal(sax.image[..., stored], data)
        np.testing.assert_allclose(sax.affine, affine)
        label, _, _ = load_nifti(folder / f"{patient}_frame{number:02d}_gt.nii.gz")
        np.testing.assert_array_equal(sax.labels[stored], label)
        assert set(np.unique(sax.labels[stored])) <= {0, 1, 2, 3}
        assert (sax.labels[stored] == 3).any()  # an LV cavity is labelled in each frame


def test_acdc_study_folder_round_trip_keeps_labels_and_frames(acdc_dir, tmp_path):
    study = read_acdc_patient(acdc_dir / "patient090")
    write_study(study, tmp_path / "out")
    back = read_study(tmp_path / "out")
    assert detect_input_kind(tmp_path / "out") == "study_folder"
    assert (back.ed_frame, back.es_frame) == (study.ed_frame, study.es_frame)
    assert back.sax.frame_indices == study.sax.frame_indices
    np.testing.assert_array_equal(back.sax.image, study.sax.image)
    np.testing.assert_allclose(back.sax.affine, study.sax.affine, atol=1e-9)
    assert sorted(back.sax.labels) == [0, 1]
    for frame in (0, 1):
        np.testing.assert_array_equal(back.sax.labels[frame], study.sax.labels[frame])
    assert back.metadata["group"] == "RV"


def test_acdc_with_4d_cine(tmp_path):
    folder = tmp_path / "patient200"
    rng = np.random.default_rng(1)
    cine = rng.integers(0, 500, size=(6, 5, 3, 7)).astype(np.int16)
    affine = np.diag([1.5, 1.5, 10.0, 1.0])
    write_nifti(cine, affine, folder / "patient200_4d.nii.gz")
    for frame in (2, 5):
        write_nifti(cine[..., frame - 1], affine, folder / f"patient200_frame{frame:02d}.nii.gz")
        write_label_nifti(np.full((6, 5, 3), frame % 4), affine, folder / f"patient200_frame{frame:02d}_gt.nii.gz")
    (folder / "Info.cfg").write_text("ED: 2\nES: 5\nGroup: NOR\nHeight: 170\nNbFrame: 7\nWeight: 70\n")
    study = read_study(folder)
    assert study.sax.n_frames == 7 and study.sax.frame_indices is None
    assert (study.ed_frame, study.es_frame) == (1, 4)
    np.testing.assert_array_equal(study.sax.image, cine)
    assert sorted(study.sax.labels) == [1, 4] and study.sax.labels[1].max() == 2 and study.sax.labels[4].max() == 1


def test_label_on_another_grid_is_rejected(tmp_path):
    folder = tmp_path / "patient201"
    affine = np.diag([1.5, 1.5, 10.0, 1.0])
    shifted = affine.copy()
    shifted[:3, 3] = [3.0, 0.0, 0.0]
    for frame in (1, 3):
        write_nifti(np.ones((6, 5, 3), np.int16), affine, folder / f"patient201_frame{frame:02d}.nii.gz")
        label_affine = shifted if frame == 3 else affine
        write_label_nifti(np.ones((6, 5, 3)), label_affine, folder / f"patient201_frame{frame:02d}_gt.nii.gz")
    (folder / "Info.cfg").write_text("ED: 1\nES: 3\nGroup: NOR\nHeight: 170\nNbFrame: 4\nWeight: 70\n")
    with pytest.raises(ValueError, match="patient201_frame03_gt.nii.gz: label geometry differs"):
        read_study(folder)


def test_acdc_bad_info_cfg(tmp_path):
    folder = tmp_path / "patient300"
    folder.mkdir()
    (folder / "Info.cfg").write_text("ED: 1\nGroup: NOR\nNbFrame: 3\n")
    with pytest.raises(ValueError, match="Info.cfg: missing ES"):
        read_acdc_info(folder)
    (folder / "Info.cfg").write_text("ED: 0\nES: 2\nNbFrame: 3\n")
    with pytest.raises(ValueError, match="1-based"):
        read_acdc_info(folder)


def test_mnms_subject_with_csv_remaps_labels(tmp_path):
    folder = tmp_path / "A1B2C3"
    affine = np.diag([1.2, 1.2, 9.0, 1.0])
    cine = np.arange(4 * 4 * 2 * 5, dtype=np.int16).reshape(4, 4, 2, 5)
    labels = np.zeros((4, 4, 2, 5), dtype=np.uint8)
    labels[0, 0, 0, 1], labels[1, 1, 1, 1], labels[2, 2, 0, 1] = 1, 2, 3  # M&Ms: 1 LV, 2 MYO, 3 RV
    labels[0, 0, 1, 3] = 1
    write_nifti(cine, affine, folder / "A1B2C3_sa.nii.gz")
    write_label_nifti(labels, affine, folder / "A1B2C3_sa_gt.nii.gz")
    csv_path = tmp_path / "info.csv"
    csv_path.write_text(
        ",External code,VendorName,Vendor,Centre,ED,ES,Age,Pathology\n0,A1B2C3,Siemens,A,1,1,3,54,HCM\n"
    )
    study = read_mnms_subject(folder, csv_path)
    assert (study.ed_frame, study.es_frame) == (1, 3)
    assert sorted(study.sax.labels) == [1, 3]
    ed = study.sax.labels[1]
    assert (ed[0, 0, 0], ed[1, 1, 1], ed[2, 2, 0]) == (3, 2, 1)  # CineMA: 3 LV, 2 MYO, 1 RV
    assert study.metadata["VendorName"] == "Siemens" and study.metadata["Age"] == 54
    assert detect_input_kind(folder) == "mnms"
    assert read_study(folder).ed_frame is None  # without the CSV the ED/ES frames are unknown


def test_mnms2_subject_finds_ed_es_in_cine(tmp_path):
    folder = tmp_path / "007"
    affine = np.diag([1.0, 1.0, 8.0, 1.0])
    rng = np.random.default_rng(2)
    sa = rng.integers(0, 100, size=(5, 5, 3, 6)).astype(np.int16)
    la = rng.integers(0, 100, size=(7, 6, 1, 6)).astype(np.int16)
    write_nifti(sa, affine, folder / "007_SA_CINE.nii.gz")
    write_nifti(la, affine, folder / "007_LA_CINE.nii.gz")
    for phase, t in (("ED", 0), ("ES", 4)):
        write_nifti(sa[..., t], affine, folder / f"007_SA_{phase}.nii.gz")
        write_nifti(la[..., t], affine, folder / f"007_LA_{phase}.nii.gz")
        write_label_nifti(np.full((5, 5, 3), 3), affine, folder / f"007_SA_{phase}_gt.nii.gz")
        write_label_nifti(np.full((7, 6, 1), 1), affine, folder / f"007_LA_{phase}_gt.nii.gz")
    study = read_study(folder)
    assert study.view_names == ["sax", "lax_4c"]
    assert (study.ed_frame, study.es_frame) == (0, 4)
    assert study.views["lax_4c"].image.shape == (7, 6, 6)
    assert sorted(study.sax.labels) == [0, 4] and (study.sax.labels[4] == 1).all()  # RV 3 -> 1
    assert (study.views["lax_4c"].labels[0] == 3).all()  # LV 1 -> 3


def test_csv_manifest(tmp_path):
    affine = np.diag([1.0, 1.0, 10.0, 1.0])
    cine = np.ones((4, 4, 3, 5), dtype=np.int16)
    write_nifti(cine, affine, tmp_path / "s1" / "sax.nii.gz")
    write_nifti(np.ones((6, 6, 1, 5)), affine, tmp_path / "s1" / "lax_4c.nii.gz")
    label = np.zeros((4, 4, 3, 5), dtype=np.uint8)
    label[1, 1, 1, 0] = 3
    label[1, 1, 1, 2] = 1
    write_label_nifti(label, affine, tmp_path / "s1" / "sax_gt.nii.gz")
    write_label_nifti(np.full((6, 6), 2), affine, tmp_path / "s1" / "lax_4c_es.nii.gz")
    write_study(read_study(tmp_path / "s1" / "sax.nii.gz"), tmp_path / "converted")
    (tmp_path / "manifest.csv").write_text(
        "id,sax,lax_4c,sax_label,lax_4c_label_es,ed_frame,es_frame,path,age\n"
        "one,s1/sax.nii.gz,s1/lax_4c.nii.gz,s1/sax_gt.nii.gz,s1/lax_4c_es.nii.gz,0,2,,61\n"
        "two,,,,,,,converted,\n"
    )
    first, second = read_manifest(tmp_path / "manifest.csv")
    assert first.view_names == ["sax", "lax_4c"]
    assert (first.ed_frame, first.es_frame) == (0, 2)
    assert sorted(first.sax.labels) == [0, 2]
    assert sorted(first.views["lax_4c"].labels) == [2]
    assert first.metadata == {"age": 61, "study_id": "one"}
    assert second.view_names == ["sax"] and second.metadata["study_id"] == "two"

    (tmp_path / "bad.csv").write_text("id,weight\nx,70\n")
    with pytest.raises(ValueError, match="bad.csv: manifest needs"):
        list(read_manifest(tmp_path / "bad.csv"))
    (tmp_path / "bad2.csv").write_text("id,sax\nx,missing.nii.gz\n")
    with pytest.raises(FileNotFoundError, match="missing.nii.gz"):
        list(read_manifest(tmp_path / "bad2.csv"))


def test_write_study_refuses_non_empty_folder_and_force_replaces(tmp_path):
    view = CineView(image=np.zeros((3, 3, 2, 2)), affine=np.eye(4))
    study = Study(views={"sax": view}, metadata={"patient": {"PatientName": "X^Y"}, "site": "a"})
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(ValueError, match="not empty"):
        write_study(study, out)
    assert (out / "keep.txt").read_text() == "old"
    with pytest.raises(ValueError, match="not written by cinema"):
        write_study(study, out, force=True)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    ours = tmp_path / "ours"
    write_study(study, ours)
    write_study(study, ours, force=True)
    assert sorted(p.name for p in ours.iterdir()) == [".cinema-output", "sax.nii.gz", "study.json"]
    assert "patient" not in read_study_folder(ours).metadata
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ours", "out"]  # no temporary folders left
