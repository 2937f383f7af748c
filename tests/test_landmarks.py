"""LAX landmarks and MAPSE: geometry from model space to world mm, loading checkpoints, `cinema analyze` with them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from cinema.analysis.analyze import example_study_path
from cinema.analysis.landmarks import LandmarkModel, lax_function, load_landmark_model, predict_landmarks
from cinema.cli import main
from cinema.io import CineView, read_study
from cinema.io.study import Study

pytestmark = pytest.mark.usefixtures("one_thread")


def test_lax_function_follows_the_reference_definitions():
    # hinge points 1, 2 move 12 and 8 mm towards a fixed apex between the longest (frame 1) and shortest (frame 3)
    apex = np.array([0.0, 0.0, 100.0])
    frames = []
    for shift_1, shift_2 in [(2.0, 1.0), (0.0, 0.0), (6.0, 4.0), (12.0, 8.0), (5.0, 3.0)]:
        frames.append([[-15.0, 0.0, shift_1], [15.0, 0.0, shift_2], apex])
    result = lax_function(np.array(frames))
    assert result["lax_ed_frame"] == 1 and result["lax_es_frame"] == 3
    assert result["mapse_mm"] == pytest.approx(10.0, abs=1e-6)
    lengths = np.array(result["lv_length_mm"])
    assert lengths[1] == pytest.approx(np.hypot(0, 100.0)) and lengths[3] == pytest.approx(90.0, abs=1e-6)
    assert result["longitudinal_shortening_pct"] == pytest.approx(10.0, abs=1e-2)
    assert result["global_longitudinal_strain_pct"] == pytest.approx(-10.0, abs=1e-2)  # (L_ES - L_ED) / L_ED
    one = lax_function(np.array(frames[:1]))
    assert one["mapse_mm"] is None and one["longitudinal_shortening_pct"] is None
    assert one["global_longitudinal_strain_pct"] is None
    with pytest.raises(ValueError, match="3, 3"):
        lax_function(np.zeros((4, 2, 3)))


class _PeakNet(nn.Module):
    """A stand-in heatmap network: Gaussian peaks at given model-space points, one set per input frame in order."""

    def __init__(self, points: np.ndarray, shape: tuple[int, int]) -> None:
        super().__init__()
        self.points = torch.as_tensor(points, dtype=torch.float32)
        self.shape = shape
        self.calls = 0
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward(self, images: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        ((view, x),) = images.items()
        n = x.shape[0]
        points = self.points[self.calls : self.calls + n]
        self.calls += n
        xs = torch.arange(self.shape[0]).view(1, 1, -1, 1).float()
        ys = torch.arange(self.shape[1]).view(1, 1, 1, -1).float()
        d2 = (xs - points[..., 0, None, None]) ** 2 + (ys - points[..., 1, None, None]) ** 2
        return {view: 20.0 * torch.exp(-d2 / (2 * 2.0**2)) - 10.0}


def _oblique_lax(n_frames: int = 6) -> CineView:
    """A 4-chamber-like plane tilted in 3-D with 1.4 mm pixels, a moving blob for the heart locator."""
    rng = np.random.default_rng(0)
    image = rng.normal(100, 5, size=(180, 200, n_frames)).astype(np.float32)
    xx, yy = np.meshgrid(np.arange(180), np.arange(200), indexing="ij")
    for t in range(n_frames):
        radius = 20 + 6 * np.sin(2 * np.pi * t / n_frames)
        image[..., t] += 300 * ((xx - 95) ** 2 + (yy - 90) ** 2 < radius**2)
    rotation = np.array([[0.8, -0.6, 0.0], [0.36, 0.48, -0.8], [0.48, 0.64, 0.6]])
    affine = np.eye(4)
    affine[:3, :3] = rotation * np.array([1.4, 1.4, 6.0])
    affine[:3, 3] = [-40.0, 25.0, 10.0]
    return CineView(image=image, affine=affine, name="lax_4c")


def test_predicted_points_come_back_to_the_native_grid_and_world_mm():
    view = _oblique_lax()
    study = Study({"lax_4c": view})
    targets = np.array([[[100.0 + t, 120.0], [150.0 - t, 118.0], [128.0, 40.0 + 2 * t]] for t in range(6)])
    model = LandmarkModel(_PeakNet(targets, (256, 256)), "heatmap", "lax_4c", (1.0, 1.0), (256, 256))
    result = predict_landmarks(study, model, batch_size=4)
    np.testing.assert_allclose(result.model, targets, atol=0.05)  # soft arg-max recovers the peaks
    # the same points through the model grid's own affine: world positions agree
    model_affine = result.transform.model_affine
    expected_world = targets @ model_affine[:3, :2].T + model_affine[:3, 3]
    np.testing.assert_allclose(result.world, expected_world, atol=0.1)
    # and the native voxel indices map to those world points through the exam's affine
    native_world = result.voxel @ view.affine[:3, :2].T + view.affine[:3, 3]
    np.testing.assert_allclose(native_world, result.world, atol=1e-6)
    # 1 model pixel = 1 mm: the hinge points move 1 mm per frame, the apex 2 mm
    function = lax_function(result.world)
    steps = np.linalg.norm(np.diff(result.world, axis=0), axis=-1)
    np.testing.assert_allclose(steps, [[1.0, 1.0, 2.0]] * 5, atol=0.1)
    assert function["mapse_mm"] == pytest.approx(np.abs(function["lax_ed_frame"] - function["lax_es_frame"]), abs=0.1)


def test_official_landmark_checkpoint_loads_and_predicts_in_the_image(golden_dir, preprocessed_dir):
    model = load_landmark_model(golden_dir / "convvit_tiny_lax_4c_landmark")
    assert model.kind == "coordinate" and model.view == "lax_4c" and model.patch_size == (256, 256)
    lax_files = sorted(preprocessed_dir.rglob("*lax_4c*.nii.gz"))
    assert lax_files, "no LAX 4C example in the shared data"
    study = read_study(lax_files[0], view="lax_4c")
    result = predict_landmarks(study, model)
    n_frames = study.view("lax_4c").n_frames
    assert result.voxel.shape == (n_frames, 3, 2) and result.world.shape == (n_frames, 3, 3)
    assert np.isfinite(result.world).all()


def test_segmentation_and_classification_checkpoints_are_not_landmark_models(golden_dir):
    with pytest.raises(ValueError, match="not a landmark model"):
        load_landmark_model(golden_dir / "convvit_tiny_sax_classification")
    with pytest.raises(ValueError, match="not a landmark model"):
        load_landmark_model(golden_dir / "convunetr_tiny_lax_4c")


@pytest.mark.slow
def test_analyze_reports_mapse_with_landmark_weights(tmp_path, golden_dir, preprocessed_dir):
    """A SAX + LAX exam through `cinema analyze --landmark-weights`: MAPSE and points in metrics.json and report."""
    from cinema.io import write_study

    example = read_study(example_study_path())
    sax = example.sax
    lax = _oblique_lax(n_frames=sax.n_frames)
    exam = tmp_path / "exam"
    both = Study({"sax": sax, "lax_4c": lax}, example.ed_frame, example.es_frame, dict(example.metadata))
    write_study(both, exam)
    out = tmp_path / "out"
    code = main(
        [
            "analyze",
            str(exam),
            "-o",
            str(out),
            "--quiet",
            "--landmark-weights",
            str(golden_dir / "convvit_tiny_lax_4c_landmark"),
        ]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    landmarks = metrics["mitral_valve_landmarks"]
    assert landmarks["view"] == "lax_4c" and len(landmarks["points_voxel_xy"]) == sax.n_frames
    assert len(landmarks["lv_length_mm"]) == sax.n_frames
    assert metrics["mapse_mm"] == landmarks["mapse_mm"]
    assert metrics["mapse_mm"] is None or metrics["mapse_mm"] >= 0
    if metrics["mapse_mm"] is not None:
        assert "MAPSE (lax_4c)" in (out / "report.html").read_text()
