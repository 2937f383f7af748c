"""What fine-tuning (`cinema.train.trainer`) and pre-training (`cinema.train.pretrain`) share while they run: the
device, mixed precision, the output layout, resume checks, atomic checkpoints, every random generator's state, and
the one read of logged values from the device per step.

A checkpoint is streamed to a temporary file in the destination folder, flushed to disk and renamed into place
(`cinema.io.atomic.write_stream_atomic`), so a process killed at any instant (SIGKILL included) leaves either the
previous checkpoint or the new one, never a torn file. `rng_state` / `set_rng_state` capture and restore Python's,
NumPy's and torch's global generators (CPU and every CUDA device), for loops whose randomness is not all re-derived
from the seed. Batches go to the device with `cinema.models.inference.to_device` (validation in `cinema.tasks` needs
it too).
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cinema.io.atomic import write_stream_atomic
from cinema.io.errors import InputError

__all__ = [
    "CHECKPOINT",
    "MODEL_DIR",
    "RESUME_FREE_KEYS",
    "autocast_context",
    "check_resumable",
    "load_checkpoint",
    "resolve_device",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
    "to_host",
]

CHECKPOINT = "checkpoint.pt"  # the latest resumable state, in the run's output folder
MODEL_DIR = "model"  # the selected (fine-tuning) or latest (pre-training) model in the official format
# Config keys that may change between an interrupted run and its resume without changing the numbers.
RESUME_FREE_KEYS = frozenset(
    {
        "train.progress_bar",
        "train.tensorboard",
        "train.n_workers",
        "train.device",
        "train.max_steps",
        "train.checkpoint_every",
        "train.save_model_every",
    }
)


def resolve_device(name: str) -> torch.device:
    """``train.device``: ``auto`` (CUDA when there is one, else the CPU), ``cpu``, ``cuda``, ``cuda:1``, ..."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"config key 'train.device' is {name!r} but CUDA is not available")
    return device


def autocast_context(device: torch.device, precision: str) -> Callable[[], Any]:
    """A factory of autocast contexts: ``bf16`` or ``fp16`` on the device's type, a no-op context for ``fp32``."""

    def factory() -> Any:
        if precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)

    return factory


def to_host(tensors: Sequence[torch.Tensor]) -> list[list[float]]:
    """Every entry of each tensor as Python floats, read from the device in one copy (the step's one wait for it)."""
    if not tensors:
        return []
    flat = torch.cat([t.detach().reshape(-1) for t in tensors]).tolist()
    out, start = [], 0
    for tensor in tensors:
        out.append(flat[start : start + tensor.numel()])
        start += tensor.numel()
    return out


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in values.items():
        full = f"{prefix}.{key}" if prefix else key
        flat.update(_flatten(value, full) if isinstance(value, dict) else {full: value})
    return flat


def check_resumable(saved: dict[str, Any], current: dict[str, Any], path: str | os.PathLike) -> None:
    """Refuse to resume the checkpoint at `path` when its config dict differs from the current one in any key that
    changes the numbers (all but `RESUME_FREE_KEYS`)."""
    old, new = _flatten(saved), _flatten(current)
    changed = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k) and k not in RESUME_FREE_KEYS]
    if changed:
        raise InputError(f"cannot resume {path}: the config differs from the checkpoint's in {changed[:8]}")


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """``torch.save`` that is all-or-nothing: streamed to a temp file, fsync, rename (`write_stream_atomic`)."""
    return write_stream_atomic(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint written by `save_checkpoint`, on the CPU, tensors and plain values only."""
    return torch.load(path, map_location="cpu", weights_only=True)


def rng_state() -> dict[str, Any]:
    """The global generators' states (tensors and plain Python values, loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    keys = np_state["keys"].numpy().astype(np.uint32)
    np.random.set_state((np_state["kind"], keys, np_state["pos"], np_state["has_gauss"], np_state["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
