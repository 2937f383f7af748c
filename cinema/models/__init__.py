"""CineMA model family and checkpoint I/O.

- :class:`CineMA` (``mae.py``): the multi-view masked autoencoder that was pre-trained.
- :class:`ConvUNetR` (``convunetr.py``): segmentation and landmark heatmaps.
- :class:`ConvViT` (``convvit.py``): classification, regression, landmark coordinates.
- ``unet.py`` / ``resnet.py``: the CNN baselines.
- :func:`load_model` / :func:`save_model` / :func:`build_model` / :func:`load_pretrained_encoder` (``checkpoint.py``):
  the official config.yaml + safetensors format, offline. Each family's config.yaml is a typed dataclass in
  :mod:`cinema.config.official` (``from_dict`` / ``to_dict`` / ``model_kwargs``); every class has ``from_config``.
- ``inference.py``: sliding windows, pooled-head forward, soft arg-max, batches to the device (validation,
  evaluation and analysis all run models through it).

Inputs are dicts ``{view: (B, C, *spatial)}`` with views ``sax`` (3-D, 192×192×16 at 1×1×10 mm) and ``lax_2c``,
``lax_3c``, ``lax_4c`` (2-D, 256×256 at 1×1 mm), intensities in [0, 1].
"""

from cinema.models.checkpoint import build_model, load_model, load_pretrained_encoder, save_model
from cinema.models.conv_stem import VIEWS
from cinema.models.convunetr import ConvUNetR
from cinema.models.convvit import ConvViT
from cinema.models.mae import CineMA

__all__ = [
    "VIEWS",
    "CineMA",
    "ConvUNetR",
    "ConvViT",
    "build_model",
    "load_model",
    "load_pretrained_encoder",
    "save_model",
]
