"""Training data: generated cohorts for landmarks and survival, splits, and bad input caught before training.

The generators here are also used by tests/test_train_tasks.py: there are no landmark labels or survival outcomes
in ../shared, so those tasks are tested on images whose targets are known by construction.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cinema.config import config_from_dict
from cinema.train.datasets import build_datasets, list_entries, split_entries

# ---------------------------------------------------------------------------------------------------------------------
# Generated cohorts
# ---------------------------------------------------------------------------------------------------------------------


def _save(array: np.ndarray, path: Path, spacing: tuple[float, ...] = (1.0, 1.0, 8.0)) -> None:
    affine = np.diag([*spacing, 1.0])
    nib.save(nib.Nifti1Image(array.astype(np.float32), affine), str(path))


def _write_manifest(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def make_landmark_cohort(folder: Path, n: int = 12, n_val: int = 4, size: int = 64, seed: int = 0) -> Path:
    """LAX 4C single frames with three blobs of different brightness at known landmark positions (voxel x, y)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    grid_x, grid_y = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    rows = []
    for i in range(n):
        points = rng.uniform(14, size - 14, (3, 2))
        image = 0.05 * rng.standard_normal((size, size))
        for (x, y), brightness in zip(points, (1.0, 0.65, 0.35), strict=True):
            image += brightness * np.exp(-((grid_x - x) ** 2 + (grid_y - y) ** 2) / (2 * 2.5**2))
        name = f"case{i:02d}_lax_4c.nii.gz"
        _save(image[:, :, None], folder / name)
        row = {"id": f"case{i:02d}", "lax_4c": name, "split": "val" if i >= n - n_val else "train"}
        row.update({f"{axis}{k + 1}": float(points[k, a]) for k in range(3) for a, axis in enumerate("xy")})
        rows.append(row)
    return _write_manifest(folder / "manifest.csv", rows)


