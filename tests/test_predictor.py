"""`SegmentationPredictor`: one object built from weights and options, shared by segment, analyze, serve and
evaluate; `analyze_path`: the one read -> analyse -> write sequence of `cinema analyze` and `cinema serve`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cinema.analysis.analyze import analyze_path, analyze_study
from cinema.analysis.segment import InferenceOptions, SegmentationPredictor, load_segmentation_model, segment_study
from cinema.io import read_study


@pytest.fixture(scope="module")
def cine(short_cine):
    return read_study(short_cine, view="sax")


def test_predictor_equals_the_one_off_function_with_the_same_options(tiny_weights, cine):
    model = load_segmentation_model(tiny_weights)
    predictor = SegmentationPredictor(model, InferenceOptions(batch_size=7, mirror=True, postprocess=False))
    ours = predictor.segment_study(cine)
    reference = segment_study(cine, model, batch_size=7, mirror=True, postprocess=False)
    assert sorted(ours) == sorted(reference) == list(range(cine.sax.n_frames))
    for frame in ours:
        np.testing.assert_array_equal(ours[frame], reference[frame])
    plain = SegmentationPredictor(model).segment_study(cine, frames=[0])
    assert not np.array_equal(plain[0], ours[0])  # the options are really used (mirror changes the random net)


def test_progress_counts_every_frame_once_and_confidence_covers_them(tiny_weights, cine):
    predictor = SegmentationPredictor.from_weights(tiny_weights, batch_size=cine.sax.spatial_shape[2] * 2)
    steps: list[int] = []
    confidence: dict[int, float] = {}
    predictor.segment_study(cine, confidence=confidence, progress=steps.append)
    assert steps == [2, 2, 2]  # two frames' slices per batch, six frames
    assert sorted(confidence) == list(range(6))
    groups = predictor.frame_groups(cine.sax, range(6))
    assert groups == [[0, 1], [2, 3], [4, 5]]


def test_options_are_checked_when_built():
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        InferenceOptions(batch_size=0)


def test_analyze_path_uses_the_predictor_as_built(tiny_weights, short_cine, tmp_path):
    predictor = SegmentationPredictor.from_weights(tiny_weights, batch_size=5)
    analysis = analyze_path(short_cine, tmp_path / "out", predictor, display_name="upload")
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["model"] == tiny_weights.name and analysis.study.source == "upload"
    direct = analyze_study(read_study(short_cine, view="sax"), predictor)
    np.testing.assert_array_equal(direct.labels, analysis.labels)
    with pytest.raises(ValueError, match="--es 6 is outside the 6 stored frames"):
        analyze_path(short_cine, tmp_path / "never", predictor, es=6)
    assert not (tmp_path / "never").exists()
