"""The drop-in API of the official package: ``from cinema import CineMA, ConvUNetR, ConvViT, ...`` with
``from_pretrained()`` / ``from_finetuned(...)`` finding the released files offline, never downloading.

A fake Hugging Face cache (the real layout: ``models--mathpluscode--CineMA/snapshots/<revision>/...`` and
``refs/main``) holds tiny official-format weights from ../shared/golden; the official example scripts' calls run
against it in a fresh interpreter with ``HF_HUB_OFFLINE=1``, and reproduce the golden expected outputs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

REPO = "mathpluscode/CineMA"
REVISION = "0123456789abcdef0123456789abcdef01234567"

# in-repo path -> golden folder whose files it holds
FILES = {
    "finetuned/classification_cvd/mnms2_sax/": ("convvit_tiny_sax_classification", "mnms2_sax"),
    "finetuned/regression_ef/acdc_sax/": ("convvit_tiny_sax_regression", "acdc_sax"),
    "finetuned/segmentation/mnms2_lax_4c/": ("convunetr_tiny_lax_4c", "mnms2_lax_4c"),
    "finetuned/landmark_coordinate/lax_4c/": ("convvit_tiny_lax_4c_landmark", "lax_4c"),
}


def _fill(snapshot: Path, golden: Path) -> None:
    for prefix, (folder, name) in FILES.items():
        target = snapshot / prefix
        target.mkdir(parents=True)
        shutil.copy(golden / folder / "config.yaml", target / "config.yaml")
        shutil.copy(golden / folder / "model.safetensors", target / f"{name}_0.safetensors")
    (snapshot / "pretrained").mkdir()
    shutil.copy(golden / "mae_tiny" / "model.safetensors", snapshot / "pretrained" / "cinema.safetensors")
    shutil.copy(golden / "mae_tiny" / "config.yaml", snapshot / "pretrained" / "cinema.yaml")


@pytest.fixture(scope="module")
def hf_home(golden_dir, tmp_path_factory) -> Path:
    """HF_HOME of a user who once downloaded the files: hub/models--mathpluscode--CineMA/{refs/main, snapshots}."""
    home = tmp_path_factory.mktemp("hf_home")
    repo = home / "hub" / f"models--{REPO.replace('/', '--')}"
    _fill(repo / "snapshots" / REVISION, golden_dir)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(REVISION)
    return home


@pytest.fixture
def offline_env(hf_home, monkeypatch):
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "CINEMA_WEIGHTS_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hf_home


# What a user of the official package writes (the calls of its examples/inference scripts), run in a fresh
# interpreter; numbers are compared with the golden expected outputs.
USER_SCRIPT = """
import json, sys
import torch
from huggingface_hub import hf_hub_download
from safetensors.torch import load_file

from cinema import CineMA, ConvUNetR, ConvViT, heatmap_soft_argmax, patchify, unpatchify

golden = sys.argv[1]
inputs = load_file(f"{golden}/inputs.safetensors")
diffs = {}

def diff(name, got, folder, key):
    expected = load_file(f"{golden}/{folder}/expected.safetensors")[key]
    diffs[name] = float((got.float() - expected).abs().max())

# classification_cvd.py
config_path = hf_hub_download(
    repo_id="mathpluscode/CineMA", filename="finetuned/classification_cvd/mnms2_sax/config.yaml"
)
import yaml
config = yaml.safe_load(open(config_path))
classes = list(config["data"][config["data"]["class_column"]])
model = ConvViT.from_finetuned(
    repo_id="mathpluscode/CineMA",
    model_filename="finetuned/classification_cvd/mnms2_sax/mnms2_sax_0.safetensors",
    config_filename="finetuned/classification_cvd/mnms2_sax/config.yaml",
)
model.eval()
model.to(torch.device("cpu"))
with torch.no_grad():
    logits = model({"sax": inputs["sax_2frames"]})
probs = torch.softmax(logits, dim=1)[0]
diff("classification", logits, "convvit_tiny_sax_classification", "logits.all")
predicted = classes[int(torch.argmax(logits))]

# segmentation_lax_4c.py / landmark_coordinate.py
model = ConvUNetR.from_finetuned(
    repo_id="mathpluscode/CineMA",
    model_filename="finetuned/segmentation/mnms2_lax_4c/mnms2_lax_4c_0.safetensors",
    config_filename="finetuned/segmentation/mnms2_lax_4c/config.yaml",
)
model.eval()
with torch.no_grad():
    logits = model({"lax_4c": inputs["lax_4c_1frame"]})["lax_4c"]
