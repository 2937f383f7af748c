"""Run state that must survive a crash: atomic torch checkpoints and the state of every random number generator.

`save_atomic` writes to a temporary file in the destination folder, flushes it to disk and renames it into place,
so a process killed at any instant (SIGKILL included) leaves either the previous checkpoint or the new one, never a
torn file. `rng_state` / `set_rng_state` capture and restore Python's, NumPy's and torch's global generators (CPU and
every CUDA device), for loops whose randomness is not all re-derived from the seed.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cinema.io.atomic import write_stream_atomic

__all__ = ["rng_state", "save_atomic", "set_rng_state"]


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` that is all-or-nothing: streamed to a temp file, fsync, rename (`write_stream_atomic`)."""
    return write_stream_atomic(path, lambda f: torch.save(obj, f))


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
