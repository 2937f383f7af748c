"""Heart localisation on a single 3-D frame (no motion): the coarse pass of `cinema.analysis.segment`.

The coarse pass (one ensemble member, the middle slices, a coarse spacing) must keep the whole ground-truth heart of
real single ACDC frames inside the crop of the real pass, and hand over to the full sweep when it is unsure.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from cinema.analysis import segment
from cinema.io import read_acdc_patient
from cinema.io.study import SAX, CineView, Study
from cinema.preprocess import crop_coverage

pytestmark = pytest.mark.usefixtures("one_thread")

UNSURE = "coarse heart search unsure"


@pytest.fixture(scope="module")
def model() -> segment.SegmentationModel:
    return segment.load_segmentation_model()


def one_frame(acdc_dir, patient: str, which: str) -> tuple[CineView, np.ndarray]:
    study = read_acdc_patient(acdc_dir / patient)
    frame = study.ed_frame if which == "ED" else study.es_frame
    sax = study.sax
    view = CineView(image=sax.image[..., frame : frame + 1], affine=sax.affine, source=patient, name=SAX)
    return view, sax.labels[frame]


@pytest.mark.parametrize(("patient", "which"), [("patient001", "ED"), ("patient043", "ES"), ("patient075", "ED")])
def test_coarse_centre_keeps_the_heart_in_the_crop(acdc_dir, model, caplog, patient, which):
    view, labels = one_frame(acdc_dir, patient, which)
    with caplog.at_level(logging.INFO, logger=segment.__name__):
        center = segment._heart_from_prediction(view, model, 0, segment.DEFAULT_BATCH_SIZE, False)
    assert UNSURE not in caplog.text  # answered by the coarse pass alone
    _, transform = segment._model_space(view, [0], model, center)  # the crop of the real pass
    assert crop_coverage(labels > 0, transform) >= 0.999


def test_single_frame_study_is_segmented_without_the_full_sweep(acdc_dir, model, caplog):
    view, labels = one_frame(acdc_dir, "patient001", "ES")
    predictor = segment.SegmentationPredictor(model)
    with caplog.at_level(logging.INFO, logger=segment.__name__):
        result = predictor.segment_study(Study(views={SAX: view}))
    assert "no cardiac motion" in caplog.text and UNSURE not in caplog.text
    predicted, truth = result[0], labels
    for value in (1, 2, 3):
        overlap = (
            2.0
            * ((predicted == value) & (truth == value)).sum()
            / ((predicted == value).sum() + (truth == value).sum())
        )
        assert overlap > 0.8, (value, overlap)


def test_noise_falls_back_to_the_full_sweep(model, caplog):
    rng = np.random.default_rng(0)
    noise = rng.normal(100.0, 20.0, size=(96, 96, 4, 1)).astype(np.float32)
    view = CineView(image=noise, affine=np.diag([1.5, 1.5, 10.0, 1.0]), name=SAX)
    center, unsure = segment._coarse_heart(view, model, 0, segment.DEFAULT_BATCH_SIZE, False)
    assert center is None and unsure
    with caplog.at_level(logging.INFO, logger=segment.__name__):
        segment._heart_from_prediction(view, model, 0, segment.DEFAULT_BATCH_SIZE, False)
    assert UNSURE in caplog.text


def test_coarse_model_is_one_member_at_a_coarse_spacing(model, tiny_weights):
    view = CineView(image=np.zeros((256, 256, 10, 1), np.float32), affine=np.diag([1.6, 1.6, 10.0, 1.0]), name=SAX)
    coarse = segment._coarse_model(model, view)
    assert isinstance(coarse.network, segment.ProbabilityAverage) and len(coarse.network.members) == 1
    assert coarse.network.members[0] is model.network.members[0]
    assert coarse.context_slices == model.context_slices and coarse.patch_size == model.patch_size
    # 410 mm of field: 3.2 mm pixels fit it in one 128-pixel window per slice
    assert coarse.spacing == pytest.approx((3.2, 3.2), rel=1e-4)
    small = CineView(image=np.zeros((96, 96, 4, 1), np.float32), affine=np.diag([1.5, 1.5, 10.0, 1.0]), name=SAX)
    assert segment._coarse_model(model, small).spacing == pytest.approx((3.0, 3.0))  # twice the model's at least
    large = CineView(image=np.zeros((256, 256, 4, 1), np.float32), affine=np.diag([2.0, 2.0, 10.0, 1.0]), name=SAX)
    assert segment._coarse_model(model, large).spacing == pytest.approx((3.75, 3.75))  # 2.5 times at most
    plain = segment.load_segmentation_model(tiny_weights)
    assert segment._coarse_model(plain, view).network is plain.network  # a plain model is used as it is


def test_motion_pointing_away_from_the_heart_is_overruled_by_the_network(acdc_dir, model, monkeypatch, caplog):
    """A bias field or noise can make the motion-based location confident and wrong (measured: patient067 under the
    bias-field shift); the coarse network pass then wins, and an agreeing motion location is kept as it is."""
    from cinema.io import read_acdc_patient
    from cinema.preprocess import localise

    study = read_acdc_patient(acdc_dir / "patient001")
    predictor = segment.SegmentationPredictor(model)
    truth = study.sax.labels[study.ed_frame] > 0
    heart_mm = study.sax.affine[:3, :3] @ np.argwhere(truth).mean(axis=0) + study.sax.affine[:3, 3]
    agreed = predictor.locate_heart(study)
    assert segment._in_plane_distance(agreed, heart_mm, study.sax.affine) < segment.MOTION_DISAGREEMENT_MM

    corner = study.sax.affine[:3, :3] @ np.array([5.0, 5.0, 4.0]) + study.sax.affine[:3, 3]
    wrong = localise.HeartLocation(
        center_mm=corner, center_index=np.array([5.0, 5.0, 4.0]), confidence=4.3, fallback=False, method="motion"
    )
    monkeypatch.setattr("cinema.preprocess.locate_study_heart", lambda *_: wrong)
    with caplog.at_level(logging.INFO, logger=segment.__name__):
        center = predictor.locate_heart(study)
    assert "using the network's" in caplog.text
    _, transform = segment._model_space(study.sax, [study.ed_frame], model, center)
    assert crop_coverage(truth, transform) >= 0.999
