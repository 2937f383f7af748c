"""Reading and writing models in the official CineMA checkpoint format (config.yaml + safetensors), offline.

Which model a config.yaml describes (the rules of the released files, `cinema.config.official.model_kind`):

===================================================  =========================================================
config                                               model
===================================================  =========================================================
``model.name: convunetr`` or ``task: segmentation``  :class:`~cinema.models.convunetr.ConvUNetR`
(or ``task: landmark_heatmap``)
``model.name: convvit`` (or task classification /   :class:`~cinema.models.convvit.ConvViT`; outputs =
regression / landmark_coordinate)                    ``len(data[data.class_column])``, else 1 when
                                                     ``data.regression_column`` is set, else ``model.out_chans``
``model.name: unet`` / ``resnet``                    the CNN baselines (``UNet`` / ``ResNet``.from_config)
no ``task`` and no ``model.name``                    pre-training :class:`~cinema.models.mae.CineMA`, all 4 views
``model.name: mae``                                  CineMA with the views in ``model.views``
===================================================  =========================================================

Each family's fields, defaults and checks are its typed config in `cinema.config.official` (``from_dict`` /
``to_dict`` / ``model_kwargs``); this module only reads the file, picks the family and builds its class. Unknown
fields are ignored and kept: ``model.config`` holds the full dict, so class lists and regression mean/std survive a
save/load round trip.
"""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from cinema.config.official import model_config_from_dict, model_kind
from cinema.io.errors import InputError
from cinema.models.convunetr import ConvUNetR
from cinema.models.convvit import ConvViT
from cinema.models.mae import CineMA
from cinema.models.resnet import ResNet
from cinema.models.unet import UNet

__all__ = [
    "build_model",
    "load_model",
    "load_pretrained_encoder",
    "load_state_dict_file",
    "model_kind",
    "read_config",
    "save_model",
]

# model_kind -> the class its typed config (cinema.config.official.MODEL_CONFIGS) builds
MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "mae": CineMA,
    "convunetr": ConvUNetR,
    "convvit": ConvViT,
    "unet": UNet,
    "resnet": ResNet,
}


# ----------------------------------------------------------------------------------------------------------- config


def read_config(config: str | Path | Mapping[str, Any]) -> tuple[dict[str, Any], Path | None]:
    """Config dict and, when ``config`` is a path, the folder it came from.

    ``config`` may be a dict, a YAML file or a folder that holds ``config.yaml``.
    """
    if isinstance(config, Mapping):
        return copy.deepcopy(dict(config)), None
    path = Path(config)
    if path.is_dir():
        path = path / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"model config not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise InputError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(data, Mapping):
        raise InputError(f"{path}: expected a YAML mapping, got {type(data).__name__}")
    return dict(data), path.parent


def build_model(config: str | Path | Mapping[str, Any]) -> nn.Module:
    """A freshly initialised model (train mode) for an official-format config (dict, YAML file or folder)."""
    cfg, folder = read_config(config)
    try:
        return _build(cfg)
    except ValueError as err:
        if folder is None:
            raise
        raise InputError(f"{folder / 'config.yaml'}: {err}") from None


def _build(cfg: Mapping[str, Any]) -> nn.Module:
    spec = model_config_from_dict(cfg)
    return MODEL_CLASSES[spec.KIND].from_config(spec)


# ---------------------------------------------------------------------------------------------------------- weights


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """State dict from a .safetensors file or a .pt/.pth file (a state dict or a training checkpoint {"model": ...})."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise InputError(f"{path}: not a readable safetensors file ({err})") from None
    if path.suffix in (".pt", ".pth", ".ckpt"):
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises several unrelated types for corrupt files
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise InputError(f"{path}: not a readable torch checkpoint ({reason})") from None
        if isinstance(data, Mapping) and isinstance(data.get("model"), Mapping):
            data = data["model"]
        if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
            raise InputError(f"{path}: does not hold a state dict")
        return dict(data)
    raise InputError(f"{path}: unsupported weights format {path.suffix!r} (use .safetensors or .pt)")


def _find_weights(folder: Path) -> Path:
    if (folder / "model.safetensors").is_file():
        return folder / "model.safetensors"
    found = sorted(folder.glob("*.safetensors"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise FileNotFoundError(f"no *.safetensors weights in {folder}")
    names = ", ".join(p.name for p in found)
    raise InputError(f"{folder} holds several weight files ({names}); pass the one to load as `weights`")


def _describe_mismatch(model: nn.Module, state: Mapping[str, torch.Tensor], limit: int = 5) -> str | None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shaped = [
        f"{k} {tuple(state[k].shape)} (model: {tuple(expected[k].shape)})"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    parts = []
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrongly shaped", shaped)):
        if keys:
            more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
            parts.append(f"{len(keys)} {label}: {', '.join(keys[:limit])}{more}")
    return "; ".join(parts) or None


def _load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str, assign: bool) -> None:
    problem = _describe_mismatch(model, state)
    if problem:
        raise InputError(f"weights {source} do not fit the model of its config: {problem}")
    expected = model.state_dict()
    # keep the model's dtypes (a bf16 file loads into an fp32 model as fp32)
    state = {k: v.to(expected[k].dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=assign)


def load_model(
    config: str | Path | Mapping[str, Any],
    weights: str | Path | None = None,
    device: str | torch.device | None = None,
) -> nn.Module:
    """Load an official-format model, offline, in eval mode.

    Args:
        config: a folder holding config.yaml and the weights (``model.safetensors``, or the only ``*.safetensors``),
            a config.yaml path, or the config dict.
        weights: a .safetensors / .pt file; defaults to the weights in the config's folder.
        device: where to put the model (default CPU).
    """
    cfg, folder = read_config(config)
    if weights is None:
        if folder is None:
            raise InputError("load_model needs `weights` when the config is given as a dict")
        weights = _find_weights(folder)
    state = load_state_dict_file(weights)
    where = f"{folder / 'config.yaml'}: " if folder is not None else ""
    try:
        # Built without allocating or initialising parameters; the loaded tensors are then used as the parameters.
        with torch.device("meta"):
            model = _build(cfg)
    except ValueError as err:
        raise InputError(f"{where}{err}") from None
    _load_strict(model, state, str(weights), assign=True)
    leftover = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftover:  # a module with non-persistent buffers: build it for real
        model = _build(cfg)
        _load_strict(model, state, str(weights), assign=False)
    return model.to(device or "cpu").eval()


def _atomic_write(path: Path, write: Any) -> Path:
    """Write through ``write(tmp_path)`` to a temporary file next to ``path``; returns the temp path."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a saved model is meant to be shared (no umask games: threads)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def save_model(model: nn.Module, folder: str | Path) -> Path:
    """Write ``config.yaml`` (``model.config``) and ``model.safetensors`` into ``folder`` atomically; returns folder."""
    from safetensors.torch import save_file

    config = getattr(model, "config", None)
    if not isinstance(config, Mapping):
        raise InputError(f"{type(model).__name__} has no official-format `config` dict; cannot save it")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    text = yaml.safe_dump(_plain(config), sort_keys=False)
    tmp_cfg = _atomic_write(folder / "config.yaml", lambda p: p.write_text(text, encoding="utf-8"))
    try:
        tmp_w = _atomic_write(
            folder / "model.safetensors", lambda p: save_file(state, str(p), metadata={"format": "pt"})
        )
    except BaseException:
        tmp_cfg.unlink(missing_ok=True)
        raise
    os.replace(tmp_w, folder / "model.safetensors")
    os.replace(tmp_cfg, folder / "config.yaml")
    return folder


