"""Released CineMA weights, found offline, and the drop-in API of the official package.

The official package (mathpluscode/CineMA) loads its checkpoints with ``CineMA.from_pretrained()`` and
``ConvUNetR.from_finetuned(repo_id=..., model_filename=..., config_filename=...)`` /
``ConvViT.from_finetuned(...)``, which download from the Hugging Face Hub. The classes here accept the same calls
(so the official example scripts run unchanged with ``from cinema import ...``) but never download: each file is
looked up, in this order, in

1. an explicit folder (``local_dir=``), holding the file under its in-repo path (``finetuned/.../config.yaml``, the
   layout ``hf download --local-dir`` writes) or under its bare name;
2. ``$CINEMA_WEIGHTS_DIR``, holding it under its in-repo path;
3. the standard Hugging Face cache where an earlier download put it (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else
   ``~/.cache/huggingface/hub``), through huggingface_hub's own offline lookup (``try_to_load_from_cache``), so the
   cache layout (``models--owner--name/snapshots/<revision>/...``, ``refs/main``) is read as the hub writes it.

A file found nowhere is one `FileNotFoundError` naming every place looked at and the command that fetches it.
The classes are subclasses of the models in `cinema.models`, so everything else in the package accepts them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cinema.io.errors import InputError
from cinema.models import convunetr, convvit, mae
from cinema.models.checkpoint import load_pretrained_encoder, load_state_dict_file, model_kind, read_config
from cinema.models.vit import patchify, unpatchify

__all__ = [
    "OFFICIAL_REPO",
    "PRETRAINED_CONFIGS",
    "PRETRAINED_WEIGHTS",
    "WEIGHTS_DIR_ENV",
    "CineMA",
    "ConvUNetR",
    "ConvViT",
    "heatmap_soft_argmax",
    "hf_cache_dir",
    "patchify",
    "resolve_file",
    "unpatchify",
]

OFFICIAL_REPO = "mathpluscode/CineMA"
WEIGHTS_DIR_ENV = "CINEMA_WEIGHTS_DIR"
PRETRAINED_WEIGHTS = "pretrained/cinema.safetensors"
# The official loader reads pretrained/cinema.yaml; the Hub listing also shows pretrained/config.yaml.
PRETRAINED_CONFIGS = ("pretrained/cinema.yaml", "pretrained/config.yaml")


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache folder, read from the environment now (huggingface_hub reads it once, at import)."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(name):
            return Path(os.environ[name]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def _from_hf_cache(repo_id: str, filename: str, cache_dir: Path, revision: str | None) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # an optional route: local folders still work without huggingface_hub
        return None
    found = try_to_load_from_cache(repo_id, filename, cache_dir=str(cache_dir), revision=revision)
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def resolve_file(
    filename: str | Sequence[str],
    repo_id: str = OFFICIAL_REPO,
    *,
    local_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    revision: str | None = None,
) -> Path:
    """The local path of a released file (its in-repo path, e.g. ``finetuned/segmentation/acdc_sax/config.yaml``).

    ``filename`` may list alternatives (the first found wins). Never downloads: see the module notes for where it
    looks; a miss raises one FileNotFoundError naming the paths looked for and how to obtain the file.
    """
    names = [filename] if isinstance(filename, str) else list(filename)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else hf_cache_dir()
    env_dir = os.environ.get(WEIGHTS_DIR_ENV)
    looked: list[str] = []
    for name in names:
        candidates = []
        if local_dir:
            # an explicit folder may hold one model's files under their bare names; the shared store may not, since
            # a bare config.yaml there would be any model's
            candidates += [Path(local_dir).expanduser() / name, Path(local_dir).expanduser() / Path(name).name]
        if env_dir:
            candidates.append(Path(env_dir).expanduser() / name)
        for candidate in dict.fromkeys(candidates):
            if candidate.is_file():
                return candidate
            looked.append(str(candidate))
        found = _from_hf_cache(repo_id, name, cache, revision)
        if found is not None:
            return found
        snapshot = f"models--{repo_id.replace('/', '--')}/snapshots/{revision or '<refs/main>'}/{name}"
        looked.append(str(cache / snapshot))
    first = names[0]
    raise FileNotFoundError(
        f"{first} of {repo_id} not found offline (looked for {', '.join(looked)}); nothing is downloaded: fetch it "
        f"once on a machine with internet access with `hf download {repo_id} {first}` (huggingface_hub; it goes to "
        f"the Hugging Face cache), or put it under ${WEIGHTS_DIR_ENV}/{first} or pass local_dir="
    )


# hf_hub_download options that only matter for a download: accepted (scripts pass them) and without effect here
_NETWORK_OPTIONS = frozenset(
    {
        "token",
        "force_download",
        "local_files_only",
        "proxies",
        "etag_timeout",
        "user_agent",
        "resume_download",
        "endpoint",
    }
)


def _lookup(filename: str | Sequence[str], repo_id: str, options: Mapping[str, Any]) -> Path:
    """`resolve_file` with the keyword arguments an official call passes to hf_hub_download."""
    options = {k: v for k, v in options.items() if k not in _NETWORK_OPTIONS}
    subfolder = options.pop("subfolder", None)
    repo_type = options.pop("repo_type", None)
    if repo_type not in (None, "model"):
        raise InputError(f"CineMA weights live in a model repository, not a {repo_type} one")
    unknown = sorted(set(options) - {"local_dir", "cache_dir", "revision"})
    if unknown:
        raise TypeError(f"unexpected keyword arguments {unknown}; accepted: local_dir, cache_dir, revision")
    names = [filename] if isinstance(filename, str) else list(filename)
    if subfolder:
        names = [f"{subfolder.strip('/')}/{name}" for name in names]
    return resolve_file(names, repo_id, **options)


def _build_loaded(cls: type[nn.Module], config: Mapping[str, Any], weights: Path, where: str) -> nn.Module:
    """``cls`` built from ``config`` with the state dict of ``weights`` loaded strictly, in eval mode on the CPU."""
    state = load_state_dict_file(weights)
    try:
        # built without allocating or initialising parameters: the loaded tensors become the parameters
        with torch.device("meta"):
            model = cls.from_config(config)
    except ValueError as err:
        raise InputError(f"{where}: {err}") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shaped = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or shaped:
        parts = [
            f"{len(keys)} {label}: {', '.join(keys[:5])}"
            for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrongly shaped", shaped))
            if keys
        ]
        raise InputError(f"weights {weights} do not fit the model of {where}: {'; '.join(parts)}")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True, assign=True)
    if any(t.is_meta for t in [*model.parameters(), *model.buffers()]):  # non-persistent buffers: build for real
        model = cls.from_config(config)
        model.load_state_dict(state, strict=True)
    return model.eval()


def _finetuned(
    cls: type[nn.Module], kind: str, repo_id: str, model_filename: str, config_filename: str, **kwargs: Any
) -> nn.Module:
    weights = _lookup(model_filename, repo_id, kwargs)
    config_path = _lookup(config_filename, repo_id, kwargs)
    config, _ = read_config(config_path)
    found = model_kind(config)
    if found != kind:
        raise InputError(f"{config_path}: describes a {found} model, not a {kind}; load it with the matching class")
    return _build_loaded(cls, config, weights, str(config_path))


def _pretrained_into(model: nn.Module, freeze: bool, **kwargs: Any) -> nn.Module:
    """Initialise a task model's encoder from the released pre-trained CineMA (found offline)."""
    weights = _lookup(PRETRAINED_WEIGHTS, kwargs.pop("repo_id", OFFICIAL_REPO), kwargs)
    return load_pretrained_encoder(model, weights, freeze=freeze)