diff("segmentation", logits, "convunetr_tiny_lax_4c", "logits")
coords = heatmap_soft_argmax(torch.sigmoid(logits[:, :3]))[0].numpy()
points = [int(x) for x in coords]
model = ConvViT.from_finetuned(
    repo_id="mathpluscode/CineMA",
    model_filename="finetuned/landmark_coordinate/lax_4c/lax_4c_0.safetensors",
    config_filename="finetuned/landmark_coordinate/lax_4c/config.yaml",
)
with torch.no_grad():
    diff("landmark", model({"lax_4c": inputs["lax_4c_1frame"]}), "convvit_tiny_lax_4c_landmark", "logits.all")

# mae_feature_extraction.py / mae.py
model = CineMA.from_pretrained()
model.eval()
batch = {"sax": inputs["sax_1frame"], "lax_2c": inputs["lax_2c"], "lax_3c": inputs["lax_3c"],
         "lax_4c": inputs["lax_4c_1frame"]}
with torch.no_grad():
    feature_dict = model.feature_forward(batch)
for k, v in feature_dict.items():
    diff(f"features.{k}", v, "mae_tiny", f"features.{k}")
with torch.no_grad():
    _, pred_dict, enc_mask_dict, _ = model(batch, enc_mask_ratio=0.75)
    grid_size_dict = {k: v.patch_embed.grid_size for k, v in model.enc_down_dict.items()}
    patch_size = model.dec_patch_size_dict["sax"]
    patches = patchify(image=batch["sax"], patch_size=patch_size)
    patches[enc_mask_dict["sax"]] = pred_dict["sax"]
    reconstructed = unpatchify(patches, patch_size=patch_size, grid_size=grid_size_dict["sax"])
