"""CineMA model family: shapes, parameter counts, bad input, checkpoint I/O, transfer learning, grad checkpointing."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from cinema.models.checkpoint import build_model, load_model, load_pretrained_encoder, save_model
from cinema.models.conv import ConvResBlock, depthwise_conv, set_grad_ckpt
from cinema.models.convunetr import ConvUNetR
from cinema.models.convvit import ConvViT
from cinema.models.mae import CineMA, random_token_mask
from cinema.models.pos_embed import interpolate_pos_embed, sincos_pos_embed
from cinema.models.vit import patchify, unpatchify

# Small but complete geometry: 16-voxel tokens, so a 32×32×2 SAX stack is 2×2×2 tokens and a 32×32 LAX image 2×2.
SMALL = {"sax": (32, 32, 2), "lax_2c": (32, 32), "lax_3c": (32, 32), "lax_4c": (32, 32)}
TINY_DEC = (4, 8, 8, 16, 16)


def _images(views: list[str], batch: int = 2, chans: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {v: torch.rand(batch, chans, *SMALL[v], generator=g) for v in views}


def _data(sax=(192, 192, 16), lax=(256, 256), in_chans=1) -> dict:
    return {
        "sax": {"patch_size": list(sax), "in_chans": in_chans},
        "lax": {"patch_size": list(lax), "in_chans": in_chans},
    }


def _n_params(config: dict, trainable: bool = False) -> int:
    with torch.device("meta"):
        model = build_model(config)
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)


# ------------------------------------------------------------------------------------------- sizes and parameters


@pytest.mark.parametrize(
    ("size", "expected"), [("tiny", 2_126_272), ("base", 125_670_400), ("large", 347_781_888), ("huge", 680_531_456)]
)
def test_mae_parameter_counts_match_reference(size: str, expected: int) -> None:
    assert _n_params({"data": _data(), "model": {"size": size}}) == expected


def test_base_parameter_counts_match_reference() -> None:
    mae = {"data": _data(), "model": {"size": "base"}}
    assert _n_params(mae, trainable=True) == 121_738_240  # the rest are the fixed position tables

    def seg(view: str, out: int) -> dict:
        return {
            "task": "segmentation",
            "data": _data(),
            "model": {"views": view, "out_chans": out, "convunetr": {"size": "base"}},
        }

    assert _n_params(seg("sax", 4)) == 127_390_694
    assert _n_params(seg("sax", 4), trainable=True) == 125_621_222
    assert _n_params(seg("lax_4c", 4)) == 102_167_462
    assert _n_params(seg("lax_4c", 3)) == 102_167_429  # landmark heatmaps

    def vit(view: str, frames: int, **data) -> dict:
        return {
            "data": {**_data(), **data},
            "model": {
                "name": "convvit",
                "views": view,
                "n_frames": frames,
                "out_chans": 6,
                "convvit": {"size": "base"},
            },
        }

    assert _n_params(vit("sax", 2, class_column="g", g=list("ABCDE"))) == 89_498_826
    assert _n_params(vit("sax", 2, regression_column="ef", ef={"mean": 27.7, "std": 10.8})) == 89_492_674
    assert _n_params(vit("lax_4c", 2)) == 87_889_100
    assert _n_params(vit("lax_4c", 1)) == 87_888_076


# ---------------------------------------------------------------------------------------------- building blocks


def test_position_table_xy_quirk_and_interpolation() -> None:
    table = sincos_pos_embed(12, (3, 3, 2))[0]  # 4 channels per axis: sin, sin, cos, cos
    idx = lambda i, j, k: (i * 3 + j) * 2 + k  # noqa: E731  row-major token order
    # chunk 0 follows the second (column) index, chunk 1 the first (row) index, chunk 2 the slice: 'xy' meshgrid
    assert table[idx(0, 2, 0), 0] == pytest.approx(math.sin(2.0))
    assert table[idx(2, 0, 0), 0] == 0.0
    assert table[idx(2, 0, 0), 4] == pytest.approx(math.sin(2.0))
    assert table[idx(0, 0, 1), 8] == pytest.approx(math.sin(1.0))
    assert torch.equal(interpolate_pos_embed(table[None], (3, 3, 2), (3, 3, 2))[0], table)
    assert interpolate_pos_embed(table[None], (3, 3, 2), (6, 6, 4)).shape == (1, 144, 12)
    assert sincos_pos_embed(512, (12, 12, 16))[0, :, -2:].abs().max() == 0  # 3×170 channels + 2 zero pads


def test_position_tables_equal_the_checkpoint_ones(golden_dir: Path) -> None:
    state = load_file(str(golden_dir / "mae_tiny" / "model.safetensors"))
    for key, value in state.items():
        if key.endswith("pos_embed"):
            grid = (12, 12, 16) if ".sax." in key else (16, 16)
            assert torch.equal(sincos_pos_embed(value.shape[-1], grid), value), key


def test_patchify_order_and_round_trip() -> None:
    image = torch.arange(2 * 3 * 4 * 2 * 2, dtype=torch.float32).reshape(2, 3, 4, 2, 2)
    patches = patchify(image, (2, 2, 1))  # grid 2×1×2
    assert patches.shape == (2, 4, 12)
    # token 1 = grid (0, 0, 1); its vector is ordered (px, py, pz, channel), channel fastest
    assert patches[0, 1, :3].tolist() == image[0, :, 0, 0, 1].tolist()
    assert patches[0, 1, 3:6].tolist() == image[0, :, 0, 1, 1].tolist()
    assert torch.equal(unpatchify(patches, (2, 2, 1), (2, 1, 2)), image)
    with pytest.raises(ValueError, match="not divisible"):
        patchify(image, (3, 2, 1))


def test_conv_res_block_shortcut_only_when_channels_change() -> None:
    assert "shortcut.weight" in ConvResBlock(1, 8, 3).state_dict()
    assert "shortcut.weight" not in ConvResBlock(8, 8, 2).state_dict()
    assert not ConvResBlock(8, 8, 2, norm="instance").norm1.state_dict()  # instance norm without affine
    with pytest.raises(ValueError, match="norm"):
        ConvResBlock(8, 8, 2, norm="batch")


# ------------------------------------------------------------------------------------------------ forward passes


def test_mae_random_masking_shapes_and_loss() -> None:
    torch.manual_seed(0)
    views = ["sax", "lax_2c", "lax_3c", "lax_4c"]
    model = CineMA({v: SMALL[v] for v in views}, size="tiny").eval()
    images = _images(views)
    with torch.no_grad():
        loss, pred, masks, metrics = model(images, mask_ratio=0.5)
        feats = model.feature_forward(images)
    for view in views:
        n = 8 if view == "sax" else 4
        assert masks[view].shape == (2, n) and masks[view].dtype == torch.bool
        assert (masks[view].sum(1) == n - int(n * 0.5)).all()
        assert pred[view].shape == (2, n - int(n * 0.5), 256)
        assert feats[view].shape == (2, n, 16)
        # the loss of a view is the MSE between its predictions and the masked target patches
        target = model.patchify(images[view], view)[masks[view]].view(pred[view].shape)
        assert metrics[f"{view}_mse_loss"] == pytest.approx(((pred[view] - target) ** 2).mean().item(), rel=1e-5)
    assert feats["cls"].shape == (2, 1, 16)
    assert loss.item() == pytest.approx(sum(metrics[f"{v}_mse_loss"].item() for v in views) / 4, rel=1e-5)
    # the view without masked tokens is skipped; masks are honoured as given
    given = {"sax": torch.zeros(2, 8, dtype=torch.bool), "lax_4c": torch.tensor([[1, 0, 1, 0], [0, 1, 1, 0]]).bool()}
    with torch.no_grad():
        loss, pred, masks, metrics = model({v: images[v] for v in given}, masks=given)
    assert torch.equal(masks["lax_4c"], given["lax_4c"]) and pred["sax"].shape == (2, 0, 256)
    assert torch.isnan(metrics["sax_mse_loss"]) and loss.item() == pytest.approx(metrics["lax_4c_mse_loss"].item())


def test_mae_reconstruct_and_random_mask() -> None:
    model = CineMA({"lax_4c": SMALL["lax_4c"]}, size="tiny")
    image = _images(["lax_4c"], batch=1)["lax_4c"]
    mask = random_token_mask(1, 4, 0.75)
    assert mask.sum() == 3
    truth = model.patchify(image, "lax_4c")[mask].view(1, 3, 256)
    assert torch.equal(model.reconstruct(image, truth, mask, "lax_4c"), image)
    with pytest.raises(ValueError, match="mask_ratio"):
        random_token_mask(1, 4, 1.5)


def test_convunetr_and_convvit_shapes_multi_view_and_other_grid() -> None:
    seg = ConvUNetR({"sax": SMALL["sax"], "lax_4c": SMALL["lax_4c"]}, out_chans=3, size="tiny", dec_chans=TINY_DEC)
    seg.eval()
    with torch.no_grad():
        out = seg(_images(["sax", "lax_4c"]))
        assert out["sax"].shape == (2, 3, 32, 32, 2) and out["lax_4c"].shape == (2, 3, 32, 32)
        # another in-plane size than configured: positions are interpolated
        assert seg({"lax_4c": torch.rand(1, 1, 64, 32)})["lax_4c"].shape == (1, 3, 64, 32)
        with pytest.raises(
            ValueError, match=r"lax_4c: spatial size \(64, 48\) is not divisible by the model's coarsest"
        ):
            seg({"lax_4c": torch.rand(1, 1, 64, 48)})
    clf = ConvViT({"sax": SMALL["sax"]}, out_chans=5, n_frames=2, size="tiny").eval()
    images = _images(["sax"], chans=2)
    with torch.no_grad():
        logits = {r: clf(images, reduce=r) for r in ("all", "cls", "patch")}
    assert all(v.shape == (2, 5) for v in logits.values())
    # "all" averages the view head and the cls head
    assert torch.allclose(logits["all"], (logits["cls"] + logits["patch"]) / 2, atol=1e-6)


@pytest.mark.parametrize(
    ("images", "match"),
    [
        ({"lax_2c": torch.rand(1, 1, 32, 32)}, "view 'lax_2c' is not one of"),
        ({"sax": torch.rand(1, 3, 32, 32, 2)}, "expected 2 input channel"),
        ({"sax": torch.rand(1, 2, 40, 32, 2)}, "not divisible by the token size"),
        ({"sax": torch.rand(1, 2, 32, 32)}, "spatial dims"),
        ({}, "non-empty dict"),
    ],
)
def test_bad_input_is_a_clear_value_error(images: dict, match: str) -> None:
    model = ConvViT({"sax": SMALL["sax"]}, out_chans=2, n_frames=2, size="tiny")
    with pytest.raises(ValueError, match=match):
        model(images)


def test_bad_batch_masks_and_reduce() -> None:
    mae = CineMA({"sax": SMALL["sax"], "lax_4c": SMALL["lax_4c"]}, size="tiny")
    images = {"sax": torch.rand(2, 1, 32, 32, 2), "lax_4c": torch.rand(1, 1, 32, 32)}
    with pytest.raises(ValueError, match="batch size"):
        mae.feature_forward(images)
    images["lax_4c"] = torch.rand(2, 1, 32, 32)
    with pytest.raises(ValueError, match="mask must have shape"):
        mae(images, masks={"sax": torch.zeros(2, 5, dtype=torch.bool)})
    with pytest.raises(ValueError, match="without an image"):
        mae(images, masks={"lax_2c": torch.zeros(2, 4, dtype=torch.bool)})
    with pytest.raises(ValueError, match="same number of tokens"):
        mae(images, masks={"lax_4c": torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0]]).bool()})
    with pytest.raises(ValueError, match="reduce"):
        ConvViT({"lax_4c": (32, 32)}, out_chans=2, size="tiny")({"lax_4c": torch.rand(1, 1, 32, 32)}, reduce="max")
    with pytest.raises(ValueError, match="size"):
        ConvViT({"lax_4c": (32, 32)}, out_chans=2, size="giant")


# --------------------------------------------------------------------------------------------- checkpoint I/O


def _tiny_classifier_config() -> dict:
    return {
        "grad_ckpt": False,
        "task": "classification",
        "data": {**_data((32, 32, 2), (32, 32)), "class_column": "pathology", "pathology": ["DCM", "HCM", "NOR"]},
        "model": {"name": "convvit", "views": "sax", "n_frames": 2, "out_chans": None, "convvit": {"size": "tiny"}},
        "some_unknown_field": {"kept": True},
    }


def test_save_load_round_trip(tmp_path: Path) -> None:
    model = build_model(_tiny_classifier_config()).eval()
    folder = save_model(model, tmp_path / "clf")
    assert sorted(p.name for p in folder.iterdir()) == ["config.yaml", "model.safetensors"]
    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert config["data"]["pathology"] == ["DCM", "HCM", "NOR"] and config["some_unknown_field"] == {"kept": True}
    loaded = load_model(folder)
    assert not loaded.training and isinstance(loaded, ConvViT)
    images = _images(["sax"], chans=2)
    with torch.no_grad():
        assert torch.equal(model(images), loaded(images))
    # the same through a config dict + explicit weights, and through the YAML path
    assert isinstance(load_model(config, folder / "model.safetensors"), ConvViT)
    assert isinstance(load_model(folder / "config.yaml"), ConvViT)
    # LAX views of different sizes are written per view and come back as they were
    mixed = CineMA({"lax_2c": (32, 32), "lax_4c": (64, 32)}, in_chans={"lax_2c": 1, "lax_4c": 2}, size="tiny")
    back = load_model(save_model(mixed, tmp_path / "mixed"))
    assert back.views == ["lax_2c", "lax_4c"] and back.enc_down_dict["lax_4c"].image_size == (64, 32)
    assert back.enc_down_dict["lax_4c"].in_chans == 2
    # saving a rebuilt MAE / ConvUNetR keeps their kind
    for m in (CineMA({v: SMALL[v] for v in SMALL}, size="tiny"), ConvUNetR({"lax_4c": (32, 32)}, 2, size="tiny")):
        assert type(load_model(save_model(m, tmp_path / type(m).__name__))) is type(m)


def test_config_errors_name_the_problem(tmp_path: Path) -> None:
    config = _tiny_classifier_config()
    del config["model"]["convvit"]["size"]
    with pytest.raises(ValueError, match="'model.convvit.size'"):
        build_model(config)
    config = _tiny_classifier_config()
    config["data"]["pathology"] = None
    with pytest.raises(ValueError, match="'data.pathology'"):
        build_model(config)
    with pytest.raises(ValueError, match="model.name"):
        build_model({"model": {"name": "transformer"}})
    with pytest.raises(ValueError, match="unknown view"):
        build_model(
            {**_tiny_classifier_config(), "model": {"name": "convvit", "views": "lax", "convvit": {"size": "tiny"}}}
        )
    (tmp_path / "config.yaml").write_text("model: [unclosed")
    with pytest.raises(ValueError, match="config.yaml"):
        load_model(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing")


def test_strict_load_lists_mismatched_keys(tmp_path: Path) -> None:
    folder = save_model(build_model(_tiny_classifier_config()), tmp_path / "clf")
    state = load_file(str(folder / "model.safetensors"))
    state.pop("encoder.norm.bias")
    state["extra.weight"] = torch.zeros(1)
    state["pred_head_dict.cls.bias"] = torch.zeros(7)
    save_file(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="bad.safetensors") as err:
        load_model(folder, tmp_path / "bad.safetensors")
    message = str(err.value)
    assert "encoder.norm.bias" in message and "extra.weight" in message and "pred_head_dict.cls.bias (7,)" in message
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.safetensors: not a readable safetensors file"):
        load_model(folder, tmp_path / "empty.safetensors")
    save_file(state, str(tmp_path / "clf" / "other.safetensors"))
    (tmp_path / "clf" / "model.safetensors").unlink()
    (tmp_path / "clf" / "third.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="several weight files"):
        load_model(tmp_path / "clf")


# ------------------------------------------------------------------------------------------- transfer learning


def test_pretrained_encoder_transfer_repeats_first_conv(tmp_path: Path) -> None:
    mae = CineMA({v: SMALL[v] for v in SMALL}, size="tiny")
    mae_folder = save_model(mae, tmp_path / "mae")
    clf = ConvViT({"sax": SMALL["sax"]}, out_chans=3, n_frames=2, size="tiny")
    head_before = clf.pred_head_dict["cls"].weight.clone()
    load_pretrained_encoder(clf, mae_folder, freeze=True)
    src = mae.enc_down_dict["sax"].conv_blocks[0].patch_embed.conv.weight
    dst = clf.enc_down_dict["sax"].conv_blocks[0].patch_embed.conv.weight
    assert torch.equal(dst, torch.cat([src, src], dim=1))  # repeated over the 2 frames, not averaged
    assert torch.equal(clf.encoder.blocks[0].attn.kv.weight, mae.encoder.blocks[0].attn.kv.weight)
    assert torch.equal(clf.enc_fusion_dict["sax"].norm.weight, mae.enc_fusion_dict["sax"].norm.weight)
    assert torch.equal(clf.pred_head_dict["cls"].weight, head_before)  # heads are not loaded
    assert not dst.requires_grad and clf.pred_head_dict["cls"].weight.requires_grad

    seg = ConvUNetR({"lax_4c": SMALL["lax_4c"]}, out_chans=2, size="tiny", dec_chans=TINY_DEC)
    load_pretrained_encoder(seg, mae.state_dict())
    assert torch.equal(seg.enc_down_dict["lax_4c"].linear.weight, mae.enc_down_dict["lax_4c"].linear.weight)
    # the position table is recomputed for the target, which here is the same formula as the MAE's
    assert torch.equal(seg.enc_down_dict["lax_4c"].pos_embed, mae.enc_down_dict["lax_4c"].pos_embed)

    lax_only = CineMA({"lax_4c": SMALL["lax_4c"]}, size="tiny")
    with pytest.raises(ValueError, match="no stem for view 'sax'"):
        load_pretrained_encoder(ConvViT({"sax": SMALL["sax"]}, 3, size="tiny"), lax_only)
    with pytest.raises(ValueError, match="wrongly shaped"):
        big = ConvViT({"lax_4c": SMALL["lax_4c"]}, 3, size="tiny", enc_conv_chans=(32, 128))
        load_pretrained_encoder(big, mae)


# --------------------------------------------------------------------------------------- speed-related options


def test_grad_checkpointing_gives_identical_gradients() -> None:
    images = _images(["lax_4c", "sax"], batch=2)
    target = {v: torch.rand(2, 2, *SMALL[v], generator=torch.Generator().manual_seed(1)) for v in images}

    def grads(ckpt: bool) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = ConvUNetR(
            {"sax": SMALL["sax"], "lax_4c": SMALL["lax_4c"]},
            2,
            size="tiny",
            dec_chans=TINY_DEC,
            dropout=0.1,
            drop_path=0.1,
        )
        set_grad_ckpt(model, ckpt)
        model.train()
        torch.manual_seed(1)  # same dropout / drop-path draws in both runs; checkpointing replays them
        out = model(images)
        sum(((out[v] - target[v]) ** 2).mean() for v in out).backward()
        return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    plain, ckpt = grads(False), grads(True)
    assert plain.keys() == ckpt.keys() and len(plain) > 100
    for name in plain:
        assert torch.allclose(plain[name], ckpt[name], atol=1e-6, rtol=1e-5), name


def test_bf16_autocast_runs_and_stays_close() -> None:
    torch.manual_seed(0)
    model = ConvViT({"lax_4c": SMALL["lax_4c"]}, out_chans=4, size="tiny").eval()
    images = _images(["lax_4c"])
    with torch.no_grad():
        fp32 = model(images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model(images)
    assert torch.isfinite(bf16).all()
    assert (bf16.float() - fp32).abs().max() < 0.05 * fp32.abs().max() + 0.05


@pytest.mark.parametrize("spatial", [(12, 10, 6), (12, 10)])
def test_fast_depthwise_backward_matches_autograd(spatial: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    conv = (torch.nn.Conv3d if len(spatial) == 3 else torch.nn.Conv2d)(6, 6, 5, padding="same", groups=6)
    x = torch.randn(2, 6, *spatial, requires_grad=True)
    weight_out = torch.randn(2, 6, *spatial)
    (conv(x) * weight_out).sum().backward()
    expected = [x.grad.clone(), conv.weight.grad.clone(), conv.bias.grad.clone()]
    x.grad = conv.weight.grad = conv.bias.grad = None
    out = depthwise_conv(x, conv)
    assert torch.allclose(out, conv(x), atol=1e-5)
    (out * weight_out).sum().backward()
    for got, want in zip([x.grad, conv.weight.grad, conv.bias.grad], expected, strict=True):
        assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # output follows the input dtype under autocast
        assert depthwise_conv(x.bfloat16(), conv).dtype == torch.bfloat16


def test_load_model_dispatches_to_the_cnn_baselines(tmp_path: Path) -> None:
    from cinema.models.resnet import ResNet, resnet_config
    from cinema.models.unet import UNet, unet_config

    image = torch.rand(1, 2, 32, 32)
    for config in (unet_config(view="lax_4c", in_chans=2, out_chans=3), resnet_config(view="lax_4c", depth=10)):
        model = build_model(config).eval()
        loaded = load_model(save_model(model, tmp_path / config["model"]["name"]))
        assert type(loaded) is type(model) and type(model) in (UNet, ResNet)
        # the weights survive bit for bit; the outputs only to rounding, since oneDNN may pick another kernel for
        # differently aligned buffers on some CPUs (seen on an AMD EPYC without AVX-512)
        for key, value in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key
        with torch.no_grad():
            torch.testing.assert_close(loaded(image), model(image), rtol=0, atol=1e-6)


def test_small_size_builds_and_transfers() -> None:
    # "small" is this project's CPU-sized transformer (not in the reference): 6 blocks of 192 channels, and its MAE
    # encoder loads into a ConvUNetR of the same size as any other size does.
    mae = CineMA({"sax": SMALL["sax"]}, size="small")
    assert len(mae.encoder.blocks) == 6 and mae.encoder.blocks[0].attn.kv.weight.shape[1] == 192
    seg = ConvUNetR({"sax": SMALL["sax"]}, out_chans=4, size="small", dec_chans=TINY_DEC)
    load_pretrained_encoder(seg, mae.state_dict())
    assert torch.equal(seg.encoder.blocks[5].mlp.fc2.weight, mae.encoder.blocks[5].mlp.fc2.weight)
    logits = seg({"sax": torch.rand(1, 1, *SMALL["sax"])})["sax"]
    assert logits.shape == (1, 4, *SMALL["sax"])
