"""Long-axis cines end to end: `cinema segment`, `cinema analyze` and `cinema evaluate` with a LAX 4C model.

The model is a tiny official-format LAX 4C segmentation folder with two seeds (seed 0: the golden ConvUNetR of
../shared/golden, seed 1: the same weights moved deterministically), named like the released
``finetuned/segmentation/mnms2_lax_4c``; the image is the official M&Ms-2 LAX 4C example (ED and ES stacked as a
two-frame cine) given an oblique, anisotropic affine so that every step resamples.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from cinema.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

# oblique in-plane axes, 1.25 x 0.9 mm pixels, 8 mm slice: nothing about the grid is the model's
AFFINE = np.array(
    [
        [0.0, -0.9 * np.sin(0.3), 8.0 * np.cos(0.3), 40.0],
        [1.25, 0.0, 0.0, -110.0],
        [0.0, 0.9 * np.cos(0.3), 8.0 * np.sin(0.3), 25.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


@pytest.fixture(scope="module")
def lax_model(golden_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("finetuned") / "segmentation" / "mnms2_lax_4c"
    folder.mkdir(parents=True)
    golden = golden_dir / "convunetr_tiny_lax_4c"
    (folder / "config.yaml").write_text((golden / "config.yaml").read_text())
    state = load_file(golden / "model.safetensors")
    save_file(state, folder / "mnms2_lax_4c_0.safetensors")
    moved = {
        k: v + 0.01 * torch.sin(torch.arange(v.numel(), dtype=v.dtype)).reshape(v.shape) if v.is_floating_point() else v
        for k, v in state.items()
    }
    save_file(moved, folder / "mnms2_lax_4c_1.safetensors")
    return folder


@pytest.fixture(scope="module")
def lax_cine(preprocessed_dir, tmp_path_factory) -> Path:
    """(X, Y, 1, 2) cine: the official example's ED and ES frames; the file name does not say its view."""
    frames = [np.asarray(nib.load(preprocessed_dir / "mnms2" / f"lax_4c_{p}.nii.gz").dataobj) for p in ("ed", "es")]
    image = np.stack([f.reshape(f.shape[0], f.shape[1], 1) for f in frames], axis=-1).astype(np.int16)
    path = tmp_path_factory.mktemp("lax") / "exam.nii.gz"
    nib.save(nib.Nifti1Image(image, AFFINE), str(path))
    return path


def _same_geometry(written: Path, source: Path) -> np.ndarray:
    out, src = nib.load(str(written)), nib.load(str(source))
    assert out.shape == src.shape
    np.testing.assert_array_equal(out.affine, src.affine)
    data = np.asarray(out.dataobj)
    assert data.dtype == np.uint8
    return data


def test_segment_writes_lax_labels_on_the_input_grid(lax_model, lax_cine, tmp_path, capsys):
    from cinema.analysis.segment import SegmentationPredictor
    from cinema.io import read_study

    out = tmp_path / "seg.nii.gz"
    # the LAX model names the view of a file whose name does not
    assert main(["segment", str(lax_cine), str(out), "--weights", str(lax_model)]) == 0
    assert "2 lax_4c frame(s)" in capsys.readouterr().out
    labels = _same_geometry(out, lax_cine)
    predictor = SegmentationPredictor.from_weights(lax_model)
    assert predictor.model.view == "lax_4c" and predictor.model.n_members == 2  # both seeds, averaged
    expected = predictor.segment_study(read_study(lax_cine, view="lax_4c"))
    for t in range(2):
        np.testing.assert_array_equal(labels[:, :, 0, t], expected[t])
    assert set(np.unique(labels)) <= {0, 1, 2, 3} and (labels > 0).any()

    # one 2-D frame keeps its 2-D shape (no motion: the network finds the heart over the whole field)
    frame = tmp_path / "frame_4ch.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(nib.load(str(lax_cine)).dataobj)[:, :, 0, 1], AFFINE), str(frame))
    single = tmp_path / "single.nii.gz"
    assert main(["segment", str(frame), str(single), "--weights", str(lax_model), "--view", "lax_4c"]) == 0
    expected = predictor.segment_study(read_study(frame, view="lax_4c"))
    np.testing.assert_array_equal(_same_geometry(single, frame), expected[0])


