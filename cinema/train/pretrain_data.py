"""Pre-training data: studies in model space, one random time point per study per epoch, every view at that time.

Two sources with one interface (``len``, ``study_id(i)``, ``n_frames(i)`` → {view: T}, ``frame(i, view, t)`` →
uint8 array):

- `ShardStore` (`cinema.io.shards`): a ``cinema shard`` folder, read one frame at a time (any archive size);
- `InMemoryStudies`: the studies of a ``cinema index`` file, read and brought into model space at start-up (small
  data); `write_shards` stores exactly these arrays, so both sources give identical samples.

Randomness (the reference's bug was that every worker copied one generator, so each study showed the same frame in
every epoch): `GlobalBatchSampler` gives every (epoch, study) its own seed, ``derive_seed(seed, epoch, study, 5)``,
and the dataset draws that sample's time point and token masks from it and from nothing else. Samples therefore
differ across epochs, ranks and workers, are reproducible from the seed, and do not depend on how many ranks or
workers there are — which is what makes a 2-rank run equal to a 1-rank run with accumulation, and a resume exact.

Time points: the frame is drawn uniformly over the reference view (SAX when present, else the first view present);
another view with a different number of frames takes the frame at the same fraction of the cycle. Studies missing a
configured view still train: the view is fed as zeros and flagged absent in ``present`` so the loss leaves it out.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from cinema.config import PretrainConfig
from cinema.config.parse import resolve_path
from cinema.io.atomic import check_output
from cinema.io.index import index_input_paths, read_index, read_index_entry
from cinema.io.shards import ShardStore, write_shard_folder
from cinema.io.study import Study
from cinema.models.mae import random_token_mask
from cinema.preprocess.intensity import to_uint8
from cinema.train.datasets import config_to_model_space, derive_seed

logger = logging.getLogger(__name__)

SAMPLE_STREAM = 5  # derive_seed stream of per-sample seeds (the fine-tuning loop uses 0-3)


# ---------------------------------------------------------------------------------------------------------------------
# Studies -> model-space uint8 arrays
# ---------------------------------------------------------------------------------------------------------------------


def _fit_slices(image: np.ndarray, n: int) -> np.ndarray:
    """(X, Y, Z, T) → exactly n slices: zero-padded at the end (as the reference) or the central n kept."""
    z = image.shape[2]
    if z < n:
        return np.pad(image, [(0, 0), (0, 0), (0, n - z), (0, 0)])
    start = (z - n) // 2
    return image[:, :, start : start + n]


def study_to_arrays(study: Study, config: PretrainConfig, where: str = "") -> dict[str, np.ndarray]:
    """{view: uint8 (T, *patch_size)} of every configured view the study has, in model space."""
    from cinema.preprocess import locate_study_heart

    data = config.data
    views = [v for v in config.model.views if v in study.views]
    if not views:
        raise ValueError(
            f"{where or study.source}: none of the configured views {config.model.views} "
            f"(the study has {', '.join(study.view_names)})"
        )
    arrays = {}
    for name in views:
        view = study.views[name]
        geometry = config.view_data(name)
        center = None
        if name == "sax" and data.crop_center == "heart":
            center = np.asarray(locate_study_heart(study, name).center_mm, dtype=np.float64)
        image, _ = config_to_model_space(view.image, view.affine, name, config, center)
        if name == "sax":
            image = _fit_slices(image, geometry.patch_size[2])
        arrays[name] = np.ascontiguousarray(np.moveaxis(to_uint8(image), -1, 0))
    return arrays


def _entry_arrays(job: tuple[dict[str, Any], PretrainConfig]) -> dict[str, np.ndarray] | str:
    entry, config = job
    try:
        return study_to_arrays(read_index_entry(entry), config, f"study {entry['id']}")
    except (ValueError, FileNotFoundError, OSError) as err:
        message = str(err)
        return message if entry["id"] in message else f"study {entry['id']}: {message}"


def _index_entries(config: PretrainConfig, index_path: Path) -> list[dict[str, Any]]:
    entries = read_index(index_path)
    if config.data.max_studies > 0:
        entries = entries[: config.data.max_studies]
    return entries


def _map_entries(
    entries: list[dict[str, Any]], config: PretrainConfig, workers: int
) -> Iterator[dict[str, np.ndarray] | str]:
    jobs = [(e, config) for e in entries]
    if workers <= 1:
        yield from map(_entry_arrays, jobs)
        return
    with ProcessPoolExecutor(workers) as pool:
        yield from pool.map(_entry_arrays, jobs, chunksize=2)


class InMemoryStudies:
    """The studies of an index in model space, in memory (uint8; about 1.2 MB per SAX frame at 192×192×16)."""

    def __init__(self, config: PretrainConfig, workers: int = 1) -> None:
        path = resolve_path(config.data.index)
        entries = _index_entries(config, path)
        self.ids: list[str] = []
        self.arrays: list[dict[str, np.ndarray]] = []
        for entry, result in zip(entries, _map_entries(entries, config, workers), strict=True):
            if isinstance(result, str):
                raise ValueError(result)
            self.ids.append(entry["id"])
            self.arrays.append(result)

    def __len__(self) -> int:
        return len(self.ids)

    def study_id(self, index: int) -> str:
        return self.ids[index]

    def n_frames(self, index: int) -> dict[str, int]:
        return {view: a.shape[0] for view, a in self.arrays[index].items()}

    def frame(self, index: int, view: str, t: int) -> np.ndarray:
        return self.arrays[index][view][t]


class _Subset:
    """The first ``n`` studies of a source."""

    def __init__(self, source: Any, n: int) -> None:
        self.source, self.n = source, min(n, len(source))

    def __len__(self) -> int:
        return self.n

    def __getattr__(self, name: str) -> Any:
        if name == "source":  # not set yet while unpickling in a spawned worker
            raise AttributeError(name)
        return getattr(self.source, name)


def open_source(config: PretrainConfig, workers: int = 1) -> Any:
    """The configured source; shards must have been written with this config's geometry."""
    if config.data.index is not None:
        return InMemoryStudies(config, workers)
    store = ShardStore(resolve_path(config.data.shards))
    expected = config.geometry()
    for key, value in expected.items():
        if store.geometry.get(key) != value:
            raise ValueError(
                f"config key 'data.{key}': {value} but the shards in {store.folder} were written with "
                f"{store.geometry.get(key)}; re-shard with this config (cinema shard INDEX -o OUT --config CONFIG)"
            )
    return _Subset(store, config.data.max_studies) if config.data.max_studies > 0 else store


