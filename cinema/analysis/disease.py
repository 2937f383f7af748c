"""Disease classification (ACDC groups DCM, HCM, MINF, NOR, RV) from an exam's ED and ES segmentations.

Why features rather than a fine-tuned image classifier: with 65 labelled training exams a network learns the
scanner, while the groups are *defined* by function and morphology (ACDC: DCM = dilated LV with EF < 40 %, HCM =
thick myocardium with normal EF, MINF = reduced EF with regional wall-motion loss, RV = dilated RV or RVEF < 40 %).
So the segmentation's volumes, EFs, mass, ratios and radial wall thickness / thickening feed a multinomial logistic
regression (L2, standardised features, size features log-scaled): a few hundred parameters that transfer to any
exam the segmentation works on. The shipped weights (``cinema/weights/acdc_disease_classifier``) record their
training data, split and validation numbers; ``scripts/train_default_disease.py`` reproduces them.

Features use no height or weight (most DICOM exams lack them) and no intensities.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import optimize

from cinema.io.errors import InputError
from cinema.metrics import ejection_fraction, lv_mass_g
from cinema.metrics.segmentation import class_volumes_ml, spacing_from

__all__ = [
    "ACDC_GROUPS",
    "FEATURE_NAMES",
    "DiseaseClassifier",
    "disease_features",
    "fit_disease_classifier",
    "load_disease_classifier",
    "save_disease_classifier",
    "wall_thickness_mm",
]

ACDC_GROUPS = ("DCM", "HCM", "MINF", "NOR", "RV")

# Positive size-like features are log-scaled before standardisation (their spread grows with their size).
_LOG_FEATURES = ("lv_edv_ml", "lv_esv_ml", "rv_edv_ml", "rv_esv_ml", "lv_mass_g", "wall_ed_mean_mm", "wall_ed_p95_mm")
FEATURE_NAMES = (
    "lv_edv_ml",
    "lv_esv_ml",
    "lv_ef_pct",
    "rv_edv_ml",
    "rv_esv_ml",
    "rv_ef_pct",
    "lv_mass_g",
    "rv_lv_edv_ratio",
    "mass_edv_ratio",
    "wall_ed_mean_mm",
    "wall_ed_p95_mm",
    "wall_ed_cv",
    "wall_thin_fraction",
    "wall_thickening_pct",
    "wall_thickening_cv",
)

# Radial thickness sampling: rays every 10 degrees from the LV centroid, 0.25 mm steps out to 120 mm.
_N_RAYS = 36
_STEP_MM = 0.25
_MAX_RADIUS_MM = 120.0


def wall_thickness_mm(labels: np.ndarray, spacing: Sequence[float] | np.ndarray) -> np.ndarray:
    """Radial myocardial thickness (mm) per (slice, ray) of a 3-D label map (1 RV, 2 MYO, 3 LV): (Z, 36), NaN where
    the slice has no closed-enough ring (LV cavity present and myocardium on at least 3/4 of the rays).

    Thickness along a ray is the myocardium it crosses from the LV centroid outwards (in mm, anisotropic in-plane
    spacing respected), the classical centreline-free radial method used for AHA-segment thickness.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"labels must be 3-D (X, Y, Z), got shape {labels.shape}")
    sx, sy = spacing_from(spacing, 3)[:2]
    angles = np.arange(_N_RAYS) * (2 * np.pi / _N_RAYS)
    radii = np.arange(0.0, _MAX_RADIUS_MM, _STEP_MM)
    dx = np.cos(angles)[:, None] * radii[None, :] / sx
    dy = np.sin(angles)[:, None] * radii[None, :] / sy
    out = np.full((labels.shape[2], _N_RAYS), np.nan)
    for z in range(labels.shape[2]):
        lv = labels[:, :, z] == 3
        if lv.sum() < 5:
            continue
        myo = labels[:, :, z] == 2
        cx, cy = np.argwhere(lv).mean(axis=0)
        ix = np.rint(cx + dx).astype(int)
        iy = np.rint(cy + dy).astype(int)
        inside = (ix >= 0) & (ix < lv.shape[0]) & (iy >= 0) & (iy < lv.shape[1])
        hits = np.zeros(ix.shape, dtype=bool)
        hits[inside] = myo[ix[inside], iy[inside]]
        thickness = hits.sum(axis=1) * _STEP_MM
        if (thickness > 0).mean() >= 0.75:
            out[z] = thickness
    return out


def _finite(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64).ravel()
    return values[np.isfinite(values)]


