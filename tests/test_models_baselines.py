"""CNN baselines (UNet, ResNet): published sizes and key layout, shapes, bad input, config round trip, training."""

from __future__ import annotations

import copy

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from cinema.models.resnet import ResNet, resnet_config
from cinema.models.unet import COMPACT_2D_CHANS, UNet, unet_config

# The `model`/`data` parts of the reference's ACDC / M&Ms-2 segmentation and classification configs, as published.
SEG_CONFIG = {
    "task": "segmentation",
    "grad_ckpt": True,
    "data": {
        "name": "mnms2",
        "sax": {"spacing": [1.0, 1.0, 10.0], "patch_size": [192, 192, 16], "in_chans": 1},
        "lax": {"spacing": [1.0, 1.0], "patch_size": [256, 256], "in_chans": 1},
    },
    "model": {
        "name": "unet",
        "views": "sax",
        "out_chans": 4,
        "convunetr": {"size": "base", "dec_chans": [32, 64, 128, 256, 512]},
        "unet": {"chans": [32, 64, 128, 256, 512], "dropout": 0.1, "patch_size": [2, 2, 1], "scale_factor": [2, 2, 1]},
    },
}
CLS_CONFIG = {
    "task": "classification",
    "data": {
        "name": "acdc",
        "sax": {"spacing": [1.0, 1.0, 10.0], "patch_size": [192, 192, 16], "in_chans": 1},
        "class_column": "pathology",
        "pathology": ["DCM", "HCM", "MINF", "NOR", "RV"],
    },
    "model": {
        "name": "resnet",
        "views": "sax",
        "n_frames": 2,
        "out_chans": None,
        "resnet": {"depth": 50, "layer_inplanes": [64, 128, 256, 512]},
    },
}


def _with(config: dict, **changes: object) -> dict:
    """Deep copy of config with dotted-path changes, e.g. ``**{"model.views": "lax_4c"}``."""
    config = copy.deepcopy(config)
    for path, value in changes.items():
        *parents, leaf = path.split(".")
        node = config
        for key in parents:
            node = node[key]
        node[leaf] = value
    return config


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------------------------------
# Published sizes and state-dict layout (built on the meta device: no memory, no init cost)


@pytest.mark.parametrize(("view", "expected"), [("sax", 77_269_188), ("lax_4c", 26_691_204)])
def test_unet_parameter_count_matches_reference(view: str, expected: int) -> None:
    with torch.device("meta"):
        model = UNet.from_config(_with(SEG_CONFIG, **{"model.views": view}))
    assert model.n_dims == (3 if view == "sax" else 2)
    assert _n_params(model) == expected


def test_compact_2d_unet_size() -> None:
    with torch.device("meta"):
        model = UNet.from_config(unet_config(view="sax", n_dims=2, chans=COMPACT_2D_CHANS))
    assert model.n_dims == 2 and model.size_divisor == (16, 16)  # 192 × 192 SAX slices fit
    assert 5_000_000 < _n_params(model) < 8_000_000


def test_unet_state_dict_layout_matches_reference() -> None:
    with torch.device("meta"):
        model = UNet.from_config(SEG_CONFIG)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    # 1 input conv + 5 levels × 2 blocks × 2 convs (enc and dec) + 4 down + 4 up + unused decoder.in_conv + out_conv.
    assert len(shapes) == 2 * (1 + 40 + 4 + 4 + 1 + 1)
    assert shapes["encoder.in_conv.conv.weight"] == (32, 1, 3, 3, 3)
    assert shapes["encoder.blocks.0.conv.1.conv2.weight"] == (32, 32, 3, 3, 3)
    assert shapes["encoder.blocks.0.down.weight"] == (64, 32, 2, 2, 1)
    assert shapes["encoder.blocks.4.conv.0.conv1.weight"] == (512, 512, 3, 3, 3)
    assert "encoder.blocks.4.down.weight" not in shapes
    assert shapes["decoder.in_conv.conv.weight"] == (32, 512, 3, 3, 3)
    assert shapes["decoder.blocks.0.conv.0.conv1.weight"] == (512, 512, 3, 3, 3)
    assert shapes["decoder.blocks.0.up.weight"] == (512, 256, 2, 2, 1)  # ConvTranspose: (in, out, *k)
    assert shapes["decoder.blocks.3.up.weight"] == (64, 32, 2, 2, 1)
    assert "decoder.blocks.4.up.weight" not in shapes
    assert shapes["out_conv.weight"] == (4, 32, 1, 1, 1)


