"""Layer-wise lr decay groups (reference §4.1), the warm-up + cosine schedule and early stopping."""

from __future__ import annotations

import math

import pytest
import torch

from cinema.models.checkpoint import build_model
from cinema.train.optim import EarlyStopping, layer_id, lr_at, param_groups


def tiny_convvit(depth_size: str = "tiny") -> torch.nn.Module:
    return build_model(
        {
            "task": "classification",
            "data": {"sax": {"patch_size": [32, 32, 2], "in_chans": 1}, "class_column": "c", "c": ["a", "b"]},
            "model": {
                "name": "convvit",
                "views": "sax",
                "n_frames": 2,
                "convvit": {"size": depth_size, "enc_conv_chans": [4, 8], "enc_conv_n_blocks": 1},
            },
        }
    )


def test_layer_ids_follow_the_reference() -> None:
    n = 12  # base: 12 blocks
    assert layer_id("enc_down_dict.sax.conv_blocks.0.patch_embed.conv.weight", n) == 0
    assert layer_id("enc_fusion_dict.sax.down_convs.1.weight", n) == 0
    assert layer_id("encoder.cls_token", n) == 0
    assert layer_id("encoder.blocks.0.attn.q.weight", n) == 1
    assert layer_id("encoder.blocks.11.mlp.fc2.bias", n) == 12
    assert layer_id("encoder.norm.weight", n) == 13
    assert layer_id("pred_head_dict.cls.weight", n) == 13
    assert layer_id("dec_conv_blocks_dict.sax.0.conv1.weight", n) == 13


def test_decay_groups_on_a_real_model() -> None:
    model = tiny_convvit()
    n_blocks = len(model.encoder.blocks)
    groups = param_groups(model, weight_decay=0.05, layer_decay=0.75)
    by_name = {name: g for g in groups for name in g["param_names"]}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(by_name) == trainable  # every trainable parameter exactly once
    assert sum(len(g["params"]) for g in groups) == len(trainable)
    top = n_blocks + 1
    stem = by_name["enc_down_dict.sax.conv_blocks.0.patch_embed.conv.weight"]
    assert stem["lr_scale"] == pytest.approx(0.75**top) and stem["weight_decay"] == 0.05
    assert by_name["encoder.cls_token"]["lr_scale"] == pytest.approx(0.75**top)
    assert by_name["encoder.cls_token"]["weight_decay"] == 0.05  # the cls token is decayed, as in the reference
    last = by_name[f"encoder.blocks.{n_blocks - 1}.attn.q.weight"]
    assert last["lr_scale"] == pytest.approx(0.75) and last["weight_decay"] == 0.05
    bias = by_name[f"encoder.blocks.{n_blocks - 1}.attn.q.bias"]
    assert bias["lr_scale"] == pytest.approx(0.75) and bias["weight_decay"] == 0.0  # 1-D: no weight decay
    head = by_name["pred_head_dict.cls.weight"]
    assert head["lr_scale"] == 1.0 and head["weight_decay"] == 0.05
    assert by_name["encoder.norm.weight"]["lr_scale"] == 1.0 and by_name["encoder.norm.weight"]["weight_decay"] == 0.0
    # base size: the stem's scale is 0.75 ** 13 ~ 0.024 as the reference notes
    assert 0.75**13 == pytest.approx(0.0238, abs=1e-4)


def test_frozen_parameters_and_no_layer_decay() -> None:
    model = tiny_convvit()
    for name, param in model.named_parameters():
        if name.startswith("enc_"):
            param.requires_grad_(False)
    groups = param_groups(model, weight_decay=0.05, layer_decay=None)
    names = [n for g in groups for n in g["param_names"]]
    assert names and not any(n.startswith("enc_") for n in names)
    assert {g["lr_scale"] for g in groups} == {1.0}
    for param in model.parameters():
        param.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        param_groups(model, 0.05, 0.75)


def test_lr_schedule() -> None:
    assert lr_at(0.0, 1e-3, 1e-5, 10, 100) == 0.0
    assert lr_at(5.0, 1e-3, 1e-5, 10, 100) == pytest.approx(5e-4)
    assert lr_at(10.0, 1e-3, 1e-5, 10, 100) == pytest.approx(1e-3)
    assert lr_at(55.0, 1e-3, 1e-5, 10, 100) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5)
    assert lr_at(100.0, 1e-3, 1e-5, 10, 100) == pytest.approx(1e-5)
    values = [lr_at(e / 10, 1e-3, 1e-5, 10, 100) for e in range(100, 1000)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))  # monotone after warm-up
    assert lr_at(3.0, 1e-3, 1e-5, 0, 10) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * 0.3)))


def test_early_stopping() -> None:
    stop = EarlyStopping(mode="max", patience=2, min_delta=0.01)
    stop.update(0.5, 1)
    assert stop.improved and stop.count == 0
    stop.update(0.505, 2)  # better, but by less than min_delta: saved, yet patience runs
    assert stop.improved and stop.best == 0.505 and stop.count == 1 and not stop.should_stop
    stop.update(0.40, 3)
    assert not stop.improved and stop.should_stop and stop.best_epoch == 2
    low = EarlyStopping(mode="min", patience=1, min_delta=0.0)
    low.update(3.0, 1)
    low.update(float("nan"), 2)
    assert low.should_stop and low.best == 3.0
    restored = EarlyStopping(mode="min", patience=1)
    restored.load_state_dict(low.state_dict())
    assert restored.should_stop
    with pytest.raises(ValueError):
        EarlyStopping(mode="up")