class CineMA(mae.CineMA):
    """The pre-trained masked autoencoder, with the official package's loading and calling conventions.

    ``model(batch, enc_mask_ratio=0.75)`` as in the official examples (``mask_ratio=`` / ``masks=`` as in
    `cinema.models.mae.CineMA`); ``dec_patch_size_dict`` and ``enc_down_dict[view].patch_embed.grid_size`` exist as
    the official ``mae.py`` example reads them.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for stem in self.enc_down_dict.values():
            # the official example reads the token grid from the patch embedding
            stem.patch_embed.grid_size = stem.grid_size
            stem.patch_embed.n_patches = stem.n_patches

    @property
    def dec_patch_size_dict(self) -> dict[str, tuple[int, ...]]:
        """Pixels predicted per token, per view (the official attribute name)."""
        return self.dec_patch_size

    def forward(  # type: ignore[override]
        self,
        images: Mapping[str, torch.Tensor],
        enc_mask_ratio: float | Mapping[str, torch.Tensor] | None = None,
        masks: Mapping[str, torch.Tensor] | None = None,
        mask_ratio: float = 0.75,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        if isinstance(enc_mask_ratio, Mapping):  # masks given positionally, as `cinema.models.mae.CineMA` takes them
            masks, enc_mask_ratio = enc_mask_ratio, None
        ratio = mask_ratio if enc_mask_ratio is None else float(enc_mask_ratio)
        return super().forward(images, masks=masks, mask_ratio=ratio)

    @classmethod
    def from_pretrained(cls, **kwargs: Any) -> CineMA:
        """The released pre-trained model (``pretrained/cinema.safetensors`` + its YAML), found offline.

        Keyword arguments: ``repo_id``, ``local_dir``, ``cache_dir``, ``revision`` (see `resolve_file`);
        download-only options of ``hf_hub_download`` (``token``, ``force_download``, ...) are accepted and ignored.
        """
        repo_id = kwargs.pop("repo_id", OFFICIAL_REPO)
        weights = _lookup(PRETRAINED_WEIGHTS, repo_id, kwargs)
        config_path = _lookup(PRETRAINED_CONFIGS, repo_id, kwargs)
        config, _ = read_config(config_path)
        return _build_loaded(cls, config, weights, str(config_path))  # type: ignore[return-value]


class ConvUNetR(convunetr.ConvUNetR):
    """ConvUNetR (segmentation, landmark heatmaps) with the official package's loaders, offline."""

    @classmethod
    def from_finetuned(cls, repo_id: str, model_filename: str, config_filename: str, **kwargs: Any) -> ConvUNetR:
        """A released fine-tuned checkpoint: ``model_filename`` / ``config_filename`` are in-repo paths, e.g.
        ``finetuned/segmentation/acdc_sax/acdc_sax_0.safetensors``. Keyword arguments: ``local_dir``,
        ``cache_dir``, ``revision`` (see `resolve_file`)."""
        return _finetuned(cls, "convunetr", repo_id, model_filename, config_filename, **kwargs)  # type: ignore[return-value]

    @classmethod
    def from_pretrained(cls, config: Mapping[str, Any], freeze: bool = False, **kwargs: Any) -> ConvUNetR:
        """A new model for ``config`` whose encoder starts from the released pre-trained CineMA (found offline)."""
        return _pretrained_into(cls.from_config(config), freeze, **kwargs)  # type: ignore[return-value]