def disease_features(
    ed_labels: np.ndarray, es_labels: np.ndarray, spacing: Sequence[float] | np.ndarray
) -> dict[str, float]:
    """The classifier's features (`FEATURE_NAMES`) from ED and ES label maps (X, Y, Z) on their native grid.

    Wall features pool the rays of every slice that has a ring at both ED and ES: mean and 95th percentile of the ED
    thickness, its coefficient of variation, the fraction of rays thinner than half the exam's median (regional
    thinning, as after infarction), and systolic thickening (ES / ED - 1) with its spread across rays (regional
    wall-motion loss).
    """
    ed_labels, es_labels = np.asarray(ed_labels), np.asarray(es_labels)
    if ed_labels.shape != es_labels.shape:
        raise ValueError(f"ED labels {ed_labels.shape} and ES labels {es_labels.shape} differ in shape")
    ed_volumes = class_volumes_ml(ed_labels, spacing)
    es_volumes = class_volumes_ml(es_labels, spacing)
    lv_edv, lv_esv = ed_volumes[3], es_volumes[3]
    rv_edv, rv_esv = ed_volumes[1], es_volumes[1]
    mass = float(lv_mass_g(ed_volumes[2]))
    wall_ed = wall_thickness_mm(ed_labels, spacing)
    wall_es = wall_thickness_mm(es_labels, spacing)
    both = np.isfinite(wall_ed).all(axis=1) & np.isfinite(wall_es).all(axis=1)
    ed_rays = _finite(wall_ed[both] if both.any() else wall_ed)
    features = {
        "lv_edv_ml": lv_edv,
        "lv_esv_ml": lv_esv,
        "lv_ef_pct": float(ejection_fraction(lv_edv, lv_esv)),
        "rv_edv_ml": rv_edv,
        "rv_esv_ml": rv_esv,
        "rv_ef_pct": float(ejection_fraction(rv_edv, rv_esv)),
        "lv_mass_g": mass,
        "rv_lv_edv_ratio": rv_edv / lv_edv if lv_edv > 0 else np.nan,
        "mass_edv_ratio": mass / lv_edv if lv_edv > 0 else np.nan,
        "wall_ed_mean_mm": float(ed_rays.mean()) if ed_rays.size else np.nan,
        "wall_ed_p95_mm": float(np.percentile(ed_rays, 95)) if ed_rays.size else np.nan,
        "wall_ed_cv": float(ed_rays.std() / ed_rays.mean()) if ed_rays.size and ed_rays.mean() > 0 else np.nan,
        "wall_thin_fraction": float((ed_rays < 0.5 * np.median(ed_rays)).mean()) if ed_rays.size else np.nan,
        "wall_thickening_pct": np.nan,
        "wall_thickening_cv": np.nan,
    }
    if both.any():
        ed_pairs, es_pairs = wall_ed[both].ravel(), wall_es[both].ravel()
        ok = ed_pairs > 0
        ratio = es_pairs[ok] / ed_pairs[ok] - 1.0
        if ratio.size:
            features["wall_thickening_pct"] = float(np.median(ratio) * 100.0)
            features["wall_thickening_cv"] = float(np.percentile(ratio, 75) - np.percentile(ratio, 25))
    return {name: float(features[name]) for name in FEATURE_NAMES}


@dataclass
class DiseaseClassifier:
    """Multinomial logistic regression over `FEATURE_NAMES`: standardise (log for sizes), then softmax(x W + b).

    Missing (NaN) features are imputed with the training mean, i.e. 0 after standardisation.
    """

    classes: tuple[str, ...]
    feature_names: tuple[str, ...]
    log_features: tuple[str, ...]
    mean: np.ndarray  # (F,)
    std: np.ndarray  # (F,)
    weight: np.ndarray  # (F, C)
    bias: np.ndarray  # (C,)

    def standardise(self, features: np.ndarray) -> np.ndarray:
        x = _transform(np.asarray(features, dtype=np.float64), self.feature_names, self.log_features)
        z = (x - self.mean) / self.std
        return np.where(np.isfinite(z), z, 0.0)

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """(N, F) feature rows in `feature_names` order -> (N, C) class probabilities."""
        return _softmax(self.standardise(np.atleast_2d(features)) @ self.weight + self.bias)

    def probabilities(self, features: Mapping[str, float]) -> dict[str, float]:
        """One exam's features (a `disease_features` dict) -> {class: probability}."""
        missing = [name for name in self.feature_names if name not in features]
        if missing:
            raise ValueError(f"disease features are missing {missing}")
        row = np.array([[features[name] for name in self.feature_names]], dtype=np.float64)
        return {c: float(p) for c, p in zip(self.classes, self.predict_proba(row)[0], strict=True)}


