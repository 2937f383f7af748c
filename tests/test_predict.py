"""`cinema predict` against the official example scripts' own pre- and post-processing, written out here.

Every checkpoint is a tiny official-format folder with two seeds (seed 0: the golden weights of ../shared/golden,
seed 1: the same weights moved deterministically), named like the released files. The expected numbers come from
the official scripts' steps (nibabel in place of SimpleITK, MONAI's ScaleIntensity and SpatialPad "end" rewritten
with NumPy), computed seed by seed; only the network itself comes from this package (its parity with the reference
is tests/test_golden.py's job).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from scipy import ndimage
from scipy.spatial.distance import cdist

from cinema.cli import main
from cinema.models.checkpoint import load_model

TOL = 1e-4


def _perturbed(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {
        k: v + 0.01 * torch.sin(torch.arange(v.numel(), dtype=v.dtype)).reshape(v.shape) if v.is_floating_point() else v
        for k, v in state.items()
    }


def _two_seeds(golden: Path, folder: Path, name: str, config: dict | None = None, state: dict | None = None) -> Path:
    folder.mkdir(parents=True)
    config = config if config is not None else yaml.safe_load((golden / "config.yaml").read_text())
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    state = state if state is not None else load_file(golden / "model.safetensors")
    save_file(state, folder / f"{name}_0.safetensors")
    save_file(_perturbed(state), folder / f"{name}_1.safetensors")
    return folder


@pytest.fixture(scope="module")
def checkpoints(golden_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("finetuned")
    out = {
        "classification": _two_seeds(
            golden_dir / "convvit_tiny_sax_classification", root / "mnms2_sax_cvd", "mnms2_sax"
        ),
        "regression": _two_seeds(golden_dir / "convvit_tiny_sax_regression", root / "acdc_sax_ef", "acdc_sax"),
        "segmentation_sax": _two_seeds(golden_dir / "convunetr_tiny_sax", root / "acdc_sax_seg", "acdc_sax"),
        "segmentation_lax": _two_seeds(golden_dir / "convunetr_tiny_lax_4c", root / "mnms2_lax_4c", "mnms2_lax_4c"),
        "landmark_coordinate": _two_seeds(
            golden_dir / "convvit_tiny_lax_4c_landmark", root / "landmark_coordinate" / "lax_4c", "lax_4c"
        ),
    }
    # a heatmap model: the LAX ConvUNetR with 3 sigmoid outputs (its head cut to the first 3 channels)
    lax = golden_dir / "convunetr_tiny_lax_4c"
    config = yaml.safe_load((lax / "config.yaml").read_text())
    config["task"] = "landmark_heatmap"
    config["model"]["out_chans"] = 3
    state = {
        k: v[:3] if k.startswith("pred_head_dict.") else v for k, v in load_file(lax / "model.safetensors").items()
    }
    out["landmark_heatmap"] = _two_seeds(lax, root / "landmark_heatmap" / "lax_4c", "lax_4c", config, state)
    return out


# ------------------------------------------------------------------------------- the official scripts, written out


def _read(path: Path) -> np.ndarray:
    """``np.transpose(sitk.GetArrayFromImage(sitk.ReadImage(path)))``: the stored array in (x, y, z[, t]) order."""
    return np.asarray(nib.load(str(path)).dataobj)


def _scale_intensity(x: np.ndarray) -> np.ndarray:
    """MONAI ScaleIntensity(minv=0, maxv=1) of the whole array, float32."""
    x = x.astype(np.float32)
    low, high = x.min(), x.max()
    return (x - low) / (high - low) if high > low else np.zeros_like(x)


def _spatial_pad_end(x: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """MONAI SpatialPad(spatial_size, method="end") of a (C, *spatial) array."""
    pads = [(0, 0)] + [(0, max(0, s - n)) for n, s in zip(x.shape[1:], size, strict=True)]
    return np.pad(x, pads)


def _seeds(folder: Path) -> list[torch.nn.Module]:
    return [load_model(folder / "config.yaml", p) for p in sorted(folder.glob("*_[0-9].safetensors"))]


def _official_pooled(folder: Path, ed: Path, es: Path, view: str) -> list[np.ndarray]:
    """classification_*.py / regression_*.py up to the model output, per seed: (out,) logits."""
    spatial_size = (192, 192, 16) if view == "sax" else (256, 256)
    image = np.stack([_read(ed), _read(es)], axis=0)
    if view != "sax":
        image = image[..., 0]
    batch = _spatial_pad_end(_scale_intensity(image), spatial_size)[None]
    with torch.no_grad():
        return [m({view: torch.from_numpy(batch)})[0].numpy() for m in _seeds(folder)]


def _official_post_process(labels: np.ndarray, fast: bool = False) -> np.ndarray:
    """segmentation_lax_4c.py's post_process, its loop as written (skimage.measure.label = 8-connected labelling).

    ``fast``: the L1 distance from the RV to a component from a taxicab distance transform instead of cdist over
    every pixel pair (the same number, and the loop keeps its never-updated ``d_max``)."""
    processed = np.zeros_like(labels)
    rv_mask = labels == 1
    processed[rv_mask] = 1
    to_rv = ndimage.distance_transform_cdt(~rv_mask, metric="taxicab") if fast and rv_mask.any() else None
    for i in [2, 3]:
        mask = labels == i
        labeled_mask, _ = ndimage.label(mask, structure=np.ones((3, 3)))
        bc = np.bincount(labeled_mask.flat, weights=mask.flat)
        closest = None
        d_max = np.inf
        for j, c in enumerate(bc):
            if c > 0:
                if to_rv is not None:
                    d = to_rv[labeled_mask == j].min()
                else:
                    d = cdist(np.argwhere(rv_mask), np.argwhere(labeled_mask == j), "minkowski", p=1.0).min()
                if d < d_max:
                    closest = j
        processed[labeled_mask == closest] = i
    return processed


def _predict(weights: Path, inputs: list[Path], out: Path, *extra: str) -> dict:
    assert main(["predict", str(weights), *map(str, inputs), "-o", str(out), *extra]) == 0
    return json.loads((out / "prediction.json").read_text())


# ------------------------------------------------------------------------------------------------ pooled heads


def test_classification_matches_the_official_script_per_seed(checkpoints, preprocessed_dir, tmp_path):
    folder = checkpoints["classification"]
    ed, es = preprocessed_dir / "mnms2" / "sax_ed.nii.gz", preprocessed_dir / "mnms2" / "sax_es.nii.gz"
    result = _predict(folder, [ed, es], tmp_path / "out", "--preprocessed")
    classes = list(yaml.safe_load((folder / "config.yaml").read_text())["data"]["pathology"])
    assert result["task"] == "classification" and result["classes"] == classes
    assert [s["weights"] for s in result["seeds"]] == ["mnms2_sax_0.safetensors", "mnms2_sax_1.safetensors"]
    expected = [
        torch.softmax(torch.from_numpy(logits), dim=0).numpy() for logits in _official_pooled(folder, ed, es, "sax")
    ]
    assert not np.allclose(expected[0], expected[1], atol=1e-3)  # the two seeds really differ
    for seed, probs in zip(result["seeds"], expected, strict=True):
        np.testing.assert_allclose([seed["probabilities"][c] for c in classes], probs, atol=TOL)
        assert seed["prediction"] == classes[int(np.argmax(probs))]
    mean = np.mean(expected, axis=0)
    np.testing.assert_allclose([result["probabilities"][c] for c in classes], mean, atol=TOL)
    assert result["prediction"] == classes[int(np.argmax(mean))]
    assert (tmp_path / "out" / ".cinema-output").is_file() and not (tmp_path / "out" / "mask.nii.gz").exists()


def test_regression_matches_the_official_script_per_seed(checkpoints, preprocessed_dir, tmp_path):
    folder = checkpoints["regression"]
    ed, es = preprocessed_dir / "acdc" / "sax_ed.nii.gz", preprocessed_dir / "acdc" / "sax_es.nii.gz"
    result = _predict(folder, [ed, es], tmp_path / "out", "--preprocessed")
    stats = yaml.safe_load((folder / "config.yaml").read_text())["data"]["ef"]
    expected = [float(out[0]) * stats["std"] + stats["mean"] for out in _official_pooled(folder, ed, es, "sax")]
    assert result["target"] == "ef"
    np.testing.assert_allclose([s["value"] for s in result["seeds"]], expected, atol=TOL)
    assert result["value"] == pytest.approx(np.mean(expected), abs=TOL)


# ------------------------------------------------------------------------------------------------ segmentation


def test_sax_segmentation_matches_the_official_script_per_seed(checkpoints, preprocessed_dir, tmp_path):
    folder = checkpoints["segmentation_sax"]
    path = preprocessed_dir / "acdc" / "sax_ed.nii.gz"
    result = _predict(folder, [path], tmp_path / "out", "--preprocessed")
    # segmentation_sax.py on one frame: scale, pad to 16 slices, arg-max, stored slices; volume = n * 10 / 1000
    image = _read(path)
    n_slices = image.shape[-1]
    batch = torch.from_numpy(_spatial_pad_end(_scale_intensity(image[None]), (192, 192, 16))[None])
    with torch.no_grad():
        logits = [m({"sax": batch})["sax"] for m in _seeds(folder)]
    for seed, out in zip(result["seeds"], logits, strict=True):
        labels = torch.argmax(out, dim=1)[0, ..., :n_slices].numpy()
        for value, name in ((1, "RV"), (2, "MYO"), (3, "LV")):
            assert seed["volumes_ml"][name] == pytest.approx([np.sum(labels == value) * 10 / 1000], abs=TOL)
    # the seed mean: averaged softmax, on the input's own grid and affine
    mean = torch.stack([torch.softmax(o, dim=1) for o in logits]).mean(0)
    expected = torch.argmax(mean, dim=1)[0, ..., :n_slices].numpy()
    mask = nib.load(str(tmp_path / "out" / result["mask"]))
    assert mask.shape == image.shape and np.allclose(mask.affine, nib.load(str(path)).affine)
    np.testing.assert_array_equal(np.asarray(mask.dataobj), expected)
    assert result["volumes_ml"]["LV"] == pytest.approx([np.sum(expected == 3) * 10 / 1000], abs=TOL)


def test_lax_segmentation_applies_the_official_post_processing(checkpoints, preprocessed_dir, tmp_path):
    folder = checkpoints["segmentation_lax"]
    frames = [preprocessed_dir / "mnms2" / f"lax_4c_{p}.nii.gz" for p in ("ed", "es")]
    cine = np.stack([_read(f)[..., 0] for f in frames], axis=-1)[:, :, None, :]  # (x, y, 1, t) as the UKB example
    path = tmp_path / "lax_4c.nii.gz"
    nib.save(nib.Nifti1Image(cine, nib.load(str(frames[0])).affine), str(path))
    result = _predict(folder, [path], tmp_path / "out", "--preprocessed")
    pixel_mm2 = float(np.prod(np.linalg.norm(nib.load(str(path)).affine[:3, :2], axis=0)))
    # segmentation_lax_4c.py: each frame scaled alone, arg-max, post_process; areas per frame
    per_seed = []
    with torch.no_grad():
        for model in _seeds(folder):
            logits = [
                model({"lax_4c": torch.from_numpy(_scale_intensity(cine[None, ..., 0, t]))[None]})["lax_4c"]
                for t in range(2)
            ]
            per_seed.append(torch.cat(logits))
    for seed, logits in zip(result["seeds"], per_seed, strict=True):
        labels = [_official_post_process(torch.argmax(logits[t], dim=0).numpy(), fast=True) for t in range(2)]
        for value, name in ((1, "RV"), (2, "MYO"), (3, "LV")):
            # the script counts pixels; the prediction reports them in mm^2 (pixel area from the affine, ~1 mm^2)
            expected = [float(np.sum(x == value)) * pixel_mm2 for x in labels]
            assert seed["areas_mm2"][name] == pytest.approx(expected, abs=TOL)
    mean = torch.stack([torch.softmax(x, dim=1) for x in per_seed]).mean(0)
    expected = np.stack(
        [_official_post_process(torch.argmax(mean[t], dim=0).numpy(), fast=True) for t in range(2)], axis=-1
    )
    mask = np.asarray(nib.load(str(tmp_path / "out" / "mask.nii.gz")).dataobj)
    assert mask.shape == cine.shape
    np.testing.assert_array_equal(mask[:, :, 0], expected)


def test_official_lax_post_processing_keeps_the_last_component_and_leaves_rv_free_frames():
    from cinema.analysis.predict import official_lax_postprocess

    labels = np.zeros((12, 12), dtype=np.uint8)
    labels[0:2, 0:2] = 1  # RV
    labels[3:5, 3:5] = 3  # LV component next to the RV ...
    labels[9:11, 9:11] = 3  # ... and one far away: the official loop keeps this one (last in raster order)
    labels[6, 0:3] = 2
    out = official_lax_postprocess(labels)
    np.testing.assert_array_equal(out, _official_post_process(labels))
    assert (out[9:11, 9:11] == 3).all() and not (out[3:5, 3:5] == 3).any()
    no_rv = labels.copy()
    no_rv[no_rv == 1] = 0  # the official script fails here; the labels are kept as predicted
    np.testing.assert_array_equal(official_lax_postprocess(no_rv), no_rv)


def test_native_grid_segmentation_comes_back_on_the_input_grid(checkpoints, preprocessed_dir, tmp_path):
    """Without --preprocessed: resampled into model space (1 mm, 256 x 256 around the heart) and back, the mask has
    the input's shape and affine, and the areas are the mask's."""
    source = nib.load(str(preprocessed_dir / "mnms2" / "lax_4c_ed.nii.gz"))
    # a coarser, smaller, shifted grid than the model's: 1.4 x 1.25 mm, 150 x 170 pixels
    image = ndimage.zoom(np.asarray(source.dataobj, dtype=np.float32)[20:230, 30:242, 0], (1 / 1.4, 1 / 1.25))
    affine = source.affine @ np.diag([1.4, 1.25, 1.0, 1.0])
    affine[:3, 3] += source.affine[:3, :3] @ [20, 30, 0]
    path = tmp_path / "lax_4c.nii.gz"
    nib.save(nib.Nifti1Image(image[:, :, None], affine), str(path))
    result = _predict(checkpoints["segmentation_lax"], [path], tmp_path / "out")
    mask = nib.load(str(tmp_path / "out" / "mask.nii.gz"))
    assert mask.shape == (*image.shape, 1) and np.allclose(mask.affine, affine, atol=1e-4)
    assert not result["preprocessed"] and len(result["seeds"]) == 2
    labels = np.asarray(mask.dataobj)
    assert (labels == 1).any()
    for value, name in ((1, "RV"), (2, "MYO"), (3, "LV")):
        assert result["areas_mm2"][name] == pytest.approx([np.sum(labels == value) * 1.4 * 1.25], rel=1e-5)


# ------------------------------------------------------------------------------------------------ landmarks


def test_coordinate_landmarks_match_the_official_script_per_seed(checkpoints, preprocessed_dir, tmp_path):
    folder = checkpoints["landmark_coordinate"]
    path = preprocessed_dir / "mnms2" / "lax_4c_ed.nii.gz"
    result = _predict(folder, [path], tmp_path / "out", "--preprocessed")
    images = _read(path)[..., None]  # (x, y, 1, t)
    w, h = images.shape[:2]
    batch = torch.from_numpy(_scale_intensity(images[None, ..., 0, 0]))[None]
    affine = nib.load(str(path)).affine
    raw = []
    for seed, model in zip(result["seeds"], _seeds(folder), strict=True):
        with torch.no_grad():
            coords = model({"lax_4c": batch})[0].numpy()
        coords = coords * np.array([w, h, w, h, w, h])
        raw.append(coords)
        expected = [int(x) for x in coords]
        assert seed["points"] == [np.reshape(expected, (3, 2)).tolist()]
        world = nib.affines.apply_affine(affine, np.c_[np.reshape(expected, (3, 2)), np.zeros(3)])
        np.testing.assert_allclose(seed["points_mm"][0], world, atol=1e-3)
    np.testing.assert_allclose(result["points"][0], np.mean(raw, axis=0).reshape(3, 2), atol=1e-3)
    assert result["method"] == "coordinate"


def _official_heatmap_soft_argmax(heatmap: torch.Tensor, beta: float = 1000.0) -> torch.Tensor:
    batch, c, w, h = heatmap.shape
    softmax = torch.softmax(heatmap.reshape(batch, c, -1) * beta, dim=2)
    coords = torch.cartesian_prod(torch.arange(w), torch.arange(h))
    coords = (softmax[..., None] * coords[None, None, ...]).sum(dim=2)
    return coords.reshape((batch, -1)).to(dtype=torch.long)


def test_heatmap_landmarks_match_the_official_script_per_seed(checkpoints, preprocessed_dir, tmp_path):
    from cinema import heatmap_soft_argmax

    folder = checkpoints["landmark_heatmap"]
    # one frame of a cine (x, y, 1, t), as the UKB example reads it (several frames: the LAX segmentation test)
    source = preprocessed_dir / "mnms2" / "lax_4c_es.nii.gz"
    cine = _read(source)[..., None]
    frames = [source]
    path = tmp_path / "1_lax_4c.nii.gz"
    nib.save(nib.Nifti1Image(cine, nib.load(str(frames[0])).affine), str(path))
    result = _predict(folder, [path], tmp_path / "out", "--preprocessed")
    assert result["method"] == "heatmap" and len(result["points"]) == 1
    for seed, model in zip(result["seeds"], _seeds(folder), strict=True):
        for t in range(1):
            with torch.no_grad():
                logits = model({"lax_4c": torch.from_numpy(_scale_intensity(cine[None, ..., 0, t]))[None]})["lax_4c"]
            probs = torch.sigmoid(logits)
            official = _official_heatmap_soft_argmax(probs)
            assert torch.equal(heatmap_soft_argmax(probs), official)  # the drop-in helper too
            assert seed["points"][t] == np.reshape([int(x) for x in official[0].numpy()], (3, 2)).tolist()


# ------------------------------------------------------------------------------------------------ checkpoints, CLI


def test_seed_files_and_checkpoint_errors(checkpoints, tmp_path):
    from cinema.analysis.predict import find_checkpoint, load_checkpoint

    folder = checkpoints["regression"]
    config, seeds = find_checkpoint(folder)
    assert [s.name for s in seeds] == ["acdc_sax_0.safetensors", "acdc_sax_1.safetensors"]
    assert find_checkpoint(seeds[1]) == (config, [seeds[1]])
    many = tmp_path / "many"
    shutil.copytree(folder, many)
    shutil.copy(many / "acdc_sax_1.safetensors", many / "acdc_sax_10.safetensors")
    shutil.copy(many / "acdc_sax_1.safetensors", many / "acdc_sax_2.safetensors")
    assert [s.stem.rsplit("_", 1)[1] for s in find_checkpoint(many)[1]] == ["0", "1", "2", "10"]
    checkpoint = load_checkpoint(folder)
    assert (checkpoint.task, checkpoint.n_frames, checkpoint.target) == ("regression", 2, ("ef", 27.699, 10.848))
    lone = tmp_path / "lone" / "x_0.safetensors"
    lone.parent.mkdir()
    shutil.copy(seeds[0], lone)
    with pytest.raises(FileNotFoundError, match="no config.yaml beside the seed file"):
        find_checkpoint(lone)


def test_cli_refuses_bad_inputs_and_keeps_outputs_safe(checkpoints, golden_dir, preprocessed_dir, tmp_path, capsys):
    ed = preprocessed_dir / "acdc" / "sax_ed.nii.gz"
    # a two-frame model given one preprocessed file
    assert main(["predict", str(checkpoints["regression"]), str(ed), "-o", str(tmp_path / "a"), "--preprocessed"]) == 2
    assert "two-frame model takes ED and ES" in capsys.readouterr().err
    # the pre-trained MAE has no head
    assert main(["predict", str(golden_dir / "mae_tiny"), str(ed), "-o", str(tmp_path / "b")]) == 2
    assert "no task head" in capsys.readouterr().err
    # an existing folder is never replaced without --force, nor a folder cinema did not write
    out = tmp_path / "user"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    args = ["predict", str(checkpoints["segmentation_sax"]), str(ed), "-o", str(out), "--preprocessed"]
    assert main(args) == 2 and "not empty" in capsys.readouterr().err
    assert main([*args, "--force"]) == 2 and "not written by cinema" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine"


# ------------------------------------------------------------------------------------------------ exams


def test_two_frame_model_reads_ed_and_es_from_an_exam(checkpoints, acdc_dir, tmp_path):
    """An ACDC folder names its ED and ES frames; given as two files instead, the same frames give the same values."""
    from cinema.io import read_study

    exam = acdc_dir / "patient001"
    result = _predict(checkpoints["regression"], [exam], tmp_path / "exam")
    study = read_study(exam)
    assert result["ed_es_source"] == "input" and not result["preprocessed"]
    assert result["frames"] == [{"index": study.ed_frame, "name": "ED"}, {"index": study.es_frame, "name": "ES"}]
    files = []
    for name, frame in (("ed", study.ed_frame), ("es", study.es_frame)):
        files.append(tmp_path / f"sax_{name}.nii.gz")
        nib.save(nib.Nifti1Image(study.sax.image[..., frame], study.sax.affine), str(files[-1]))
    pair = _predict(checkpoints["regression"], files, tmp_path / "pair")
    np.testing.assert_allclose([s["value"] for s in pair["seeds"]], [s["value"] for s in result["seeds"]], atol=TOL)
    text = (tmp_path / "exam" / "prediction.json").read_text()
    assert "patient001" not in text and str(acdc_dir) not in text  # nothing that names the patient or the path


def test_ed_and_es_from_the_shipped_segmentation_when_the_exam_does_not_say(
    checkpoints, short_cine, tmp_path, monkeypatch
):
    """A cine alone: ED / ES are the frames of largest and smallest LV volume of the shipped SAX segmentation."""
    from cinema.analysis import segment

    lv_voxels = [30, 50, 80, 40, 10, 20]  # per frame: ED = frame 2, ES = frame 4

    class Shipped:
        def segment_study(self, study, **_):
            shape = study.sax.spatial_shape
            labels = {}
            for frame, count in enumerate(lv_voxels):
                label = np.zeros(shape, dtype=np.uint8)
                label.reshape(-1)[:count] = 3
                labels[frame] = label
            return labels

    monkeypatch.setattr(segment.SegmentationPredictor, "from_weights", classmethod(lambda cls, w, **kw: Shipped()))
    result = _predict(checkpoints["regression"], [short_cine], tmp_path / "out")
    assert result["frames"] == [{"index": 2, "name": "ED"}, {"index": 4, "name": "ES"}]
    assert "shipped SAX segmentation" in result["ed_es_source"]


def test_a_nifti_of_another_view_is_refused_not_guessed(checkpoints, preprocessed_dir, tmp_path, capsys):
    lax = preprocessed_dir / "mnms2" / "lax_4c_ed.nii.gz"
    # a long-axis image given to a short-axis model: one slice is no SAX stack
    unnamed = tmp_path / "image.nii.gz"
    shutil.copy(lax, unnamed)
    assert main(["predict", str(checkpoints["segmentation_sax"]), str(unnamed), "-o", str(tmp_path / "a")]) == 2
    assert "one slice, where the model needs a short-axis stack" in capsys.readouterr().err
    # a file named for another view
    two_chamber = tmp_path / "lax_2c.nii.gz"
    shutil.copy(lax, two_chamber)
    assert main(["predict", str(checkpoints["segmentation_lax"]), str(two_chamber), "-o", str(tmp_path / "b")]) == 2
    assert "the file name says lax_2c, the model sees lax_4c" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_native_grid_landmarks_are_voxel_indices_of_the_input_and_world_mm(checkpoints, preprocessed_dir, tmp_path):
    source = nib.load(str(preprocessed_dir / "mnms2" / "lax_4c_es.nii.gz"))
    image = ndimage.zoom(np.asarray(source.dataobj, dtype=np.float32)[:, :, 0], (1 / 1.3, 1 / 1.3))
    affine = source.affine @ np.diag([1.3, 1.3, 1.0, 1.0])
    path = tmp_path / "lax_4c.nii.gz"
    nib.save(nib.Nifti1Image(np.stack([image, image[::-1]], axis=-1)[:, :, None], affine), str(path))
    result = _predict(checkpoints["landmark_coordinate"], [path], tmp_path / "out")
    assert len(result["points"]) == 2 and len(result["seeds"]) == 2
    for entry in [result, *result["seeds"]]:
        voxels = np.asarray(entry["points"], dtype=np.float64)  # (T, 3, 2) continuous (x, y) indices of the input
        world = nib.affines.apply_affine(affine, np.concatenate([voxels, np.zeros((*voxels.shape[:2], 1))], -1))
        np.testing.assert_allclose(entry["points_mm"], world, atol=1e-3)
    seed_mean = np.mean([s["points"] for s in result["seeds"]], axis=0)
    np.testing.assert_allclose(result["points"], seed_mean, atol=1e-3)  # the model-space mean maps affinely back


def test_a_cinema_finetune_output_folder_is_a_checkpoint(checkpoints, tmp_path):
    from cinema.analysis.predict import find_checkpoint, load_checkpoint

    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    shutil.copy(checkpoints["classification"] / "config.yaml", run / "model" / "config.yaml")
    shutil.copy(checkpoints["classification"] / "mnms2_sax_0.safetensors", run / "model" / "model.safetensors")
    assert find_checkpoint(run) == (run / "model" / "config.yaml", [run / "model" / "model.safetensors"])
    checkpoint = load_checkpoint(run)
    assert (checkpoint.task, checkpoint.classes) == ("classification", ["DCM", "HCM", "MINF", "NOR", "RV"])


def test_seed_zero_reproduces_the_golden_outputs(checkpoints, golden_dir, tmp_path):
    """The golden inputs span exactly [0, 1], so the official min-max scaling leaves them as they are: written as
    model-space NIfTIs, seed 0 (the golden weights) must give the reference's own outputs (the SAX ConvUNetR's
    parity is test_golden.py's; its official pipeline is checked above)."""
    inputs = load_file(golden_dir / "inputs.safetensors")

    def nifti(name: str, array: torch.Tensor, zooms: tuple[float, ...]) -> Path:
        path = tmp_path / name
        data = array.numpy()
        nib.save(nib.Nifti1Image(data if data.ndim == 3 else data[:, :, None], np.diag([*zooms, 1.0])), str(path))
        return path

    def expected(folder: str) -> dict[str, torch.Tensor]:
        return load_file(golden_dir / folder / "expected.safetensors")

    ed = nifti("sax_ed.nii.gz", inputs["sax_2frames"][0, 0], (1.0, 1.0, 10.0))
    es = nifti("sax_es.nii.gz", inputs["sax_2frames"][0, 1], (1.0, 1.0, 10.0))
    result = _predict(checkpoints["classification"], [ed, es], tmp_path / "cls", "--preprocessed")
    probs = torch.softmax(expected("convvit_tiny_sax_classification")["logits.all"][0], dim=0)
    np.testing.assert_allclose(list(result["seeds"][0]["probabilities"].values()), probs, atol=TOL)

    result = _predict(checkpoints["regression"], [ed, es], tmp_path / "reg", "--preprocessed")
    value = float(expected("convvit_tiny_sax_regression")["logits.all"][0, 0]) * 10.848 + 27.699
    assert result["seeds"][0]["value"] == pytest.approx(value, abs=TOL)

    def near_ties(logits: torch.Tensor) -> int:
        """Voxels whose two best logits are within the golden tolerance: their arg-max may go either way."""
        top = logits.topk(2, dim=0).values
        return int(((top[0] - top[1]) < 1e-3).sum())

    lax = nifti("lax_4c.nii.gz", inputs["lax_4c_1frame"][0, 0], (1.0, 1.0, 1.0))
    result = _predict(checkpoints["segmentation_lax"], [lax], tmp_path / "lax", "--preprocessed")
    logits = expected("convunetr_tiny_lax_4c")["logits"][0]
    labels = _official_post_process(logits.argmax(dim=0).numpy(), fast=True)
    assert result["seeds"][0]["areas_mm2"]["RV"] == pytest.approx([float(np.sum(labels == 1))], abs=near_ties(logits))

    result = _predict(checkpoints["landmark_coordinate"], [lax], tmp_path / "points", "--preprocessed")
    coords = expected("convvit_tiny_lax_4c_landmark")["logits.all"][0].numpy() * 256
    assert result["seeds"][0]["points"] == [np.reshape([int(x) for x in coords], (3, 2)).tolist()]


def test_task_from_the_release_folder_when_config_yaml_does_not_name_it(checkpoints, tmp_path):
    from cinema.analysis.predict import load_checkpoint

    for source, folder, task, method in (
        ("landmark_heatmap", "finetuned/landmark_heatmap/lax_4c", "landmark", "heatmap"),
        ("segmentation_lax", "finetuned/segmentation/mnms2_lax_4c", "segmentation", None),
        ("landmark_coordinate", "finetuned/landmark_coordinate/lax_4c", "landmark", "coordinate"),
        ("classification", "finetuned/classification_cvd/mnms2_sax", "classification", None),
    ):
        target = tmp_path / folder
        shutil.copytree(checkpoints[source], target)
        config = yaml.safe_load((target / "config.yaml").read_text())
        del config["task"]
        (target / "config.yaml").write_text(yaml.safe_dump(config))
        checkpoint = load_checkpoint(target)
        assert (checkpoint.task, checkpoint.method) == (task, method), folder