def write_shards(
    config: PretrainConfig,
    index_path: str | Path,
    out_dir: str | Path,
    force: bool = False,
    studies_per_shard: int = 1000,
    workers: int = 1,
    skip_bad: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[int, list[str]]:
    """Every study of an index into model space (this config's geometry and views), into tar shards, atomically.

    Returns (studies written, messages about skipped studies). Without ``skip_bad`` the first unreadable study stops
    everything and nothing is written.
    """
    entries = _index_entries(config, Path(index_path))
    inputs = [index_path, *index_input_paths(entries)]
    check_output(out_dir, inputs, folder=True, force=force)
    skipped: list[str] = []
    n = 0
    with write_shard_folder(
        out_dir, config.geometry(), force=force, inputs=inputs, max_studies=studies_per_shard
    ) as writer:
        for i, (entry, result) in enumerate(zip(entries, _map_entries(entries, config, workers), strict=True)):
            if isinstance(result, str):
                if not skip_bad:
                    raise ValueError(result)
                skipped.append(result)
            else:
                writer.add(entry["id"], result)
                n += 1
            if progress is not None:
                progress(i + 1, len(entries))
        if n == 0:
            raise ValueError("no study could be written")
    return n, skipped


# ---------------------------------------------------------------------------------------------------------------------
# Samples
# ---------------------------------------------------------------------------------------------------------------------


def aligned_frames(n_frames: dict[str, int], t_fraction: float) -> dict[str, int]:
    """Frame of each view at the same fraction of the cardiac cycle."""
    return {view: min(n - 1, int(math.floor(t_fraction * n))) for view, n in n_frames.items()}


class PretrainDataset(Dataset):
    """``dataset[(study, seed)]`` → one random time point of one study, with its token masks.

    Returns {"image": {view: float32 (1, *spatial) in [0, 1]}, "mask": {view: bool (N,)}, "present": bool (V,),
    "index": study, "frame": frame of the reference view}. Everything random comes from ``seed``.
    """

    def __init__(self, source: Any, config: PretrainConfig, n_tokens: dict[str, int]) -> None:
        self.source = source
        self.views = list(config.model.views)
        self.shapes = {v: tuple(config.view_data(v).patch_size) for v in self.views}
        self.n_tokens = n_tokens
        self.mask_ratio = config.train.mask_ratio

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        index, seed = key
        rng = np.random.default_rng(seed)
        n_frames = self.source.n_frames(index)
        reference = "sax" if "sax" in n_frames else next(iter(n_frames))
        t_ref = int(rng.integers(n_frames[reference]))
        frames = aligned_frames(n_frames, t_ref / n_frames[reference])
        generator = torch.Generator().manual_seed(seed)
        images, masks = {}, {}
        for view in self.views:
            if view in frames:
                frame = np.asarray(self.source.frame(index, view, frames[view]), dtype=np.float32) / 255.0
                images[view] = torch.from_numpy(frame)[None]
            else:
                images[view] = torch.zeros((1, *self.shapes[view]))
            masks[view] = random_token_mask(1, self.n_tokens[view], self.mask_ratio, generator=generator)[0]
        present = torch.tensor([view in frames for view in self.views])
        return {"image": images, "mask": masks, "present": present, "index": index, "frame": t_ref}


class GlobalBatchSampler(Sampler):
    """Micro-batches of ``(study, seed)`` for one rank; a pure function of (seed, epoch, start step).

    Each epoch is one permutation of the studies; optimiser step ``s`` takes the global batch
    ``order[s·B:(s+1)·B]``, of which rank ``r`` takes the ``r``-th contiguous part and splits it into
    ``accumulation`` micro-batches. So the global batch of every step is the same whatever the number of ranks, and
    ``set_epoch(epoch, start_step)`` resumes mid-epoch at exactly the next micro-batch.
    """

    def __init__(self, n: int, seed: int, batch_size: int, micro_batch: int, rank: int = 0, world_size: int = 1):
        if batch_size % (world_size * micro_batch):
            raise ValueError(
                f"config key 'train.batch_size': {batch_size} is not a multiple of {world_size} ranks x "
                f"{micro_batch} (train.batch_size_per_device)"
            )
        self.steps_per_epoch = n // batch_size
        if self.steps_per_epoch < 1:
            raise ValueError(f"config key 'train.batch_size': {batch_size} is larger than the {n} studies")
        self.n, self.seed, self.batch_size, self.micro = n, seed, batch_size, micro_batch
        self.rank, self.world_size = rank, world_size
        self.per_rank = batch_size // world_size
        self.accumulation = self.per_rank // micro_batch
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.accumulation

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, 2))
        order = torch.randperm(self.n, generator=generator).tolist()
        for step in range(self.start_step, self.steps_per_epoch):
            chunk = order[step * self.batch_size : (step + 1) * self.batch_size]
            mine = chunk[self.rank * self.per_rank : (self.rank + 1) * self.per_rank]
            for j in range(self.accumulation):
                micro = mine[j * self.micro : (j + 1) * self.micro]
                yield [(i, derive_seed(self.seed, self.epoch, i, SAMPLE_STREAM)) for i in micro]
