"""Pre-training runs: 2 ranks equal 1 rank with accumulation, SIGKILL + resume is exact, real data end to end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from pretrain_fixtures import make_cohort, tiny_pretrain_config
from safetensors.torch import load_file
from test_train_data import TINY_UNETR, acdc_data, tiny_config

from cinema.config import config_from_dict, pretrain_config_from_dict
from cinema.io.index import build_index, write_index
from cinema.models.checkpoint import load_model
from cinema.train.pretrain import pretrain
from cinema.train.pretrain_data import write_shards
from cinema.train.runlog import read_csv_log
from cinema.train.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

TESTS = Path(__file__).resolve().parent
WORKER = TESTS / "pretrain_worker.py"


@pytest.fixture(scope="module")
def cohort(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """12 real studies (10 ACDC SAX-only, M&Ms-2 SAX + LAX 4C, a LAX-only one) as an index and as shards."""
    root = tmp_path_factory.mktemp("pretrain")
    entries, _ = build_index([make_cohort(shared_dir, root, n_acdc=10)])
    index = write_index(entries, root / "index.jsonl")
    config = pretrain_config_from_dict(tiny_pretrain_config(root / "unused", {"index": str(index)}))
    write_shards(config, index, root / "shards", studies_per_shard=5)
    return {"index": index, "shards": root / "shards"}


def _env() -> dict[str, str]:
    src = str(TESTS.parent)
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{src}:{path}" if path else src}


def _write_config(values: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(values))
    return path


def _losses(run: Path) -> list[float]:
    return [row["loss"] for row in read_csv_log(run / "train_log.csv")]


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process_with_the_same_global_batch(cohort: dict[str, Path], tmp_path: Path) -> None:
    data = {"shards": str(cohort["shards"])}
    # global batch 4: one process accumulates 2 micro-batches of 2; two ranks take one micro-batch of 2 each
    single = pretrain(pretrain_config_from_dict(tiny_pretrain_config(tmp_path / "single", data)))
    assert single.global_step == 6  # 12 studies / 4 = 3 steps per epoch, 2 epochs
    config = _write_config(tiny_pretrain_config(tmp_path / "ddp", data), tmp_path / "ddp.yaml")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--standalone",
        str(WORKER),
        "pretrain",
        str(config),
        "--quiet",
    ]
    done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = read_csv_log(tmp_path / "ddp" / "train_log.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, 7))
    # The same samples, masks and initial weights on both sides; only the order of fp32 sums differs (gloo's
    # all-reduce of two partial gradients vs in-place accumulation), i.e. relative rounding of ~1e-7 per value.
    # Six Adam steps amplify that little (updates are bounded by lr = 3e-3), so 1e-5 is ~100x the rounding and
    # far below any real difference (a different batch split or mask changes the loss at the 1e-2 level).
    assert _losses(tmp_path / "ddp") == pytest.approx(single.losses, rel=1e-5)
    a = load_file(tmp_path / "single" / "model" / "model.safetensors")
    b = load_file(tmp_path / "ddp" / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-5, msg=key)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_gives_the_uninterrupted_losses(cohort: dict[str, Path], tmp_path: Path) -> None:
    data = {"index": str(cohort["index"])}  # the in-memory path (the test above uses shards)
    train = {"n_epochs": 3, "checkpoint_every": 2}
    full = pretrain(pretrain_config_from_dict(tiny_pretrain_config(tmp_path / "full", data, **train)))
    assert full.global_step == 9

    # Killed after step 5: the last checkpoint is step 4, i.e. epoch 2 after 1 of its 3 steps; step 5 is lost.
    values = tiny_pretrain_config(tmp_path / "killed", data, **train)
    config = _write_config(values, tmp_path / "killed.yaml")
    ready = tmp_path / "ready"
    command = [sys.executable, str(WORKER), "--stall-after", "5", "--ready", str(ready), "pretrain", str(config)]
    process = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240  # a guard against hanging forever, not a timing assertion
        while not ready.exists():
            assert process.poll() is None, process.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the training subprocess never reached step 5"
            time.sleep(0.1)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL
    state = torch.load(tmp_path / "killed" / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert (state["global_step"], state["epoch"], state["step_in_epoch"]) == (4, 1, 1)
    assert len(_losses(tmp_path / "killed")) == 5

    # resumed with 2 DataLoader workers: samples depend on (seed, epoch, study) only, not on who loads them
    resumed = pretrain(pretrain_config_from_dict(values, ["train.n_workers=2"]), resume=True)
    assert resumed.global_step == 9 and len(resumed.losses) == 5  # steps 5..9 again
    assert resumed.losses == full.losses[4:]  # exactly, in fp32 on the CPU
    assert _losses(tmp_path / "killed") == full.losses  # the log reads as one run
    a = load_file(tmp_path / "full" / "model" / "model.safetensors")
    b = load_file(tmp_path / "killed" / "model" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a checkpoint is never overwritten by a fresh start
    with pytest.raises(ValueError, match="already holds a run"):
        pretrain(pretrain_config_from_dict(values))
    with pytest.raises(ValueError, match=r"train\.lr"):
        pretrain(pretrain_config_from_dict(values, ["train.lr=1e-2"]), resume=True)


@pytest.mark.slow
def test_pretrained_model_loads_into_the_finetuning_trainer(
    cohort: dict[str, Path], acdc_dir: Path, tmp_path: Path
) -> None:
    data = {"index": str(cohort["index"])}
    result = pretrain(pretrain_config_from_dict(tiny_pretrain_config(tmp_path / "mae", data, n_epochs=4, lr=1e-2)))
    assert result.losses[-1] < result.losses[0]  # it learns something, even in 12 steps
    mae = load_model(result.model_dir)  # the official format
    assert type(mae).__name__ == "CineMA" and mae.views == ["sax", "lax_4c"]

    values = tiny_config("segmentation", "convunetr", acdc_data(acdc_dir, 4), tmp_path, n_epochs=1)
    values["model"].update(
        {"init": "pretrained", "weights": str(result.model_dir), "convunetr": {**TINY_UNETR, "drop_path": 0.0}}
    )
    trainer = Trainer(config_from_dict(values))
    trainer.setup()
    mae_state, seg_state = mae.state_dict(), trainer.model.state_dict()
    shared = [k for k in seg_state if k.startswith(("encoder.", "enc_down_dict.sax.")) and "pos_embed" not in k]
    assert len(shared) > 20
    for key in shared:
        assert torch.equal(seg_state[key], mae_state[key]), key