def _plain(value: Any) -> Any:
    """YAML-safe copy: tuples → lists, mappings → dicts, numpy/torch scalars → Python numbers."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value


# ------------------------------------------------------------------------------------------------ transfer learning


def load_pretrained_encoder(
    model: nn.Module,
    mae: str | Path | Mapping[str, torch.Tensor] | nn.Module,
    freeze: bool = False,
) -> nn.Module:
    """Initialise a ConvViT / ConvUNetR encoder from a pre-trained CineMA MAE, as the reference fine-tuning does.

    Taken from the MAE: the stems of the model's views (without ``pos_embed``, which stays the model's own freshly
    computed table), the fusion modules if the model has them, and the shared encoder. The decoder, heads, mask token,
    ``dec_linear`` and unused views are dropped. When the model stacks frames as channels, the first conv's kernel is
    repeated over them. Verifies that nothing but the position tables is left unloaded in the encoder.

    Args:
        model: the target model (changed in place and returned).
        mae: MAE weights: a .safetensors/.pt file, a folder with config.yaml + weights, a state dict or a CineMA.
        freeze: stop gradients of every loaded parameter.
    """
    if isinstance(mae, nn.Module):
        source, state = type(mae).__name__, mae.state_dict()
    elif isinstance(mae, Mapping):
        source, state = "state dict", dict(mae)
    else:
        path = Path(mae)
        source = str(path)
        state = load_state_dict_file(_find_weights(path) if path.is_dir() else path)
    views = list(getattr(model, "views", []))
    if not views or not hasattr(model, "enc_down_dict") or not hasattr(model, "encoder"):
        raise InputError(f"{type(model).__name__} has no CineMA encoder to initialise")
    has_fusion = hasattr(model, "enc_fusion_dict")
    for view in views:
        if not any(k.startswith(f"enc_down_dict.{view}.") for k in state):
            raise InputError(f"pre-trained weights {source} have no stem for view {view!r}")

    prefixes = ["encoder."] + [f"enc_down_dict.{v}." for v in views]
    prefixes += [f"enc_fusion_dict.{v}." for v in views] if has_fusion else []
    target = model.state_dict()
    loaded: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not key.startswith(tuple(prefixes)) or key.endswith("pos_embed"):
            continue
        want = target.get(key)
        if want is not None and key.endswith("conv_blocks.0.patch_embed.conv.weight") and want.shape != value.shape:
            # stacked frames (ED, ES) or modalities: repeat the single-frame kernel over the new input channels
            if value.shape[1] and want.shape[1] % value.shape[1] == 0 and value.shape[2:] == want.shape[2:]:
                reps = [1, want.shape[1] // value.shape[1]] + [1] * (value.ndim - 2)
                value = value.repeat(*reps)
        loaded[key] = value

    unexpected = [k for k in loaded if k not in target]
    shaped = [
        f"{k} {tuple(v.shape)} (model: {tuple(target[k].shape)})"
        for k, v in loaded.items()
        if k in target and tuple(v.shape) != tuple(target[k].shape)
    ]
    encoder_keys = [k for k in target if k.startswith(("enc_down_dict.", "enc_fusion_dict.", "encoder."))]
    missing = [k for k in encoder_keys if k not in loaded and not k.endswith("pos_embed")]
    if unexpected or shaped or missing:
        details = [
            f"{label}: {', '.join(keys[:5])}"
            for label, keys in (("unexpected", unexpected), ("wrongly shaped", shaped), ("missing", missing))
            if keys
        ]
        raise InputError(f"pre-trained weights {source} do not fit {type(model).__name__}: {'; '.join(details)}")
    model.load_state_dict(loaded, strict=False)
    if freeze:
        for name, param in model.named_parameters():
            if name in loaded:
                param.requires_grad_(False)
    return model