@pytest.mark.parametrize(("view", "n_classes", "expected"), [("sax", 5, 46_187_269), ("lax_4c", 6, 23_517_190)])
def test_resnet50_parameter_count_matches_reference(view: str, n_classes: int, expected: int) -> None:
    config = _with(
        CLS_CONFIG,
        **{"model.views": view, "data.lax": {"in_chans": 1}, "data.pathology": [f"c{i}" for i in range(n_classes)]},
    )
    with torch.device("meta"):
        model = ResNet.from_config(config)
    assert (model.n_dims, model.in_chans, model.out_chans) == ((3 if view == "sax" else 2), 2, n_classes)
    assert _n_params(model) == expected


def test_resnet_state_dict_layout_is_torchvision() -> None:
    with torch.device("meta"):
        model = ResNet.from_config(CLS_CONFIG)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert len(shapes) == 320  # as torchvision's resnet50
    assert shapes["conv1.weight"] == (64, 2, 7, 7, 7)
    assert shapes["bn1.running_var"] == (64,)
    assert shapes["layer1.0.conv1.weight"] == (64, 64, 1, 1, 1)
    assert shapes["layer1.0.downsample.0.weight"] == (256, 64, 1, 1, 1)
    assert shapes["layer2.0.conv2.weight"] == (128, 128, 3, 3, 3)
    assert shapes["layer3.5.bn3.num_batches_tracked"] == ()
    assert "layer3.6.conv1.weight" not in shapes
    assert shapes["layer4.2.conv3.weight"] == (2048, 512, 1, 1, 1)
    assert shapes["fc.weight"] == (5, 2048)


def test_resnet_output_size_from_config() -> None:
    regression = _with(CLS_CONFIG, **{"task": "regression", "data.class_column": None, "data.regression_column": "ef"})
    explicit = _with(CLS_CONFIG, **{"data.class_column": None, "model.out_chans": 3})
    with torch.device("meta"):
        assert ResNet.from_config(regression).out_chans == 1
        assert ResNet.from_config(explicit).out_chans == 3


# ---------------------------------------------------------------------------------------------------------------------
# Forward shapes, 2-D and 3-D, tensor and {view: tensor}


