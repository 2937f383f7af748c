"""CineMA: a foundation-model toolkit for cine cardiac MRI.

``from cinema import CineMA, ConvUNetR, ConvViT, heatmap_soft_argmax, patchify, unpatchify`` gives the official
package's API (`cinema.models.hub`): ``CineMA.from_pretrained()`` and ``ConvViT.from_finetuned(repo_id=...,
model_filename=..., config_filename=...)`` find the released files offline and never download.
"""

__version__ = "0.1.0"

# Label values and names of the official package (background 0).
RV_LABEL = 1
MYO_LABEL = 2
LV_LABEL = 3
LABEL_TO_NAME = {RV_LABEL: "RV", MYO_LABEL: "MYO", LV_LABEL: "LV"}

# The official package's UK Biobank constants, which its examples may import.
UKB_SPACING = (1.0, 1.0, 10.0)
UKB_LAX_SLICE_SIZE = (256, 256)
UKB_SAX_SLICE_SIZE = (192, 192)
UKB_N_FRAMES = 50

_CHECKPOINT = ("load_model", "save_model")
_HUB = ("CineMA", "ConvUNetR", "ConvViT", "heatmap_soft_argmax", "patchify", "unpatchify")

__all__ = [
    "LABEL_TO_NAME",
    "LV_LABEL",
    "MYO_LABEL",
    "RV_LABEL",
    "UKB_LAX_SLICE_SIZE",
    "UKB_N_FRAMES",
    "UKB_SAX_SLICE_SIZE",
    "UKB_SPACING",
    *_HUB,
    *_CHECKPOINT,
    "__version__",
]


def __getattr__(name: str):
    # Lazy so that `import cinema` stays cheap (no torch) for the I/O-only user and the CLI start-up.
    if name in _CHECKPOINT:
        from cinema.models import checkpoint

        return getattr(checkpoint, name)
    if name in _HUB:
        from cinema.models import hub

        return getattr(hub, name)
    raise AttributeError(f"module 'cinema' has no attribute {name!r}")
