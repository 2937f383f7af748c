"""2.5-D slice models (``data.context_slices``): neighbouring slices as input channels, training to segment.

The training samples, the trainer's validation and `cinema segment` must stack the same neighbours in the same
order, and a slice model widened to 2.5-D (zero weights for the neighbours) must start out predicting exactly what
the slice model predicted, so fine-tuning from the shipped model starts from its accuracy.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from test_train_data import acdc_data, tiny_config

from cinema.analysis.segment import _model_space, _predict_probs, load_segmentation_model, segment_study
from cinema.config import config_from_dict
from cinema.io import read_acdc_patient
from cinema.preprocess import locate_study_heart, neighbour_slices
from cinema.train.datasets import build_datasets
from cinema.train.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def test_neighbour_slices_numpy_and_torch_agree_and_pad_with_zeros() -> None:
    volume = np.random.default_rng(0).random((2, 3, 4, 5)).astype(np.float32)
    out = neighbour_slices(volume, 2)
    assert out.shape == (2, 3, 4, 5, 5)
    for z in range(5):
        for j in range(5):
            source = z + j - 2
            expected = volume[..., source] if 0 <= source < 5 else np.zeros_like(volume[..., 0])
            np.testing.assert_array_equal(out[..., z, j], expected)
    np.testing.assert_array_equal(neighbour_slices(torch.from_numpy(volume), 2).numpy(), out)
    np.testing.assert_array_equal(neighbour_slices(volume, 0)[..., 0], volume)
    with pytest.raises(ValueError, match="context"):
        neighbour_slices(volume, -1)


def test_context_needs_slices_and_a_non_negative_count(acdc_dir: Path, tmp_path: Path) -> None:
    data = acdc_data(acdc_dir, 2, context_slices=1)
    with pytest.raises(ValueError, match="context_slices' needs data.slice_2d"):
        config_from_dict(tiny_config("segmentation", "unet", data, tmp_path))
    data = acdc_data(acdc_dir, 2, slice_2d=True, context_slices=-1)
    with pytest.raises(ValueError, match="context_slices' must be >= 0"):
        config_from_dict(tiny_config("segmentation", "unet", data, tmp_path))
    values = tiny_config("segmentation", "unet", {**data, "context_slices": 1}, tmp_path)
    with pytest.raises(ValueError, match="context_flip' must be in"):
        config_from_dict({**values, "transform": {"context_flip": 1.5}})


def test_training_samples_carry_the_neighbours_and_the_model_segments_with_them(acdc_dir: Path, tmp_path: Path):
    data = acdc_data(acdc_dir, 3, val_fraction=0.34, slice_2d=True, context_slices=1)
    values = tiny_config("segmentation", "unet", data, tmp_path)
    config = config_from_dict({**values, "transform": {"context_flip": 0.0}})
    train_set, _ = build_datasets(config)
    flipped_set, _ = build_datasets(config_from_dict({**values, "transform": {"context_flip": 1.0}}))
    plain_set, _ = build_datasets(
        config_from_dict(tiny_config("segmentation", "unet", {**data, "context_slices": 0}, tmp_path))
    )
    samples = train_set.samples
    assert samples == plain_set.samples
    for index in (0, 1, 5):
        subject, frame, z = samples[index]
        with_context = train_set[(index, 7)]
        assert with_context["image"]["sax"].shape == (3, 32, 32)
        # the centre channel is the slice model's sample, the label is the centre slice's
        torch.testing.assert_close(with_context["image"]["sax"][1:2], plain_set[(index, 7)]["image"]["sax"])
        torch.testing.assert_close(with_context["label"]["sax"], plain_set[(index, 7)]["label"]["sax"])
        below, above = with_context["image"]["sax"][0], with_context["image"]["sax"][2]
        if z == 0:
            assert not below.any()  # nothing below the first slice
        else:
            previous = samples.index((subject, frame, z - 1))
            torch.testing.assert_close(below, plain_set[(previous, 7)]["image"]["sax"][0])
        following = samples.index((subject, frame, z + 1))
        torch.testing.assert_close(above, plain_set[(following, 7)]["image"]["sax"][0])
        # context_flip reads the stack the other way: same slices, neighbours swapped, label unchanged
        flipped = flipped_set[(index, 7)]
        torch.testing.assert_close(flipped["image"]["sax"], with_context["image"]["sax"].flip(0))
        torch.testing.assert_close(flipped["label"]["sax"], with_context["label"]["sax"])
    result = Trainer(config).fit()
    assert np.isfinite(result.val_metrics[-1]["mean_dice"])
    config = yaml.safe_load((result.output_dir / "model" / "config.yaml").read_text())
    assert config["data"]["sax"]["in_chans"] == 3 and config["data"]["sax"]["context_slices"] == 1
    model = load_segmentation_model(result.output_dir / "model")
    assert model.context_slices == 1 and model.n_dims == 2
    study = read_acdc_patient(acdc_dir / "patient001")
    labels = segment_study(study, model, frames=[study.ed_frame])
    assert labels[study.ed_frame].shape == study.sax.spatial_shape and labels[study.ed_frame].dtype == np.uint8


@pytest.mark.parametrize("source_context", [0, 1])
def test_slice_model_widened_to_context_predicts_exactly_as_before(
    acdc_dir: Path, tmp_path: Path, source_context: int
) -> None:
    """model.init=finetuned from a model with fewer context slices (a one-slice model, or a 2.5-D one with k = 1):
    the wider twin starts from exactly its predictions."""
    from cinema.models.checkpoint import build_model, save_model

    data = acdc_data(acdc_dir, 2, val_fraction=0.5, slice_2d=True)
    context = source_context + 1
    plain_config = config_from_dict(
        tiny_config("segmentation", "unet", {**data, "context_slices": source_context}, tmp_path)
    )
    torch.manual_seed(0)
    plain_dir = save_model(build_model(plain_config.model_config()), tmp_path / "plain")
    values = tiny_config("segmentation", "unet", {**data, "context_slices": context}, tmp_path)
    values["model"].update(init="finetuned", weights=str(plain_dir))
    trainer = Trainer(config_from_dict(values))
    trainer.setup()  # builds the model from model.weights, as the first step of fit()
    # the trainer's widened network saved as a model folder, as `cinema segment --weights` would read it
    widened_dir = save_model(trainer.model.eval(), tmp_path / "widened")
    plain, widened = load_segmentation_model(plain_dir), load_segmentation_model(widened_dir)
    assert widened.context_slices == context and plain.context_slices == source_context
    first = trainer.model.state_dict()["encoder.in_conv.conv.weight"]
    assert first.shape[1] == 1 + 2 * context and not first[:, [0, -1]].any()  # zero weights for the new neighbours
    torch.testing.assert_close(first[:, 1:-1], plain.network.state_dict()["encoder.in_conv.conv.weight"])
    study = read_acdc_patient(acdc_dir / "patient054")
    centre = np.asarray(locate_study_heart(study, "sax").center_mm)
    images, _ = _model_space(study.sax, [study.ed_frame, study.es_frame], plain, centre)
    before = _predict_probs(plain, images, 32, amp=False)
    after = _predict_probs(widened, images, 32, amp=False)
    assert before.std() > 0  # a random network, but not a constant one
    np.testing.assert_allclose(after, before, atol=2e-6)


def test_widening_refuses_to_narrow() -> None:
    from cinema.train.trainer import widen_to_context

    with pytest.raises(ValueError, match="cannot widen a model with 2 context slices to 1"):
        widen_to_context({}, {}, context=1, source_context=2)


def test_context_that_does_not_fit_the_network_is_rejected(tmp_path: Path) -> None:
    from cinema.analysis.segment import ENSEMBLE_FILE, ensemble_members
    from cinema.weights import default_weights_dir

    shipped = default_weights_dir("sax_segmentation")
    if (shipped / ENSEMBLE_FILE).is_file():
        shipped = ensemble_members(shipped)[0]
    folder = tmp_path / "model"
    shutil.copytree(shipped, folder)
    config = yaml.safe_load((folder / "config.yaml").read_text())
    context = config["data"]["sax"].get("context_slices", 0)
    config["data"]["sax"]["context_slices"] = context + 1  # the network's input channels stay as they are
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    channels = 1 + 2 * context
    with pytest.raises(
        ValueError, match=f"context_slices {context + 1} does not fit a 2-D network with {channels} input"
    ):
        load_segmentation_model(folder)


class _Recorder(torch.nn.Module):
    """Stands in for a network: remembers its inputs, predicts background everywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.inputs: list[torch.Tensor] = []

    def forward(self, views: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = views["sax"]
        self.inputs.append(x.clone())
        return {"sax": torch.zeros(x.shape[0], 4, *x.shape[2:])}


def test_training_validation_and_segment_stack_the_same_neighbours(acdc_dir: Path, tmp_path: Path) -> None:
    """One ACDC frame in model space: the network input for every slice is the same in all three code paths."""
    from cinema.analysis.segment import SegmentationModel
    from cinema.tasks import make_task
    from cinema.train.datasets import _slice_input

    study = read_acdc_patient(acdc_dir / "patient012")
    recorder = _Recorder()
    model = SegmentationModel(recorder, 2, (1.5, 1.5), (128, 128), 4, context_slices=1)
    images, _ = _model_space(study.sax, [study.ed_frame], model, None, whole_field=False)  # (X, Y, Z, 1)
    _predict_probs(model, images, 32, amp=False)
    by_segment = torch.cat(recorder.inputs)
    depth = images.shape[2]
    assert by_segment.shape == (depth, 3, 128, 128)

    volume = np.moveaxis(images, -1, 0)  # (F=1, X, Y, Z) as a training subject holds it
    for z in range(depth):
        np.testing.assert_array_equal(by_segment[z].numpy(), _slice_input(volume, z, 1))

    data = acdc_data(acdc_dir, 2, slice_2d=True, context_slices=1)
    data["sax"] = {"spacing": [1.5, 1.5, 10.0], "patch_size": [128, 128, 16]}
    task = make_task(config_from_dict(tiny_config("segmentation", "unet", data, tmp_path)))
    recorder.inputs.clear()
    task._predict_slices(recorder, "sax", torch.from_numpy(volume)[None], torch.no_grad)
    torch.testing.assert_close(torch.cat(recorder.inputs), by_segment)
