"""Weights shipped inside the package (package data), found without any download.

``sax_segmentation`` -> ``sax_segmentation_unet2d/``: the default short-axis segmentation model of
``cinema segment`` (config.yaml + model.safetensors, or an ensemble: ensemble.yaml naming member folders that each
hold config.yaml + model.safetensors; recipe.json with the exact training recipe, data split, device and validation
numbers; reproduce with ``scripts/train_default_segmentation.py`` and ``scripts/package_default_segmentation.py``).
``disease_classifier`` -> ``acdc_disease_classifier/``: ACDC group probabilities from segmentation features
(config.json + model.safetensors + recipe.json; reproduce with ``scripts/train_default_disease.py``).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["SHIPPED_WEIGHTS", "default_weights_dir"]

# name -> folder next to this file
SHIPPED_WEIGHTS = {"sax_segmentation": "sax_segmentation_unet2d", "disease_classifier": "acdc_disease_classifier"}


def default_weights_dir(name: str = "sax_segmentation") -> Path:
    """Folder of the shipped weights called ``name``; FileNotFoundError when the package was installed without them."""
    if name not in SHIPPED_WEIGHTS:
        raise ValueError(f"no shipped weights called {name!r}; available: {', '.join(sorted(SHIPPED_WEIGHTS))}")
    folder = Path(__file__).resolve().parent / SHIPPED_WEIGHTS[name]
    config = "config.json" if name == "disease_classifier" else "config.yaml"
    # a segmentation ensemble (ensemble.yaml) keeps each member in its own model folder
    members = sorted(folder.glob(f"*/{config}")) if (folder / "ensemble.yaml").is_file() else []
    model_folders = [m.parent for m in members] or [folder]
    if not all((f / config).is_file() and (f / "model.safetensors").is_file() for f in model_folders):
        raise FileNotFoundError(f"shipped weights {name!r} are missing from {folder} (reinstall the package)")
    return folder