class ConvViT(convvit.ConvViT):
    """ConvViT (classification, regression, landmark coordinates) with the official package's loaders, offline."""

    @classmethod
    def from_finetuned(cls, repo_id: str, model_filename: str, config_filename: str, **kwargs: Any) -> ConvViT:
        """A released fine-tuned checkpoint, e.g. ``finetuned/classification_cvd/acdc_sax/acdc_sax_0.safetensors``
        with ``finetuned/classification_cvd/acdc_sax/config.yaml``. Keyword arguments: ``local_dir``,
        ``cache_dir``, ``revision`` (see `resolve_file`)."""
        return _finetuned(cls, "convvit", repo_id, model_filename, config_filename, **kwargs)  # type: ignore[return-value]

    @classmethod
    def from_pretrained(cls, config: Mapping[str, Any], freeze: bool = False, **kwargs: Any) -> ConvViT:
        """A new model for ``config`` whose encoder starts from the released pre-trained CineMA (found offline)."""
        return _pretrained_into(cls.from_config(config), freeze, **kwargs)  # type: ignore[return-value]


def heatmap_soft_argmax(heatmap: torch.Tensor, beta: float = 1000.0) -> torch.Tensor:
    """(B, K, W, H) heatmaps -> (B, 2K) integer (x1, y1, x2, y2, ...) pixel indices, as the official helper.

    The expected index under softmax(heatmap * beta) over the W x H pixels, truncated toward zero. The arithmetic
    is the official one, step for step, so that the truncated integers agree even next to a boundary;
    `cinema.models.inference.soft_argmax` gives the same points unrounded and with less memory.
    """
    batch, n_maps, width, height = heatmap.shape
    weights = torch.softmax(heatmap.reshape(batch, n_maps, -1) * beta, dim=2)  # (B, K, W*H), x-major like the maps
    grid = torch.cartesian_prod(torch.arange(width), torch.arange(height)).to(heatmap.device)  # (W*H, 2): (x, y)
    points = (weights[..., None] * grid[None, None]).sum(dim=2)  # (B, K, 2)
    return points.reshape(batch, -1).to(torch.long)