def _transform(x: np.ndarray, names: Sequence[str], log_features: Sequence[str]) -> np.ndarray:
    x = np.array(x, dtype=np.float64, copy=True)
    for i, name in enumerate(names):
        if name in log_features:
            with np.errstate(divide="ignore", invalid="ignore"):
                x[..., i] = np.log(np.maximum(x[..., i], 1e-3))
    return x


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def fit_disease_classifier(
    features: np.ndarray,
    labels: Sequence[str],
    *,
    classes: Sequence[str] = ACDC_GROUPS,
    l2: float = 1.0,
    feature_names: Sequence[str] = FEATURE_NAMES,
) -> DiseaseClassifier:
    """Fit by L-BFGS on the mean cross-entropy + ``l2`` / N x ||W||^2 (bias unpenalised); deterministic."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[1] != len(feature_names):
        raise ValueError(f"features must be (N, {len(feature_names)}), got {features.shape}")
    unknown = sorted(set(labels) - set(classes))
    if unknown:
        raise ValueError(f"labels {unknown} are not among the classes {list(classes)}")
    log_features = tuple(n for n in feature_names if n in _LOG_FEATURES)
    x = _transform(features, feature_names, log_features)
    mean = np.nanmean(x, axis=0)
    std = np.nanstd(x, axis=0)
    std = np.where(std > 1e-8, std, 1.0)
    n, f = x.shape
    c = len(classes)
    model = DiseaseClassifier(
        tuple(classes), tuple(feature_names), log_features, mean, std, np.zeros((f, c)), np.zeros(c)
    )
    z = model.standardise(features)
    y = np.array([list(classes).index(label) for label in labels])
    one_hot = np.eye(c)[y]

    def loss_and_grad(params: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = params[: f * c].reshape(f, c), params[f * c :]
        p = _softmax(z @ w + b)
        loss = -np.mean(np.sum(one_hot * np.log(p + 1e-12), axis=1)) + l2 / n * np.sum(w * w)
        g = (p - one_hot) / n
        return loss, np.concatenate([(z.T @ g + 2 * l2 / n * w).ravel(), g.sum(axis=0)])

    result = optimize.minimize(loss_and_grad, np.zeros(f * c + c), jac=True, method="L-BFGS-B")
    model.weight, model.bias = result.x[: f * c].reshape(f, c), result.x[f * c :]
    return model


def save_disease_classifier(model: DiseaseClassifier, folder: str | os.PathLike, recipe: Mapping | None = None) -> Path:
    """``config.json`` (classes, features) + ``model.safetensors`` (mean, std, weight, bias) [+ ``recipe.json``]."""
    from safetensors.numpy import save

    from cinema.io.atomic import write_bytes_atomic, write_text_atomic

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: np.ascontiguousarray(getattr(model, k), dtype=np.float64) for k in ("mean", "std", "weight", "bias")}
    write_bytes_atomic(folder / "model.safetensors", save(tensors))
    config = {
        "model": "multinomial logistic regression on segmentation features (cinema.analysis.disease)",
        "classes": list(model.classes),
        "feature_names": list(model.feature_names),
        "log_features": list(model.log_features),
    }
    write_text_atomic(folder / "config.json", json.dumps(config, indent=1) + "\n")
    if recipe is not None:
        write_text_atomic(folder / "recipe.json", json.dumps(recipe, indent=1) + "\n")
    return folder


def load_disease_classifier(folder: str | os.PathLike | None = None) -> DiseaseClassifier:
    """Load a classifier folder (default: the shipped ACDC classifier)."""
    from safetensors.numpy import load_file

    if folder is None:
        from cinema.weights import default_weights_dir

        folder = default_weights_dir("disease_classifier")
    folder = Path(folder)
    config_path, weights_path = folder / "config.json", folder / "model.safetensors"
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file (not a disease classifier folder)")
    config = json.loads(config_path.read_text())
    tensors = load_file(str(weights_path))
    names = tuple(config["feature_names"])
    unknown = sorted(set(names) - set(FEATURE_NAMES))
    if unknown:
        raise InputError(f"{config_path}: unknown features {unknown}")
    f, c = len(names), len(config["classes"])
    expected = {"mean": (f,), "std": (f,), "weight": (f, c), "bias": (c,)}
    for key, shape in expected.items():
        if key not in tensors or tuple(tensors[key].shape) != shape:
            got = None if key not in tensors else tuple(tensors[key].shape)
            raise InputError(f"{weights_path}: tensor {key!r} should have shape {shape}, got {got}")
    return DiseaseClassifier(
        tuple(config["classes"]),
        names,
        tuple(config["log_features"]),
        tensors["mean"],
        tensors["std"],
        tensors["weight"],
        tensors["bias"],
    )