def test_a_single_slice_nifti_is_never_read_as_sax(lax_model, lax_cine, tmp_path, capsys):
    for command in (
        ["segment", str(lax_cine), str(tmp_path / "a.nii.gz")],
        ["analyze", str(lax_cine), "-o", str(tmp_path / "b")],
    ):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert "single-slice image" in err and "--view lax_4c" in err
    # named, but the shipped model segments SAX: told to give a LAX model, not given areas of zero
    assert main(["segment", str(lax_cine), str(tmp_path / "c.nii.gz"), "--view", "lax_4c"]) == 2
    assert "the model segments sax; the input holds lax_4c" in capsys.readouterr().err
    assert main(["analyze", str(lax_cine), "--view", "4ch", "-o", str(tmp_path / "d")]) == 2
    assert "needs a long-axis segmentation model" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def _areas_by_hand(labels: np.ndarray, pixel_mm2: float) -> dict[str, np.ndarray]:
    return {name: (labels == value).sum(axis=(0, 1)) * pixel_mm2 for name, value in (("lv", 3), ("rv", 1), ("myo", 2))}


def test_analyze_a_lax_nifti_reports_areas_not_volumes(lax_model, lax_cine, tmp_path, capsys):
    out = tmp_path / "out"
    # --weights naming a LAX model is taken as the LAX model
    command = ["analyze", str(lax_cine), "--view", "lax_4c", "--weights", str(lax_model)]
    assert main([*command, "-o", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "lax_4c: ED frame" in printed and "seg_lax_4c.nii.gz" in printed
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "areas.csv", "cine_overlay.gif", "metrics.json", "report.html", "seg_lax_4c.nii.gz"
    ]  # fmt: skip
    labels = _same_geometry(out / "seg_lax_4c.nii.gz", lax_cine)[:, :, 0, :]
    areas = _areas_by_hand(labels, 1.25 * 0.9)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["view"] == "lax_4c" and metrics["n_frames"] == 2
    assert metrics["lv_edv_ml"] is None and metrics["lv_ef_pct"] is None  # no volume from one plane
    assert metrics["la_area_mm2"] is None
    ed, es = metrics["ed_frame"], metrics["es_frame"]
    assert {ed, es} == {0, 1} and areas["lv"][ed] >= areas["lv"][es]  # ED = the larger LV area
    for name in ("lv", "rv", "myo"):
        np.testing.assert_allclose(metrics["areas_mm2"][name], areas[name], atol=0.01)
    assert metrics["lv_eda_mm2"] == pytest.approx(areas["lv"][ed], abs=0.01)
    if areas["rv"][ed] > 0:
        fac = (areas["rv"][ed] - areas["rv"][es]) / areas["rv"][ed] * 100
        assert metrics["rv_fac_pct"] == pytest.approx(fac, abs=0.01)
    with open(out / "areas.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["lv_mm2"]) for r in rows] == pytest.approx(list(areas["lv"]), abs=0.01)
    assert rows[ed]["phase"] == "ED" and rows[es]["phase"] == "ES"
    report = (out / "report.html").read_text()
    assert "long-axis cine analysis (lax_4c)" in report and "left atrial area: not available" in report
    assert "exam.nii.gz" not in report and str(tmp_path) not in report


def test_analyze_a_lax_only_exam_with_landmarks_gives_mapse(lax_model, lax_cine, golden_dir, tmp_path, capsys):
    from cinema.io import CineView, Study, write_study

    image = np.asarray(nib.load(str(lax_cine)).dataobj).astype(np.float32)[:, :, 0, :]
    # the two frames made into a 4-frame cine (ED, ES, ES, ED) with frame times: a LAX-only exam
    view = CineView(image=image[..., [0, 1, 1, 0]], affine=AFFINE, frame_times_ms=[0, 250, 300, 600], name="lax_4c")
    exam = write_study(Study(views={"lax_4c": view}, metadata={"source_format": "dicom"}), tmp_path / "exam")
    landmarks = golden_dir / "convvit_tiny_lax_4c_landmark"
    out = tmp_path / "out"
    command = ["analyze", str(exam), "--lax-weights", str(lax_model), "--landmark-weights", str(landmarks)]
    assert main([*command, "-o", str(out), "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["view"] == "lax_4c" and metrics["n_frames"] == 4
    lv = metrics["areas_mm2"]["lv"]
    assert lv[0] == lv[3] and lv[1] == lv[2]  # the same image, the same labels
    points = metrics["mitral_valve_landmarks"]
    assert points["view"] == "lax_4c" and len(points["points_voxel_xy"]) == 4
    # MAPSE = mean hinge-point displacement between the longest and shortest LV frames, in mm
    from cinema.analysis.landmarks import lax_function

    voxel = np.asarray(points["points_voxel_xy"])
    world = np.concatenate([voxel, np.zeros((4, 3, 1)), np.ones((4, 3, 1))], axis=-1) @ AFFINE.T
    assert lax_function(world[..., :3])["mapse_mm"] == pytest.approx(metrics["mapse_mm"], abs=0.02)
    assert metrics["mapse_mm"] is not None and metrics["mapse_mm"] > 0
    assert "MAPSE" in capsys.readouterr().out
    labels = nib.load(str(out / "seg_lax_4c.nii.gz"))
    assert labels.shape == (*image.shape[:2], 1, 4)
    np.testing.assert_array_equal(labels.affine, nib.load(str(exam / "lax_4c.nii.gz")).affine)


def test_evaluate_scores_a_lax_model_against_lax_labels(lax_model, lax_cine, tmp_path):
    from cinema.analysis.segment import SegmentationPredictor
    from cinema.evaluate import evaluate
    from cinema.io import read_study

    # manual labels: the model's own prediction of frame 0, and at frame 1 the same with the LV grown by one pixel
    predicted = SegmentationPredictor.from_weights(lax_model, amp=False).segment_study(
        read_study(lax_cine, view="lax_4c")
    )
    manual = np.stack([predicted[0], predicted[1]], axis=-1)
    from scipy import ndimage

    grown = ndimage.binary_dilation(manual[..., 1] == 3) & (manual[..., 1] == 0)
    manual[..., 1][grown] = 3
    root = tmp_path / "data"
    root.mkdir()
    nib.save(nib.Nifti1Image(manual[:, :, None, :].astype(np.uint8), AFFINE), str(root / "labels.nii.gz"))
    (root / "lax_4c.nii.gz").symlink_to(lax_cine)
    (root / "manifest.csv").write_text(
        "id,lax_4c,lax_4c_label,ed_frame,es_frame,vendor\nexam1,lax_4c.nii.gz,labels.nii.gz,0,1,A\n"
    )
    config = {
        "task": "segmentation",
        "output_dir": str(tmp_path / "run"),
        "data": {"format": "manifest", "dir": str(root), "manifest": "manifest.csv", **yaml.safe_load(
            (lax_model / "config.yaml").read_text())["data"]},
        "model": yaml.safe_load((lax_model / "config.yaml").read_text())["model"],
    }  # fmt: skip
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = evaluate(tmp_path / "config.yaml", tmp_path / "eval", weights=lax_model, split="all", by=["vendor"])
    (row,) = result.rows
    pixel = 1.25 * 0.9
    for name, value in (("lv", 3), ("rv", 1), ("myo", 2)):
        if (manual[..., 0] == value).any():
            assert row[f"dice_ed_{name}"] == pytest.approx(1.0)
    assert row["dice_es_lv"] < 1.0 or not grown.any()
    assert row["lv_eda_pred"] == pytest.approx((predicted[0] == 3).sum() * pixel)
    assert row["lv_esa_true"] == pytest.approx((manual[..., 1] == 3).sum() * pixel)
    assert row["lv_esa_true"] - row["lv_esa_pred"] == pytest.approx(grown.sum() * pixel)
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["n_cases"] == 1 and "lv_fac_mae" in summary["overall"]


def test_analyze_one_named_lax_frame(lax_model, lax_cine, tmp_path):
    """A 3-D single frame whose file name names its view: labels of its (X, Y, 1) shape, no FAC from one phase."""
    frame = tmp_path / "patient_4CH_ed.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(nib.load(str(lax_cine)).dataobj)[:, :, :, 0], AFFINE), str(frame))
    out = tmp_path / "out"
    assert main(["analyze", str(frame), "--lax-weights", str(lax_model), "-o", str(out), "--quiet"]) == 0
    labels = _same_geometry(out / "seg_lax_4c.nii.gz", frame)
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["ed_frame"], metrics["es_frame"], metrics["lv_fac_pct"]) == (0, 0, None)
    assert metrics["areas_mm2"]["myo"] == [pytest.approx((labels == 2).sum() * 1.25 * 0.9, abs=0.01)]


def test_view_picks_the_lax_cine_of_an_exam_that_has_sax_too(lax_model, lax_cine, short_cine, tmp_path):
    from cinema.io import CineView, Study, read_study, write_study

    sax = read_study(short_cine, view="sax").sax
    image = np.asarray(nib.load(str(lax_cine)).dataobj).astype(np.float32)[:, :, 0, :]
    lax = CineView(image=image, affine=AFFINE, name="lax_4c")
    exam = write_study(Study(views={"sax": sax, "lax_4c": lax}, ed_frame=5, es_frame=1), tmp_path / "exam")
    out = tmp_path / "out"
    assert main(["analyze", str(exam), "--view", "lax_4c", "--lax-weights", str(lax_model), "-o", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    # the exam's ED/ES (5, 1) index its SAX cine: the 2-frame LAX cine takes its own from the LV area curve
    assert (
        metrics["view"] == "lax_4c"
        and metrics["ed_es_source"] == "ED from the LV area curve, ES from the LV area curve"
    )
    assert nib.load(str(out / "seg_lax_4c.nii.gz")).shape == (*image.shape[:2], 1, 2)
