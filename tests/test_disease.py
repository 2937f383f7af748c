"""Disease classification from segmentation features: geometry of the features, the classifier, the shipped weights."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cinema.analysis.disease import (
    ACDC_GROUPS,
    FEATURE_NAMES,
    disease_features,
    fit_disease_classifier,
    load_disease_classifier,
    save_disease_classifier,
    wall_thickness_mm,
)
from cinema.io import read_acdc_patient
from cinema.metrics import ventricular_function

pytestmark = pytest.mark.usefixtures("one_thread")


def _ring_heart(spacing: tuple[float, float, float], lv_mm: float, wall_mm: float, shape=(96, 128, 4)) -> np.ndarray:
    """LV cavity of radius lv_mm inside a myocardial ring wall_mm thick, the same on every slice (world-circular)."""
    sx, sy, _ = spacing
    x = (np.arange(shape[0]) - shape[0] / 2) * sx
    y = (np.arange(shape[1]) - shape[1] / 2) * sy
    r = np.hypot(x[:, None], y[None, :])
    plane = np.zeros(shape[:2], dtype=np.uint8)
    plane[r <= lv_mm + wall_mm] = 2
    plane[r <= lv_mm] = 3
    return np.repeat(plane[:, :, None], shape[2], axis=2)


def test_wall_thickness_is_in_mm_with_anisotropic_pixels():
    spacing = (1.0, 1.6, 8.0)
    labels = _ring_heart(spacing, lv_mm=20.0, wall_mm=9.0)
    labels[:, :, 0] = 0  # a slice without a heart has no thickness
    thickness = wall_thickness_mm(labels, spacing)
    assert thickness.shape == (4, 36)
    assert np.isnan(thickness[0]).all()
    assert np.nanmean(thickness) == pytest.approx(9.0, abs=1.0)
    assert np.nanstd(thickness) < 1.2  # every direction alike, whichever axis has the coarse pixels

    # a ring open on half its circumference is not a measurable ring
    open_ring = labels.copy()
    half = open_ring[: labels.shape[0] // 2, :, 1]
    half[half == 2] = 0
    assert np.isnan(wall_thickness_mm(open_ring, spacing)[1]).all()


def test_thickening_and_thinning_features_follow_the_geometry():
    spacing = (1.25, 1.25, 10.0)
    ed = _ring_heart(spacing, lv_mm=25.0, wall_mm=8.0)
    es = _ring_heart(spacing, lv_mm=17.0, wall_mm=12.0)
    features = disease_features(ed, es, spacing)
    assert set(features) == set(FEATURE_NAMES)
    assert features["wall_thickening_pct"] == pytest.approx(50.0, abs=12.0)
    assert features["wall_thin_fraction"] == 0.0
    assert features["lv_ef_pct"] == pytest.approx(100 * (1 - (17 / 25) ** 2), abs=2.0)

    # an infarct-like thin segment shows up as thinning and uneven thickening
    thin = ed.copy()
    sx, sy, _ = spacing
    x = (np.arange(ed.shape[0]) - ed.shape[0] / 2) * sx
    y = (np.arange(ed.shape[1]) - ed.shape[1] / 2) * sy
    r = np.hypot(x[:, None], y[None, :])
    angle = np.arctan2(y[None, :], x[:, None])
    thin_sector = (np.abs(angle) < 0.6) & (r > 25.0 + 3.0) & (r <= 33.0)
    thin[thin_sector] = 0
    damaged = disease_features(thin, es, spacing)
    assert damaged["wall_thin_fraction"] > 0.1
    assert damaged["wall_ed_cv"] > features["wall_ed_cv"]


def test_features_of_a_real_exam_match_the_function_metrics(acdc_dir):
    study = read_acdc_patient(acdc_dir / "patient001")  # DCM
    ed, es = study.sax.labels[study.ed_frame], study.sax.labels[study.es_frame]
    features = disease_features(ed, es, study.sax.spacing)
    function = ventricular_function(ed, es, study.sax.spacing)
    assert features["lv_ef_pct"] == pytest.approx(function["lv_ef"], abs=1e-6)
    assert features["rv_edv_ml"] == pytest.approx(function["rv_edv"], abs=1e-6)
    assert all(np.isfinite(v) for v in features.values())
    assert 4.0 < features["wall_ed_mean_mm"] < 15.0  # a dilated, thin-walled LV; adult myocardium is 6-12 mm


def _blobs(n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, size=(len(ACDC_GROUPS), len(FEATURE_NAMES)))
    y = [ACDC_GROUPS[i % len(ACDC_GROUPS)] for i in range(n)]
    x = np.array([centres[ACDC_GROUPS.index(c)] + rng.normal(0, 1, len(FEATURE_NAMES)) for c in y])
    x[:, 0] = np.exp(x[:, 0] / 4) * 100  # a positive, log-scaled size feature
    return x, y


def test_classifier_learns_and_round_trips(tmp_path):
    x, y = _blobs(100, 0)
    model = fit_disease_classifier(x, y, l2=1.0)
    test_x, test_y = _blobs(50, 0)
    accuracy = np.mean(
        [model.classes[i] == t for i, t in zip(model.predict_proba(test_x).argmax(1), test_y, strict=True)]
    )
    assert accuracy > 0.9
    proba = model.predict_proba(test_x)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-9)

    folder = save_disease_classifier(model, tmp_path / "clf", recipe={"note": "test"})
    loaded = load_disease_classifier(folder)
    np.testing.assert_allclose(loaded.predict_proba(test_x), proba, atol=1e-12)
    features = dict(zip(FEATURE_NAMES, test_x[0], strict=True))
    features["wall_thickening_cv"] = float("nan")  # a missing feature is imputed, not fatal
    assert sum(loaded.probabilities(features).values()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="missing"):
        loaded.probabilities({"lv_edv_ml": 100.0})


def test_bad_classifier_folders_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_disease_classifier(tmp_path)
    x, y = _blobs(30, 1)
    folder = save_disease_classifier(fit_disease_classifier(x, y), tmp_path / "clf")
    config = json.loads((folder / "config.json").read_text())
    config["classes"] = config["classes"][:3]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="weight"):
        load_disease_classifier(folder)
    with pytest.raises(ValueError, match="not among the classes"):
        fit_disease_classifier(x, ["XYZ"] * len(y))


def test_shipped_classifier_reproduces_its_recorded_validation_from_ground_truth(acdc_dir):
    from cinema.weights import default_weights_dir

    folder = default_weights_dir("disease_classifier")
    recipe = json.loads((folder / "recipe.json").read_text())
    assert not set(recipe["split"]["val"]) & set(recipe["split"]["train"])
    model = load_disease_classifier()
    assert model.classes == ACDC_GROUPS
    predicted = []
    for patient, truth in zip(recipe["split"]["val"], recipe["validation_truth"], strict=True):
        study = read_acdc_patient(acdc_dir / patient)
        assert study.metadata["group"] == truth
        labels = study.sax.labels
        features = disease_features(labels[study.ed_frame], labels[study.es_frame], study.sax.spacing)
        probabilities = model.probabilities(features)
        predicted.append(max(probabilities, key=probabilities.get))
    assert predicted == recipe["validation_from_ground_truth_labels"]["predicted"]
    assert np.mean([p == t for p, t in zip(predicted, recipe["validation_truth"], strict=True)]) >= 0.9


@pytest.mark.slow
def test_shipped_classifier_from_the_shipped_segmentation_reaches_its_recorded_accuracy(acdc_dir):
    """The number users get: segment ED/ES of the held-out patients with the shipped model, classify."""
    from cinema.analysis.segment import load_segmentation_model, segment_study
    from cinema.weights import default_weights_dir

    recipe = json.loads((default_weights_dir("disease_classifier") / "recipe.json").read_text())
    seg = load_segmentation_model()
    classifier = load_disease_classifier()
    correct = 0
    for patient, truth in zip(recipe["split"]["val"], recipe["validation_truth"], strict=True):
        study = read_acdc_patient(acdc_dir / patient)
        pred = segment_study(study, seg, frames=[study.ed_frame, study.es_frame])
        probabilities = classifier.probabilities(
            disease_features(pred[study.ed_frame], pred[study.es_frame], study.sax.spacing)
        )
        correct += max(probabilities, key=probabilities.get) == truth
    recorded = recipe["validation_from_segmentation"]["accuracy"]
    # one exam either way: the recorded number came from the same code on another CPU
    assert correct / len(recipe["validation_truth"]) >= recorded - 1 / len(recipe["validation_truth"]) - 1e-9