@pytest.mark.parametrize(
    ("n_dims", "shape", "patch_size"),
    [(2, (2, 3, 32, 48), (2, 2)), (3, (1, 3, 16, 8, 3), (2, 2, 1)), (3, (1, 3, 8, 8, 4), (2, 2, 2))],
)
def test_unet_forward_shapes(n_dims: int, shape: tuple[int, ...], patch_size: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = UNet(n_dims, in_chans=3, out_chans=5, chans=(4, 8, 8), patch_size=patch_size, scale_factor=patch_size)
    x = torch.rand(shape)
    logits = model(x)
    assert logits.shape == (shape[0], 5, *shape[2:])
    assert torch.isfinite(logits).all()
    model.eval()
    out = model({"lax_2c": x})
    assert list(out) == ["lax_2c"]
    torch.testing.assert_close(out["lax_2c"], model(x))


@pytest.mark.parametrize("depth", [18, 50])
@pytest.mark.parametrize(("n_dims", "shape"), [(2, (3, 2, 40, 24)), (3, (2, 2, 24, 16, 3))])
def test_resnet_forward_shapes(depth: int, n_dims: int, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = ResNet(n_dims, in_chans=2, out_chans=4, depth=depth, layer_inplanes=(4, 8, 8, 16))
    x = torch.rand(shape)
    logits = model(x)
    assert logits.shape == (shape[0], 4)
    model.eval()
    torch.testing.assert_close(model({"sax": x}), model(x))


# ---------------------------------------------------------------------------------------------------------------------
# Bad input


def test_unet_rejects_sizes_not_divisible_by_downsampling() -> None:
    model = UNet(3, 1, 4, chans=(4, 8, 8, 8))  # (2, 2, 1) three times: divisor (8, 8, 1)
    assert model.size_divisor == (8, 8, 1)
    model(torch.rand(1, 1, 16, 24, 5))  # any number of slices is fine
    with pytest.raises(ValueError, match=r"\(16, 20, 5\).*divisible.*\(8, 8, 1\)"):
        model(torch.rand(1, 1, 16, 20, 5))
    with pytest.raises(ValueError, match="divisible"):
        UNet(2, 1, 4, chans=(4, 8, 8))(torch.rand(1, 1, 30, 32))


def test_unet_and_resnet_reject_wrong_channels_dims_and_views() -> None:
    unet = UNet(2, 1, 4, chans=(4, 8))
    resnet = ResNet(3, 2, 5, depth=10, layer_inplanes=(4, 4, 4, 4))
    with pytest.raises(ValueError, match="1 input channels, got 2"):
        unet(torch.rand(1, 2, 16, 16))
    with pytest.raises(ValueError, match="2-D"):
        unet(torch.rand(1, 1, 16, 16, 2))
    with pytest.raises(ValueError, match="one view"):
        unet({"sax": torch.rand(1, 1, 16, 16), "lax_4c": torch.rand(1, 1, 16, 16)})
    with pytest.raises(ValueError, match="2 input channels"):
        resnet(torch.rand(1, 1, 16, 16, 4))
    with pytest.raises(ValueError, match="3-D"):
        resnet({"sax": torch.rand(1, 2, 16, 16)})


def test_bad_configs_name_the_problem() -> None:
    with pytest.raises(ValueError, match=r"model\.unet\.chans"):
        UNet.from_config(_with(SEG_CONFIG, **{"model.unet.chans": None}))
    with pytest.raises(ValueError, match=r"data\.sax"):
        UNet.from_config(_with(SEG_CONFIG, **{"data.sax": None}))
    with pytest.raises(ValueError, match="single view"):
        UNet.from_config(_with(SEG_CONFIG, **{"model.views": ["sax", "lax_4c"]}))
    with pytest.raises(ValueError, match=r"model\.out_chans"):
        UNet.from_config(_with(SEG_CONFIG, **{"model.out_chans": None}))
    with pytest.raises(ValueError, match=r"model\.resnet\.depth"):
        ResNet.from_config(_with(CLS_CONFIG, **{"model.resnet.depth": None}))
    with pytest.raises(ValueError, match="depth must be one of"):
        ResNet.from_config(_with(CLS_CONFIG, **{"model.resnet.depth": 42}))
    with pytest.raises(ValueError, match=r"data\.lax\.in_chans"):
        ResNet.from_config(_with(CLS_CONFIG, **{"model.views": "lax_4c", "data.lax": {}}))
    with pytest.raises(ValueError, match="pathology"):
        ResNet.from_config(_with(CLS_CONFIG, **{"data.pathology": []}))


# ---------------------------------------------------------------------------------------------------------------------
# Config round trip (what checkpoint save/load relies on)


@pytest.mark.parametrize(
    "config",
    [
        _with(SEG_CONFIG, **{"model.unet.chans": [4, 8, 8]}),
        _with(SEG_CONFIG, **{"model.views": "lax_4c", "model.unet.chans": [4, 8], "model.out_chans": 2}),
        unet_config(view="sax", n_dims=2, chans=(4, 8, 16), n_blocks=1, norm="layer", dropout=0.0),
    ],
)
def test_unet_config_round_trip(config: dict) -> None:
    torch.manual_seed(0)
    model = UNet.from_config(config).eval()
    assert model.config == config
    rebuilt = UNet.from_config(yaml.safe_load(yaml.safe_dump(model.config))).eval()
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    x = torch.rand(2, 1, *(16,) * model.n_dims)
    torch.testing.assert_close(rebuilt(x), model(x))


def test_models_built_from_arguments_carry_equivalent_configs() -> None:
    torch.manual_seed(0)
    unet = UNet(2, 2, 3, chans=(4, 8, 16), n_blocks=1, patch_size=(4, 4), scale_factor=2, norm="layer", view="sax")
    rebuilt = UNet.from_config(yaml.safe_load(yaml.safe_dump(unet.config)))
    assert (rebuilt.n_dims, rebuilt.in_chans, rebuilt.out_chans, rebuilt.size_divisor) == (2, 2, 3, (8, 8))
    rebuilt.load_state_dict(unet.state_dict(), strict=True)

    resnet = ResNet(2, 2, 6, depth=18, layer_inplanes=(4, 8, 8, 8), view="lax_4c")
    rebuilt = ResNet.from_config(yaml.safe_load(yaml.safe_dump(resnet.config)))
    assert (rebuilt.n_dims, rebuilt.in_chans, rebuilt.out_chans) == (2, 2, 6)
    rebuilt.load_state_dict(resnet.state_dict(), strict=True)

    # Frames multiply the image channels, as for the published 2-frame (ED, ES) baselines.
    config = resnet_config(view="sax", in_chans=1, n_frames=2, out_chans=5, depth=10, layer_inplanes=(4, 4, 8, 8))
    resnet = ResNet.from_config(config)
    assert (resnet.n_dims, resnet.in_chans, resnet.out_chans, resnet.config) == (3, 2, 5, config)


def test_save_and_load_model_round_trip(tmp_path) -> None:
    from cinema.models.checkpoint import load_model, save_model

    torch.manual_seed(0)
    unet = UNet.from_config(_with(SEG_CONFIG, **{"model.views": "lax_4c", "model.unet.chans": [4, 8]}))
    resnet = ResNet.from_config(_with(CLS_CONFIG, **{"model.resnet": {"depth": 10, "layer_inplanes": [4, 4, 8, 8]}}))
    resnet(torch.rand(2, 2, 16, 16, 4))  # a training step moves the BatchNorm running statistics off their init
    for model, x in [(unet, torch.rand(1, 1, 16, 16)), (resnet, torch.rand(1, 2, 16, 16, 4))]:
        save_model(model, tmp_path / type(model).__name__)
        loaded = load_model(tmp_path / type(model).__name__)
        assert type(loaded) is type(model)
        assert loaded.config == model.config
        torch.testing.assert_close(loaded(x), model.eval()(x))


# ---------------------------------------------------------------------------------------------------------------------
# Training behaviour: gradient checkpointing, channels_last + bf16, overfitting a fixed real batch


def test_unet_grad_ckpt_gives_identical_gradients() -> None:
    torch.manual_seed(0)
    model = UNet(2, 1, 3, chans=(4, 8), dropout=0.0)
    x = torch.rand(2, 1, 16, 16)
    grads = []
    for enable in (False, True):
        model.set_grad_ckpt(enable)
        model.zero_grad()
        model(x).square().mean().backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1]) > 0
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


