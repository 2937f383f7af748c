"""The run formats: one YAML file plus ``key=value`` dotted overrides, parsed into dataclasses and checked before
anything runs (unknown keys with a did-you-mean hint, missing keys, wrong types, inconsistent choices).

    config = load_config("configs/acdc_segmentation_unet2d.yaml", ["train.n_epochs=10"])   # fine-tuning
    config = load_pretrain_config("configs/pretrain_tiny.yaml")                            # pre-training

Modules: `schema` (every key and its default), `parse` (the generic YAML / override parser), `checks` (the
cross-field checks), `official` (the official model ``config.yaml`` of each model family as a typed dataclass, which
`FinetuneConfig.model_config` writes and `cinema.models` reads). The trainers in `cinema.train` and the task
definitions in `cinema.tasks` read these configs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cinema.config.checks import validate, validate_pretrain
from cinema.config.parse import apply_overrides, build_dataclass, merge_dicts, read_yaml_mapping
from cinema.config.schema import FinetuneConfig, PretrainConfig
from cinema.io.errors import InputError

__all__ = [
    "FinetuneConfig",
    "PretrainConfig",
    "config_from_dict",
    "load_config",
    "load_pretrain_config",
    "pretrain_config_from_dict",
]


def config_from_dict(values: dict[str, Any], overrides: list[str] | None = None) -> FinetuneConfig:
    """Parse and validate a fine-tuning config dict (plus dotted overrides)."""
    values = apply_overrides(values, overrides)
    if isinstance(values.get("model"), dict) and isinstance(values["model"].get("views"), str):
        # "views: sax" as in the reference
        values = merge_dicts(values, {"model": {"views": [values["model"]["views"]]}})
    config = build_dataclass(FinetuneConfig, values)
    validate(config)
    return config


def load_config(path: str | Path, overrides: list[str] | None = None) -> FinetuneConfig:
    """Read a YAML fine-tuning config, apply ``key=value`` overrides, validate; errors name the file and the key."""
    path = Path(path)
    values = read_yaml_mapping(path)
    try:
        return config_from_dict(values, overrides)
    except ValueError as err:
        raise InputError(f"{path}: {err}") from err


def pretrain_config_from_dict(values: dict[str, Any], overrides: list[str] | None = None) -> PretrainConfig:
    """Parse and validate a pre-training config dict (plus dotted overrides)."""
    config = build_dataclass(PretrainConfig, values, overrides)
    validate_pretrain(config)
    return config


def load_pretrain_config(path: str | Path, overrides: list[str] | None = None) -> PretrainConfig:
    """Read a YAML pre-training config, apply overrides, validate; errors name the file and the key.

    Relative data paths in the file are taken from the working directory, as for fine-tuning.
    """
    try:
        return pretrain_config_from_dict(read_yaml_mapping(path), overrides)
    except ValueError as err:
        raise InputError(f"{path}: {err}") from err
