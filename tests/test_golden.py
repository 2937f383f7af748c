"""Parity with the reference implementation: every model folder of the golden set must reproduce its outputs.

A golden folder holds an official-format model (config.yaml + model.safetensors) and expected.safetensors; the shared
inputs.safetensors sits next to the folders. Which calls to make is read off the expected keys (see golden/README.md),
so any folder of the same format (other weights, other batch size) is checked the same way.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cinema.models.checkpoint import build_model, load_model, model_kind, read_config

ATOL = 1e-4
_SHARED = Path(os.environ.get("CINEMA_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
_GOLDEN = Path(os.environ.get("CINEMA_GOLDEN_DIR", _SHARED / "golden"))
FOLDERS = sorted(p.name for p in _GOLDEN.glob("*/") if (p / "config.yaml").is_file()) if _GOLDEN.is_dir() else []


def _input_for(inputs: dict[str, torch.Tensor], view: str, n_chans: int) -> torch.Tensor:
    """The input tensor of ``view`` with ``n_chans`` channels (e.g. sax_2frames, lax_2c, lax_4c_1frame)."""
    found = [k for k in inputs if (k == view or k.startswith(f"{view}_")) and inputs[k].shape[1] == n_chans]
    assert len(found) == 1, f"no unique input for {view} with {n_chans} channel(s) among {sorted(inputs)}"
    return inputs[found[0]]


def _run(model: torch.nn.Module, kind: str, inputs: dict, expected: dict) -> dict[str, torch.Tensor]:
    images = {v: _input_for(inputs, v, model.enc_down_dict[v].in_chans) for v in model.views}
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        if kind == "mae":
            if any(k.startswith("features.") for k in expected):
                out.update({f"features.{k}": v for k, v in model.feature_forward(images).items()})
            if "loss" in expected or any(k.startswith("pred.") for k in expected):
                masks = {k.split(".", 1)[1]: v != 0 for k, v in expected.items() if k.startswith("mask.")}
                assert set(masks) == set(images), "expected.safetensors must hold a mask for every view"
                loss, pred, used, _ = model(images, masks=masks)
                out["loss"] = loss
                out.update({f"pred.{k}": v for k, v in pred.items()})
                out.update({f"mask.{k}": v.to(expected[f"mask.{k}"].dtype) for k, v in used.items()})
        elif kind == "convunetr":
            (view,) = model.views
            out["logits"] = model(images)[view]
        elif kind == "convvit":
            for key in expected:
                reduce = key.split(".", 1)[1]
                out[key] = model(images, reduce=reduce)
    return out


@pytest.mark.parametrize("folder", FOLDERS or [pytest.param("", marks=pytest.mark.skip(reason="no golden folders"))])
def test_golden_folder(golden_dir: Path, folder: str) -> None:
    path = golden_dir / folder
    model = load_model(path)
    assert not model.training
    kind = model_kind(read_config(path)[0])
    expected = load_file(str(path / "expected.safetensors"))
    inputs = load_file(str(golden_dir / "inputs.safetensors"))
    out = _run(model, kind, inputs, expected)
    assert set(out) == set(expected), f"keys produced {sorted(out)} vs expected {sorted(expected)}"
    for key, want in expected.items():
        got = out[key].reshape(want.shape) if key == "loss" else out[key]
        assert got.shape == want.shape, key
        assert torch.isfinite(got).all(), key
        err = (got.float() - want.float()).abs().max().item()
        assert err <= ATOL, f"{folder}/{key}: max abs error {err:.3g} > {ATOL}"


_DATA = {"sax": {"patch_size": [192, 192, 16], "in_chans": 1}, "lax": {"patch_size": [256, 256], "in_chans": 1}}
_BASE_CONFIGS = {
    "mae_base_4views": {"data": _DATA, "model": {"size": "base"}},
    "convunetr_base_sax_4cls": {
        "task": "segmentation",
        "data": _DATA,
        "model": {"views": "sax", "out_chans": 4, "convunetr": {"size": "base"}},
    },
    "convunetr_base_lax_4c_4cls": {
        "task": "segmentation",
        "data": _DATA,
        "model": {"views": "lax_4c", "out_chans": 4, "convunetr": {"size": "base"}},
    },
    "convvit_base_sax_2frames_5cls": {
        "data": {**_DATA, "class_column": "pathology", "pathology": ["DCM", "HCM", "MINF", "NOR", "RV"]},
        "model": {"name": "convvit", "views": "sax", "n_frames": 2, "convvit": {"size": "base"}},
    },
    "convvit_base_lax_4c_1frame_6out": {
        "data": _DATA,
        "model": {"name": "convvit", "views": "lax_4c", "n_frames": 1, "out_chans": 6, "convvit": {"size": "base"}},
    },
}


def test_base_state_dict_keys_and_shapes(golden_dir: Path) -> None:
    reference = json.loads((golden_dir / "base_state_dict_shapes.json").read_text())
    assert set(reference) == set(_BASE_CONFIGS)
    for name, config in _BASE_CONFIGS.items():
        with torch.device("meta"):  # no memory for the 90-127 M parameters
            model = build_model(config)
        shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
        assert list(shapes) == list(reference[name]), f"{name}: key order differs"
        assert shapes == reference[name], name


@pytest.mark.slow
@pytest.mark.parametrize("folder", FOLDERS or [pytest.param("", marks=pytest.mark.skip(reason="no golden folders"))])
def test_golden_folder_batch_of_two(golden_dir: Path, folder: str) -> None:
    """Batching must not mix samples: a batch of two copies gives the expected outputs for each sample."""
    path = golden_dir / folder
    model = load_model(path)
    kind = model_kind(read_config(path)[0])
    expected = load_file(str(path / "expected.safetensors"))
    inputs = {k: torch.cat([v, v]) for k, v in load_file(str(golden_dir / "inputs.safetensors")).items()}
    doubled = {k: v if k == "loss" else torch.cat([v, v]) for k, v in expected.items()}
    out = _run(model, kind, inputs, doubled)
    for key, want in doubled.items():
        got = out[key].reshape(want.shape) if key == "loss" else out[key]
        err = (got.float() - want.float()).abs().max().item()
        assert err <= ATOL, f"{folder}/{key} (batch of 2): max abs error {err:.3g} > {ATOL}"