print(json.dumps({
    "diffs": diffs, "classes": classes, "predicted": predicted, "points": points,
    "masked": int(enc_mask_dict["sax"].sum()), "reconstructed": list(reconstructed.shape),
    "grid": list(grid_size_dict["sax"]), "patch": list(patch_size), "probs": float(probs.sum()),
}))
"""


def test_official_example_calls_run_unchanged_against_a_local_hf_cache(hf_home, golden_dir, tmp_path):
    script = tmp_path / "user.py"
    script.write_text(USER_SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "CINEMA_WEIGHTS"))}
    # no network at all: offline mode, and a proxy that does not exist in case anything tried
    env.update(
        HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9"
    )
    done = subprocess.run(
        [sys.executable, str(script), str(golden_dir)], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["diffs"] and max(result["diffs"].values()) < 1e-4, result["diffs"]
    assert set(result["diffs"]) >= {"classification", "segmentation", "landmark", "features.sax"}
    assert result["classes"] == ["DCM", "HCM", "MINF", "NOR", "RV"] and result["predicted"] in result["classes"]
    assert result["masked"] == 2304 - 576 and result["reconstructed"] == [1, 1, 192, 192, 16]
    assert result["grid"] == [12, 12, 16] and result["patch"] == [16, 16, 1]
    assert len(result["points"]) == 6 and result["probs"] == pytest.approx(1.0, abs=1e-5)


def test_import_cinema_stays_light():
    code = "import sys, cinema; assert 'torch' not in sys.modules; print(cinema.LV_LABEL, cinema.__version__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    import cinema
    from cinema.models import hub

    assert cinema.ConvViT is hub.ConvViT and cinema.heatmap_soft_argmax is hub.heatmap_soft_argmax
    with pytest.raises(AttributeError):
        cinema.no_such_thing  # noqa: B018


def test_resolution_order_local_dir_then_weights_dir_then_hf_cache(offline_env, golden_dir, tmp_path, monkeypatch):
    from cinema.models.hub import hf_cache_dir, resolve_file

    name = "finetuned/regression_ef/acdc_sax/config.yaml"
    cached = resolve_file(name)
    assert cached == hf_cache_dir() / f"models--mathpluscode--CineMA/snapshots/{REVISION}/{name}"
    assert resolve_file(name, revision=REVISION) == cached
    weights_dir = tmp_path / "weights"
    (weights_dir / "finetuned/regression_ef/acdc_sax").mkdir(parents=True)
    shutil.copy(cached, weights_dir / name)
    monkeypatch.setenv("CINEMA_WEIGHTS_DIR", str(weights_dir))
    assert resolve_file(name) == weights_dir / name
    local = tmp_path / "by_hand"
    local.mkdir()
    shutil.copy(cached, local / "config.yaml")  # a folder of bare file names
    assert resolve_file(name, local_dir=local) == local / "config.yaml"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))  # read at call time, not at import
    monkeypatch.delenv("CINEMA_WEIGHTS_DIR")
    with pytest.raises(FileNotFoundError) as info:
        resolve_file(name)
    message = str(info.value)
    assert str(tmp_path / "elsewhere") in message and "hf download mathpluscode/CineMA" in message
    assert "CINEMA_WEIGHTS_DIR" in message and "\n" not in message


def test_from_finetuned_from_a_local_folder_matches_golden_and_refuses_the_wrong_class(golden_dir, tmp_path):
    from cinema import ConvUNetR, ConvViT
    from cinema.models.convvit import ConvViT as BaseConvViT

    folder = tmp_path / "finetuned" / "landmark_coordinate" / "lax_4c"
    folder.mkdir(parents=True)
    shutil.copy(golden_dir / "convvit_tiny_lax_4c_landmark" / "config.yaml", folder / "config.yaml")
    shutil.copy(golden_dir / "convvit_tiny_lax_4c_landmark" / "model.safetensors", folder / "lax_4c_0.safetensors")
    kwargs = {
        "repo_id": REPO,
        "model_filename": "finetuned/landmark_coordinate/lax_4c/lax_4c_0.safetensors",
        "config_filename": "finetuned/landmark_coordinate/lax_4c/config.yaml",
        "local_dir": tmp_path,
    }
    model = ConvViT.from_finetuned(**kwargs)
    assert isinstance(model, BaseConvViT) and not model.training
    inputs = load_file(golden_dir / "inputs.safetensors")
    expected = load_file(golden_dir / "convvit_tiny_lax_4c_landmark" / "expected.safetensors")
    with torch.no_grad():
        for reduce in ("all", "cls", "patch"):
            got = model({"lax_4c": inputs["lax_4c_1frame"]}, reduce=reduce)
            torch.testing.assert_close(got, expected[f"logits.{reduce}"], atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="describes a convvit model, not a convunetr"):
        ConvUNetR.from_finetuned(**kwargs)
    state = load_file(folder / "lax_4c_0.safetensors")
    save_file(
        {k: v for k, v in state.items() if not k.startswith("pred_head_dict.cls")}, folder / "lax_4c_0.safetensors"
    )
    with pytest.raises(ValueError, match="missing keys: pred_head_dict.cls"):
        ConvViT.from_finetuned(**kwargs)


def test_from_pretrained_initialises_a_task_model_from_the_cached_mae(offline_env, golden_dir):
    from cinema import CineMA, ConvViT

    config = yaml.safe_load((golden_dir / "convvit_tiny_sax_classification" / "config.yaml").read_text())
    model = ConvViT.from_pretrained(config, freeze=True)
    mae = CineMA.from_pretrained()
    key = "encoder.blocks.0.attn.q.weight"
    torch.testing.assert_close(model.state_dict()[key], mae.state_dict()[key])
    assert not dict(model.named_parameters())[key].requires_grad
    stem = "enc_down_dict.sax.conv_blocks.0.patch_embed.conv.weight"  # 2 frames: the 1-frame kernel repeated
    torch.testing.assert_close(model.state_dict()[stem], mae.state_dict()[stem].repeat(1, 2, 1, 1, 1))


def test_hub_options_of_official_calls(offline_env, golden_dir):
    """Download-only options of hf_hub_download are accepted and change nothing; subfolder is honoured; anything
    else is refused."""
    from cinema import ConvViT

    model = ConvViT.from_finetuned(
        repo_id=REPO,
        model_filename="mnms2_sax_0.safetensors",
        config_filename="config.yaml",
        subfolder="finetuned/classification_cvd/mnms2_sax",
        token="hf_x",
        force_download=True,
        revision=REVISION,
    )
    assert model.pred_head_dict["cls"].out_features == 5
    with pytest.raises(TypeError, match="unexpected keyword arguments \\['colour'\\]"):
        ConvViT.from_finetuned(REPO, "a.safetensors", "config.yaml", colour="red")
    with pytest.raises(FileNotFoundError, match="mathpluscode/CineMA"):
        ConvViT.from_finetuned(REPO, "finetuned/x/y_0.safetensors", "finetuned/x/config.yaml")