def test_unet_channels_last_and_bf16_autocast() -> None:
    torch.manual_seed(0)
    model = UNet(2, 1, 4, chans=(8, 16, 32), dropout=0.0).eval()
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        ref = model(x)
        fast_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
        out_cl = fast_model(x.to(memory_format=torch.channels_last))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out_bf16 = fast_model(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out_cl, ref, rtol=1e-4, atol=1e-4)
    assert out_bf16.shape == ref.shape
    # bf16 keeps ~3 significant digits; the argmax segmentation should barely change.
    assert (out_bf16.float() - ref).abs().max() < 0.1 * ref.abs().max()
    assert (out_bf16.argmax(1) == ref.argmax(1)).float().mean() > 0.95


def _acdc_slices(acdc_dir, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Two real ED SAX slices of patient001 cropped around the heart, intensities scaled to [0, 1]."""
    image = np.asarray(nib.load(acdc_dir / "patient001" / "patient001_frame01.nii.gz").dataobj, dtype=np.float32)
    label = np.asarray(nib.load(acdc_dir / "patient001" / "patient001_frame01_gt.nii.gz").dataobj, dtype=np.int64)
    z = [4, 5]
    cx, cy = np.argwhere(label[..., z] > 0)[:, :2].mean(0).round().astype(int)
    window = (slice(cx - size // 2, cx + size // 2), slice(cy - size // 2, cy + size // 2), z)
    image, label = image[window], label[window]
    image = (image - image.min()) / (image.max() - image.min())
    x = torch.from_numpy(image).permute(2, 0, 1)[:, None]  # (slices, 1, x, y)
    y = torch.from_numpy(label).permute(2, 0, 1)
    assert set(np.unique(label)) == {0, 1, 2, 3}
    return x, y


@pytest.mark.slow
def test_unet_overfits_real_acdc_slices(acdc_dir) -> None:
    torch.manual_seed(0)
    x, y = _acdc_slices(acdc_dir)
    model = UNet(2, 1, 4, chans=(8, 16, 32), dropout=0.1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0], losses
    model.eval()
    with torch.no_grad():
        pred = model(x).argmax(1)
    # Foreground Dice on the memorised batch: the structures are learnt, not just the background.
    for label in (1, 2, 3):
        dice = 2 * ((pred == label) & (y == label)).sum() / ((pred == label).sum() + (y == label).sum())
        assert dice > 0.8, (label, float(dice))


@pytest.mark.parametrize("n_dims", [2, 3])
def test_resnet_fits_a_fixed_batch(n_dims: int) -> None:
    torch.manual_seed(0)
    x = torch.rand(4, 2, *((32, 32) if n_dims == 2 else (32, 32, 4)))
    x[:, :, :16] += torch.arange(4).view(4, 1, *(1,) * n_dims)  # make the classes tell-apart-able
    y = torch.tensor([0, 1, 2, 3])
    model = ResNet(n_dims, 2, 4, depth=18, layer_inplanes=(8, 8, 16, 16))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    assert (logits.argmax(1) == y).all()
