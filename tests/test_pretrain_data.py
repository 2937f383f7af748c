"""Pre-training data: the study index, the shard format (round trip, random access, damage), the sampler."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pretrain_fixtures import make_cohort, tiny_pretrain_config

import cinema.cli
from cinema.config import load_pretrain_config, pretrain_config_from_dict
from cinema.io.index import build_index, find_studies, read_index, write_index
from cinema.io.shards import ShardStore, iter_tar_samples
from cinema.train.pretrain_data import GlobalBatchSampler, InMemoryStudies, PretrainDataset, open_source, write_shards

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cohort(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pretrain_data")
    data = make_cohort(shared_dir, root, n_acdc=3)
    entries, skipped = build_index([data])
    assert not skipped
    return data, write_index(entries, root / "index.jsonl")


def test_index_finds_every_kind_of_study(cohort: tuple[Path, Path], sunnybrook_dir: Path, tmp_path: Path) -> None:
    data, index = cohort
    entries = {e["id"]: e for e in read_index(index)}
    assert sorted(entries) == [
        "data/acdc/patient001",
        "data/acdc/patient002",
        "data/acdc/patient003",
        "data/lax_only",
        "data/mnms2",
    ]
    assert entries["data/acdc/patient001"]["kind"] == "acdc"
    assert entries["data/acdc/patient001"]["views"]["sax"]["n_frames"] == 2  # ED and ES only
    mnms2 = entries["data/mnms2"]
    assert sorted(mnms2["views"]) == ["lax_4c", "sax"]
    assert [Path(p).name for p in mnms2["files"]["sax"]] == ["sax_ed.nii.gz", "sax_es.nii.gz"]  # ED first
    assert list(entries["data/lax_only"]["views"]) == ["lax_4c"]
    # DICOM exams are found by their preamble, one per StudyInstanceUID, read from their folder
    found = find_studies([sunnybrook_dir])
    assert [(e["id"], e["kind"]) for e in found] == [
        ("sunnybrook/SCD0000301/dicom", "dicom"),
        ("sunnybrook/SCD0000401/dicom", "dicom"),
    ]
    # label maps are not pre-training images
    assert not any("gt" in Path(p).name for e in entries.values() for ps in e.get("files", {}).values() for p in ps)


def test_index_cli_names_an_unreadable_file_and_writes_nothing(cohort: tuple[Path, Path], tmp_path: Path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "good_sax.nii.gz").symlink_to(next((cohort[0] / "mnms2").glob("sax_ed.nii.gz")))
    (data / "broken_sax.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    out = tmp_path / "index.jsonl"
    assert cinema.cli.main(["index", str(data), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "broken_sax.nii.gz" in err and err.count("\n") == 1
    assert not out.exists() and not list(tmp_path.glob(".*index*"))
    # --skip-bad leaves it out and says so
    assert cinema.cli.main(["index", str(data), "-o", str(out), "--skip-bad"]) == 0
    assert [e["id"] for e in read_index(out)] == ["data/good"]
    assert "skipped data/broken" in capsys.readouterr().err


def test_shards_round_trip_equals_in_memory_loading(cohort: tuple[Path, Path], tmp_path: Path) -> None:
    _, index = cohort
    config = pretrain_config_from_dict(tiny_pretrain_config(tmp_path / "run", {"index": str(index)}))
    memory = InMemoryStudies(config)
    n, skipped = write_shards(config, index, tmp_path / "shards", studies_per_shard=2)
    assert n == len(memory) == 5 and not skipped
    store = ShardStore(tmp_path / "shards")
    assert len(list((tmp_path / "shards").glob("shard-*.tar"))) == 3
    for i in range(len(memory)):
        assert store.study_id(i) == memory.study_id(i)
        assert store.n_frames(i) == memory.n_frames(i)
        for view, n_frames in memory.n_frames(i).items():
            for t in range(n_frames):
                np.testing.assert_array_equal(store.frame(i, view, t), memory.frame(i, view, t))
    assert memory.arrays[0]["sax"].shape == (2, 32, 32, 8) and memory.arrays[0]["sax"].dtype == np.uint8
    # the tar files are plain WebDataset samples too
    samples = [s for shard in sorted((tmp_path / "shards").glob("shard-*.tar")) for _, s in iter_tar_samples(shard)]
    assert [s["json"]["id"] for s in samples] == [memory.study_id(i) for i in range(n)]
    np.testing.assert_array_equal(samples[4]["lax_4c"], memory.arrays[4]["lax_4c"])
    # a shard folder written for another geometry is refused, naming the key
    other = tiny_pretrain_config(tmp_path / "run", {"shards": str(tmp_path / "shards")})
    other["data"]["sax"] = {"spacing": [6.0, 6.0, 10.0], "patch_size": [48, 48, 8]}
    with pytest.raises(ValueError, match=r"data\.sax"):
        open_source(pretrain_config_from_dict(other))


def test_damaged_shards_are_named(cohort: tuple[Path, Path], tmp_path: Path) -> None:
    _, index = cohort
    config = pretrain_config_from_dict(tiny_pretrain_config(tmp_path / "run", {"index": str(index)}))
    write_shards(config, index, tmp_path / "shards", studies_per_shard=2)
    shard = tmp_path / "shards" / "shard-000001.tar"
    shard.write_bytes(shard.read_bytes()[:4000])
    with pytest.raises(ValueError, match="shard-000001.tar"):
        ShardStore(tmp_path / "shards")
    # an existing folder is never replaced without force; a failing study leaves nothing behind
    with pytest.raises(ValueError, match="not empty"):
        write_shards(config, index, tmp_path / "shards")
    bad_index = tmp_path / "bad.jsonl"
    entries = read_index(index) + [{"id": "gone", "kind": "nifti", "path": str(tmp_path / "gone_sax.nii.gz")}]
    write_index(entries, bad_index)
    with pytest.raises(ValueError, match="gone_sax.nii.gz"):
        write_shards(config, bad_index, tmp_path / "new_shards")
    assert not (tmp_path / "new_shards").exists() and not list(tmp_path.glob(".tmp-*"))


def test_samples_are_random_per_epoch_reproducible_and_keep_missing_views(cohort: tuple[Path, Path], tmp_path):
    _, index = cohort
    config = pretrain_config_from_dict(tiny_pretrain_config(tmp_path / "run", {"index": str(index)}))
    source = InMemoryStudies(config)
    dataset = PretrainDataset(source, config, {"sax": 2 * 2 * 8, "lax_4c": 2 * 2})

    def epoch_samples(epoch: int, rank: int = 0, world: int = 1, batch: int = 4, micro: int = 2) -> list:
        sampler = GlobalBatchSampler(
            len(dataset), seed=3, batch_size=batch, micro_batch=micro, rank=rank, world_size=world
        )
        sampler.set_epoch(epoch)
        return [key for micro_batch in sampler for key in micro_batch]

    # the reference's bug: the same frame of a study in every epoch. Here frames and masks change with the epoch.
    frames = {}
    for epoch in range(12):
        for key in epoch_samples(epoch, batch=5, micro=5):
            frames.setdefault(key[0], set()).add(dataset[key]["frame"])
    assert all(seen == {0, 1} for seen in frames.values())  # 2 frames each: both seen over 12 epochs
    a, b = epoch_samples(0), epoch_samples(1)
    assert [k[1] for k in a] != [k[1] for k in b]
    # reproducible from the seed, whatever the process asking
    key = a[0]
    first, again = dataset[key], dataset[key]
    for view in ("sax", "lax_4c"):
        assert torch.equal(first["image"][view], again["image"][view])
        assert torch.equal(first["mask"][view], again["mask"][view])
        assert int(first["mask"][view].sum()) == {"sax": 24, "lax_4c": 3}[view]  # 75 % of the tokens
    # two ranks split every global batch between them, one rank sees it whole
    assert epoch_samples(0, 0, 2) + epoch_samples(0, 1, 2) == a
    # studies missing a view: zeros, flagged absent
    ids = [source.study_id(i) for i in range(len(source))]
    acdc = dataset[(ids.index("data/acdc/patient001"), 7)]
    assert acdc["present"].tolist() == [True, False] and not acdc["image"]["lax_4c"].any()
    lax = dataset[(ids.index("data/lax_only"), 7)]
    assert lax["present"].tolist() == [False, True] and lax["image"]["lax_4c"].shape == (1, 32, 32)
    # resuming mid-epoch continues with exactly the next micro-batch
    sampler = GlobalBatchSampler(len(dataset), seed=3, batch_size=2, micro_batch=1)
    sampler.set_epoch(4)
    full = list(sampler)
    assert len(full) == 4  # 5 studies, global batch 2: two steps of two micro-batches, the odd study dropped
    sampler.set_epoch(4, start_step=1)
    assert list(sampler) == full[2:] and len(sampler) == 2


def test_config_errors_name_the_key(tmp_path: Path, capsys) -> None:
    base = tiny_pretrain_config(tmp_path / "run", {"index": "x.jsonl"})
    with pytest.raises(ValueError, match=r"unknown config key 'train\.lrr' \(did you mean 'lr'\?\)"):
        pretrain_config_from_dict(base, ["train.lrr=1"])
    with pytest.raises(ValueError, match=r"data\.shards' or 'data\.index'"):
        pretrain_config_from_dict(base, ["data.shards=s"])
    with pytest.raises(ValueError, match=r"model\.views': unknown view 'lax_5c'"):
        pretrain_config_from_dict(base, ["model.views=[sax,lax_5c]"])
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps(base))
    assert cinema.cli.main(["pretrain", str(config), "train.precision=fp8"]) == 2
    assert "train.precision" in capsys.readouterr().err
    assert cinema.cli.main(["pretrain", str(config)]) == 2  # the index does not exist
    assert "x.jsonl" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["pretrain_tiny.yaml", "pretrain_base.yaml"])
def test_shipped_pretrain_configs_validate(name: str) -> None:
    path = Path(__file__).resolve().parents[1] / "configs" / name
    with pytest.raises(ValueError, match=r"data\.shards' or 'data\.index'"):  # the data must be named
        load_pretrain_config(path)
    config = load_pretrain_config(path, ["data.shards=somewhere"])
    if name == "pretrain_base.yaml":  # the reference recipe (reference §6)
        train = config.train
        assert (train.lr, train.min_lr, train.n_warmup_epochs, train.n_epochs) == (1e-3, 1e-6, 10, 800)
        assert (train.batch_size, train.weight_decay, train.betas, train.clip_grad) == (64, 0.05, [0.9, 0.95], 5.0)
        assert train.mask_ratio == 0.75 and config.model.size == "base"
        assert config.image_size() == {
            "sax": [192, 192, 16],
            "lax_2c": [256, 256],
            "lax_3c": [256, 256],
            "lax_4c": [256, 256],
        }