def make_survival_cohort(folder: Path, n: int = 24, n_val: int = 8, size: int = 32, seed: int = 0) -> Path:
    """Two-frame LAX cines of a disk whose radius sets the hazard: bigger ventricle, earlier event.

    time = exp(-2 z) * Exp(1) with z the standardised radius; a quarter of the subjects are censored at a random
    earlier time. The true risk ordering is therefore visible in the image.
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    grid_x, grid_y = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    radius = rng.uniform(3.0, 11.0, n)
    z = (radius - radius.mean()) / radius.std()
    event_time = np.exp(-2.0 * z) * rng.exponential(1.0, n)
    censored = rng.uniform(size=n) < 0.25
    time = np.where(censored, event_time * rng.uniform(0.3, 1.0, n), event_time)
    rows = []
    for i in range(n):
        distance = np.hypot(grid_x - size / 2 + 0.5, grid_y - size / 2 + 0.5)
        frames = [(distance < r).astype(np.float32) + 0.05 * rng.standard_normal((size, size)) for r in
                  (radius[i], 0.7 * radius[i])]  # fmt: skip
        name = f"s{i:02d}_lax_4c.nii.gz"
        _save(np.stack(frames, axis=-1)[:, :, None, :], folder / name)
        rows.append(
            {
                "id": f"s{i:02d}",
                "lax_4c": name,
                "ed_frame": 0,
                "es_frame": 1,
                "time": round(float(time[i]), 6),
                "event": int(not censored[i]),
                "split": "val" if i >= n - n_val else "train",
            }
        )
    return _write_manifest(folder / "manifest.csv", rows)


def copy_acdc(acdc_dir: Path, tmp_path: Path, patients: list[str]) -> Path:
    root = tmp_path / "acdc"
    for patient in patients:
        shutil.copytree(acdc_dir / patient, root / patient)
    return root


def acdc_config(root: Path, tmp_path: Path, **data) -> dict:
    return {
        "task": "segmentation",
        "output_dir": str(tmp_path / "run"),
        "data": {
            "format": "acdc",
            "dir": str(root),
            "val_fraction": 0.0,
            "crop_center": "image",
            "sax": {"spacing": [6.0, 6.0, 10.0], "patch_size": [32, 32, 8]},
            **data,
        },
        "model": {"name": "unet", "views": "sax", "unet": {"chans": [4, 8]}},
    }


# ---------------------------------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------------------------------


def test_acdc_samples(acdc_dir: Path) -> None:
    config = config_from_dict(
        acdc_config(acdc_dir, Path("/nonexistent"), max_subjects=3, val_fraction=0.34),
    )
    train, val = build_datasets(config)
    assert len(train.subjects) == 2 and len(val.subjects) == 1
    assert len(train) == 4  # ED and ES of each training patient are separate samples
    sample = train[(0, 123)]
    assert sample["image"]["sax"].shape == (1, 32, 32, 8) and sample["label"]["sax"].shape == (1, 32, 32, 8)
    assert set(np.unique(sample["label"]["sax"].numpy())) <= {0, 1, 2, 3}
    assert 0.0 <= float(sample["image"]["sax"].min()) and float(sample["image"]["sax"].max()) <= 1.0
    assert train[(0, 123)]["image"]["sax"].equal(sample["image"]["sax"])  # crops are a function of the seed
    whole = val[0]
    depth = val.subjects[0].images["sax"].shape[-1]
    assert whole["image"]["sax"].shape == (1, 32, 32, max(depth, 8))
    assert whole["size"]["sax"].tolist() == [32, 32, depth]


def test_stratified_split_and_proportion(acdc_dir: Path) -> None:
    values = acdc_config(acdc_dir, Path("/x"), val_fraction=0.25, class_column="group", max_subjects=20)
    values["data"]["classes"] = ["DCM", "HCM", "MINF", "NOR", "RV"]
    values["task"], values["model"] = "classification", {"name": "convvit", "views": "sax"}
    config = config_from_dict(values)
    train, val = split_entries(list_entries(config), config)
    groups = sorted(e.metadata["group"] for e in val)
    assert groups == ["DCM", "HCM", "MINF", "NOR", "RV"]  # 4 per class chosen, one of each held out
    assert len(train) == 15 and not {e.id for e in train} & {e.id for e in val}
    again = split_entries(list_entries(config), config)
    assert [e.id for e in again[1]] == [e.id for e in val]  # deterministic given the seed
    half = config_from_dict(values, ["data.proportion=0.5"])
    train_half, val_half = split_entries(list_entries(half), half)
    assert len(train_half) == 7 and [e.id for e in val_half] == [e.id for e in val]


def test_generated_landmarks_map_into_model_space(tmp_path: Path) -> None:
    manifest = make_landmark_cohort(tmp_path / "lm", n=3, n_val=1)
    config = config_from_dict(
        {
            "task": "landmark_heatmap",
            "output_dir": str(tmp_path / "run"),
            "data": {
                "format": "manifest",
                "dir": str(manifest.parent),
                "manifest": manifest.name,
                "split_column": "split",
                "landmark_columns": ["x1", "y1", "x2", "y2", "x3", "y3"],
                "lax": {"spacing": [2.0, 2.0], "patch_size": [32, 32]},
            },
            "model": {"name": "unet", "views": "lax_4c"},
        }
    )
    train, val = build_datasets(config)
    sample = val[0]
    image = sample["image"]["lax_4c"][0].numpy()
    with open(manifest) as f:
        row = list(csv.DictReader(f))[-1]
    # 1 mm -> 2 mm (voxel k of the model grid is native voxel 2k + 0.5): the brightest blob is landmark 1
    point = sample["points"]["lax_4c"][0].numpy()
    assert np.allclose(point, [(float(row["x1"]) - 0.5) / 2, (float(row["y1"]) - 0.5) / 2])
    # intensity-weighted centroid of the blob around the point (percentile clipping flattens its top)
    x0, y0 = np.round(point).astype(int)
    window = image[x0 - 3 : x0 + 4, y0 - 3 : y0 + 4]
    weights = np.clip(window - 0.3, 0, None)
    offsets = np.arange(-3, 4)
    centroid = np.array([(weights.sum(1) * offsets).sum(), (weights.sum(0) * offsets).sum()]) / weights.sum()
    assert np.abs(centroid + [x0, y0] - point).max() < 0.5


def test_mnms_style_folders(tmp_path: Path) -> None:
    """M&Ms layout: <id>/<id>_sa.nii.gz cine + <id>_sa_gt.nii.gz labelled at ED/ES, an information CSV."""
    rng = np.random.default_rng(0)
    rows = []
    for i, code in enumerate(["A0S9V9", "B1C2D3", "Z9Y8X7"]):
        folder = tmp_path / "mnms" / code
        folder.mkdir(parents=True)
        cine = rng.uniform(0, 100, (24, 24, 4, 6))
        labels = np.zeros(cine.shape, dtype=np.uint8)
        ed, es = 0, 3
        for frame in (ed, es):
            labels[8:16, 8:16, :, frame] = 1  # M&Ms codes: 1 LV, 2 MYO, 3 RV
            labels[4:6, 4:20, :, frame] = 3
        _save(cine, folder / f"{code}_sa.nii.gz", spacing=(6.0, 6.0, 10.0))
        nib.save(nib.Nifti1Image(labels, np.diag([6.0, 6.0, 10.0, 1.0])), str(folder / f"{code}_sa_gt.nii.gz"))
        rows.append(
            {"External code": code, "ED": ed, "ES": es, "VendorName": "X", "split": "val" if i == 2 else "train"}
        )
    _write_manifest(tmp_path / "mnms" / "info.csv", rows)
    values = acdc_config(tmp_path / "mnms", tmp_path, split_column="split")
    values["data"].update({"format": "mnms", "manifest": "info.csv"})
    values["data"]["sax"]["patch_size"] = [32, 32, 4]
    train, val = build_datasets(config_from_dict(values))
    assert train.subject_ids == ["A0S9V9", "B1C2D3"] and val.subject_ids == ["Z9Y8X7"]
    assert train.subjects[0].frames == [0, 3]
    labels = train.subjects[0].labels["sax"]
    assert set(np.unique(labels)) == {0, 1, 3}  # remapped to CineMA codes: M&Ms LV 1 -> 3, RV 3 -> 1
    assert (labels == 3).sum() > (labels == 1).sum()  # the 8 x 8 LV square is larger than the 2 x 16 RV strip


def test_segmentation_needs_labels(acdc_dir: Path, tmp_path: Path) -> None:
    root = copy_acdc(acdc_dir, tmp_path, ["patient001", "patient002"])
    for label in (root / "patient002").glob("*_gt.nii.gz"):
        label.unlink()
    config = config_from_dict(acdc_config(root, tmp_path))
    with pytest.raises(ValueError, match=r"patient002: no sax label maps; segmentation needs labelled frames"):
        build_datasets(config)


def test_labels_outside_the_class_list(acdc_dir: Path, tmp_path: Path) -> None:
    root = copy_acdc(acdc_dir, tmp_path, ["patient001"])
    path = next((root / "patient001").glob("*frame01_gt.nii.gz"))
    label = nib.load(str(path))
    data = np.asarray(label.dataobj).copy()
    data[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(data, label.affine, label.header), str(path))
    config = config_from_dict(acdc_config(root, tmp_path))
    with pytest.raises(ValueError, match=r"patient001: sax labels of frame \d+ hold \[7\], outside the 4 classes"):
        build_datasets(config)
    # three classes declared: the MYO/LV codes of real labels are rejected too
    config = config_from_dict(acdc_config(root, tmp_path), ["model.out_chans=3"])
    with pytest.raises(ValueError, match="outside the 3 classes"):
        build_datasets(config)


def test_label_geometry_must_match_the_image(acdc_dir: Path, tmp_path: Path) -> None:
    root = copy_acdc(acdc_dir, tmp_path, ["patient001"])
    path = next((root / "patient001").glob("*frame01_gt.nii.gz"))
    label = nib.load(str(path))
    data = np.asarray(label.dataobj)
    nib.save(nib.Nifti1Image(data[:-2], label.affine), str(path))
    with pytest.raises(ValueError, match=r"frame01_gt\.nii\.gz: label shape .* does not match image shape"):
        build_datasets(config_from_dict(acdc_config(root, tmp_path)))
    # same shape, another grid (shifted by 5 mm): caught too
    shifted = label.affine.copy()
    shifted[:3, 3] += 5.0
    nib.save(nib.Nifti1Image(data, shifted), str(path))
    with pytest.raises(ValueError, match=r"frame01_gt\.nii\.gz: label geometry differs from the image's"):
        build_datasets(config_from_dict(acdc_config(root, tmp_path)))


def test_classification_targets_are_checked(tmp_path: Path) -> None:
    manifest = make_survival_cohort(tmp_path / "s", n=4, n_val=1)
    values = {
        "task": "classification",
        "output_dir": str(tmp_path / "run"),
        "data": {
            "format": "manifest",
            "dir": str(manifest.parent),
            "manifest": manifest.name,
            "split_column": "split",
            "class_column": "event",
            "classes": ["0", "2"],
            "lax": {"spacing": [1.0, 1.0], "patch_size": [32, 32]},
        },
        "model": {"name": "convvit", "views": "lax_4c"},
    }
    with pytest.raises(ValueError, match=r"manifest\.csv:\d+: class '1' of column 'event' is not in data\.classes"):
        build_datasets(config_from_dict(values))
    values["data"]["class_column"] = "outcome"
    with pytest.raises(ValueError, match="no value in class column 'outcome'"):
        build_datasets(config_from_dict(values))


def test_missing_data_folder(tmp_path: Path) -> None:
    config = config_from_dict(acdc_config(tmp_path / "nowhere", tmp_path))
    with pytest.raises(FileNotFoundError, match="config key 'data.dir'"):
        build_datasets(config)


# ---------------------------------------------------------------------------------------------------------------------
# Tiny end-to-end configs shared by the trainer tests
# ---------------------------------------------------------------------------------------------------------------------

TINY_VIT = {"size": "tiny", "enc_conv_chans": [4, 8], "enc_conv_n_blocks": 1}
TINY_UNETR = {**TINY_VIT, "dec_chans": [4, 4, 8, 8, 16]}
ACDC_CLASSES = ["DCM", "HCM", "MINF", "NOR", "RV"]
LANDMARK_COLUMNS = ["x1", "y1", "x2", "y2", "x3", "y3"]


def tiny_config(task: str, model: str, data: dict, tmp_path: Path, **train) -> dict:
    """A config that trains in seconds on the CPU: tiny transformer, few channels, small patches, fp32."""
    sections = {"convunetr": TINY_UNETR, "convvit": TINY_VIT, "unet": {"chans": [8, 16, 32]}}
    sections["resnet"] = {"depth": 10, "layer_inplanes": [4, 8, 8, 16]}
    view = "lax_4c" if "lax" in data else "sax"
    return {
        "task": task,
        "output_dir": str(tmp_path / f"run_{task}_{model}"),
        "data": data,
        "model": {"name": model, "views": view, model: sections[model]},
        "train": {
            "n_epochs": 2,
            "n_warmup_epochs": 0,
            "lr": 3e-3,
            "batch_size": 4,
            "batch_size_per_device": 4,
            "amp": False,
            "progress_bar": False,
            **train,
        },
    }


def acdc_data(acdc_dir: Path, n: int, **extra) -> dict:
    return {
        "format": "acdc",
        "dir": str(acdc_dir),
        "max_subjects": n,
        "sax": {"spacing": [6.0, 6.0, 10.0], "patch_size": [32, 32, 8]},
        **extra,
    }


def landmark_data(manifest: Path) -> dict:
    return {
        "format": "manifest",
        "dir": str(manifest.parent),
        "manifest": manifest.name,
        "split_column": "split",
        "landmark_columns": LANDMARK_COLUMNS,
        "lax": {"spacing": [2.0, 2.0], "patch_size": [32, 32]},
    }


def survival_data(manifest: Path) -> dict:
    return {
        "format": "manifest",
        "dir": str(manifest.parent),
        "manifest": manifest.name,
        "split_column": "split",
        "time_column": "time",
        "event_column": "event",
        "lax": {"spacing": [1.0, 1.0], "patch_size": [32, 32]},
    }
