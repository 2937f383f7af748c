"""Inference engines: ONNX Runtime gives the shipped ensemble's probabilities as PyTorch does, cached between runs."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch

from cinema.analysis.segment import SegmentationPredictor, _model_space
from cinema.io import read_study
from cinema.io.errors import InputError
from cinema.models import engines
from cinema.preprocess import locate_study_heart


@pytest.fixture(scope="module")
def acdc_frames(acdc_dir):
    study = read_study(acdc_dir / "patient001")
    return study


def test_resolve_engine_rules(monkeypatch) -> None:
    installed = {"onnxruntime", "openvino"}
    monkeypatch.setattr(engines, "engine_available", lambda e: e == "torch" or e in installed)
    assert engines.resolve_engine("auto", "cpu", amp=False) == "onnxruntime"  # OpenVINO only when named
    assert engines.resolve_engine("auto", "cpu", amp=True) == "torch"  # bf16 stays in PyTorch
    assert engines.resolve_engine("auto", "cuda", amp=False) == "torch"
    assert engines.resolve_engine("torch", "cpu", amp=False) == "torch"
    assert engines.resolve_engine("onnxruntime", "cpu", amp=False) == "onnxruntime"
    with pytest.raises(ValueError, match="fp32 on the CPU only"):
        engines.resolve_engine("onnxruntime", "cpu", amp=True)
    with pytest.raises(ValueError, match="fp32 on the CPU only"):
        engines.resolve_engine("openvino", "cuda", amp=False)
    with pytest.raises(ValueError, match="unknown engine"):
        engines.resolve_engine("tensorrt", "cpu", amp=False)
    installed.discard("openvino")
    assert engines.resolve_engine("auto", "cpu", amp=False) == "onnxruntime"
    with pytest.raises(ValueError, match="pip install openvino"):
        engines.resolve_engine("openvino", "cpu", amp=False)
    installed.clear()
    assert engines.resolve_engine("auto", "cpu", amp=False) == "torch"  # never required


@pytest.fixture(scope="module")
def export_cache(tmp_path_factory):
    """One cache folder for the module: the ensemble is exported once and read by every engine."""
    folder = tmp_path_factory.mktemp("cinema-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CINEMA_CACHE_DIR", str(folder))
        yield folder


@pytest.fixture(scope="module")
def model_space_frames(acdc_frames, export_cache):
    eager = SegmentationPredictor.from_weights(None, engine="torch", amp=False)
    view = acdc_frames.view("sax")
    center = np.asarray(locate_study_heart(acdc_frames, "sax").center_mm)
    images, _ = _model_space(view, [0, 1], eager.model, center)
    return images, eager.probabilities(images)


def test_onnxruntime_matches_torch_and_is_cached(model_space_frames, export_cache, monkeypatch) -> None:
    images, p_eager = model_space_frames
    predictor = SegmentationPredictor.from_weights(None, engine="onnxruntime")
    assert predictor.engine == "onnxruntime"
    probs = predictor.probabilities(images)
    assert probs.shape == p_eager.shape
    assert float(np.abs(probs - p_eager).max()) < 1e-4
    assert np.mean(probs.argmax(0) == p_eager.argmax(0)) > 0.9999
    cached = list((export_cache / "onnx").glob("*.onnx"))
    assert len(cached) == 1 and not list((export_cache / "onnx").glob(".*"))  # no temporary left

    def no_export(*args, **kwargs):
        raise AssertionError("exported again although the cache holds the network")

    monkeypatch.setattr(engines, "_export", no_export)
    again = SegmentationPredictor.from_weights(None, engine="onnxruntime")
    np.testing.assert_allclose(again.probabilities(images[..., :1]), probs[..., :1], atol=1e-6)


# OpenVINO runs in a child process: its threading runtime next to PyTorch's in one long process is what made auto
# leave it out (cinema.models.engines), and the test session must not be the process that finds out.
OPENVINO_CHILD = """
import sys, numpy as np
from cinema.analysis.segment import SegmentationPredictor
images = np.load(sys.argv[1])
predictor = SegmentationPredictor.from_weights(None, engine="openvino")
np.save(sys.argv[2], predictor.probabilities(images))
print(predictor.engine)
"""


def test_openvino_matches_torch_from_the_shared_export(model_space_frames, export_cache, tmp_path) -> None:
    images, p_eager = model_space_frames
    SegmentationPredictor.from_weights(None, engine="onnxruntime")._network()  # the export both engines read
    np.save(tmp_path / "images.npy", images)
    env = {**os.environ, "CINEMA_CACHE_DIR": str(export_cache)}
    child = [sys.executable, "-c", OPENVINO_CHILD, str(tmp_path / "images.npy"), str(tmp_path / "probs.npy")]
    done = subprocess.run(child, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "openvino"
    probs = np.load(tmp_path / "probs.npy")
    assert float(np.abs(probs - p_eager).max()) < 1e-4
    assert np.mean(probs.argmax(0) == p_eager.argmax(0)) > 0.9999
    assert len(list((export_cache / "onnx").glob("*.onnx"))) == 1  # read, not exported again


def test_unwritable_cache_falls_back_to_a_private_copy(tmp_path, monkeypatch) -> None:
    if os.geteuid() == 0:  # root writes anywhere: make the cache path a file instead of a read-only folder
        (tmp_path / "cache").write_text("not a folder")
    else:
        (tmp_path / "cache").mkdir()
        (tmp_path / "cache").chmod(stat.S_IRUSR | stat.S_IXUSR)
    monkeypatch.setenv("CINEMA_CACHE_DIR", str(tmp_path / "cache"))

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, views):
            return {"sax": self.conv(views["sax"])}

    network = Tiny().eval()
    runner = engines.runner_for(network, "onnxruntime", "sax", 3, (16, 16))
    assert not runner.path.is_relative_to(tmp_path / "cache")
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        expected = network({"sax": x})["sax"].numpy()
    np.testing.assert_allclose(runner({"sax": x})["sax"].numpy(), expected, atol=1e-5)
    assert runner({"sax": torch.rand(5, 3, 16, 16)})["sax"].shape == (5, 4, 16, 16)  # any batch


def test_auto_exports_only_the_measured_family_and_named_engines_fail_loudly(tiny_weights, monkeypatch) -> None:
    from cinema.analysis.segment import InferenceOptions, SegmentationModel, load_segmentation_model

    volume = SegmentationModel(torch.nn.Conv3d(1, 4, 1), 3, (1.0, 1.0, 10.0), (16, 16, 4), 4, source="a 3-D model")
    assert SegmentationPredictor(volume, InferenceOptions(engine="auto")).engine == "torch"
    with pytest.raises(InputError, match="2-D models only"):
        _ = SegmentationPredictor(volume, InferenceOptions(engine="onnxruntime", amp=False)).engine
    # a named exported engine implies fp32 when the precision is auto (they run nothing else)
    named = SegmentationPredictor(volume, InferenceOptions(engine="openvino"))
    assert named.precision == "fp32"

    unet = load_segmentation_model(tiny_weights)  # a 2-D U-Net: the family auto exports
    assert SegmentationPredictor(unet, InferenceOptions(amp=False)).engine == "onnxruntime"

    def broken(*args, **kwargs):
        raise RuntimeError("no converter for this layer")

    monkeypatch.setattr("cinema.analysis.segment.runner_for", broken)
    fallback = SegmentationPredictor(unet, InferenceOptions(amp=False))
    images = np.random.default_rng(0).random((*unet.patch_size[:2], 2, 1), dtype=np.float32)
    fallback.probabilities(images)
    assert fallback.engine == "torch"  # auto falls back and says what ran
    with pytest.raises(InputError, match="cannot run this model"):
        SegmentationPredictor(unet, InferenceOptions(amp=False, engine="onnxruntime")).probabilities(images)


def test_command_line_choices_follow_the_engines_module() -> None:
    from cinema.analysis.segment import DEFAULT_ENGINE
    from cinema.cli import options
    from cinema.cohort.run import CohortSettings

    assert options.ENGINE_CHOICES == engines.ENGINES
    assert options.DEFAULT_ENGINE == DEFAULT_ENGINE == CohortSettings(weights=None).engine
