"""The trainer's run mechanics: exact resume, early stopping, initialisation and freezing, the command line."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from test_train_data import landmark_data, make_landmark_cohort, tiny_config

import cinema.cli
from cinema.config import config_from_dict
from cinema.models.checkpoint import build_model, save_model
from cinema.train.runlog import read_csv_log
from cinema.train.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def landmarks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_landmark_cohort(tmp_path_factory.mktemp("landmarks"), n=9, n_val=3)


def heatmap_config(manifest: Path, out: Path, **train) -> dict:
    """ConvUNetR with dropout and drop path, full augmentation: every random stream is exercised."""
    values = tiny_config("landmark_heatmap", "convunetr", landmark_data(manifest), out, batch_size=2,
                         batch_size_per_device=1, **train)  # fmt: skip
    values["output_dir"] = str(out)
    return values


def test_resume_reproduces_the_uninterrupted_run(landmarks: Path, tmp_path: Path) -> None:
    full = Trainer(config_from_dict(heatmap_config(landmarks, tmp_path / "full", n_epochs=3)))
    full_result = full.fit()
    assert full.n_accum == 2 and full_result.global_step == 9  # 6 samples: 3 steps of 2 accumulated micro-batches

    first = Trainer(config_from_dict(heatmap_config(landmarks, tmp_path / "split", n_epochs=3)))
    assert first.fit(max_epochs=1).epochs_completed == 1
    # an interrupted stretch after the checkpoint leaves rows that the resume must drop
    with open(tmp_path / "split" / "train_log.csv", "a") as f:
        f.write("2,4,0.1,99.0,1.0,0.5,0.5\n")
    resumed = Trainer(config_from_dict(heatmap_config(landmarks, tmp_path / "split", n_epochs=3)), resume=True)
    result = resumed.fit()
    assert result.epochs_completed == 3 and result.global_step == 9

    full_log = read_csv_log(tmp_path / "full" / "train_log.csv")
    split_log = read_csv_log(tmp_path / "split" / "train_log.csv")
    assert [r["loss"] for r in split_log] == [r["loss"] for r in full_log]  # bit-identical, fp32 on the CPU
    assert [r["lr"] for r in split_log] == [r["lr"] for r in full_log]
    assert read_csv_log(tmp_path / "split" / "val_log.csv") == read_csv_log(tmp_path / "full" / "val_log.csv")
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_loader_workers_do_not_change_the_run(landmarks: Path, tmp_path: Path) -> None:
    # per-sample crops are seeded by the sampler in the main process, so worker processes draw the same samples
    serial = Trainer(config_from_dict(heatmap_config(landmarks, tmp_path / "serial", n_epochs=1))).fit()
    values = heatmap_config(landmarks, tmp_path / "workers", n_epochs=1, n_workers=2)
    parallel = Trainer(config_from_dict(values)).fit()
    assert parallel.train_losses == serial.train_losses


def test_early_stopping_triggers(landmarks: Path, tmp_path: Path) -> None:
    stopping = {"metric": "mean_distance", "patience": 2, "min_delta": 1000.0}  # no gain is ever large enough
    trainer = Trainer(config_from_dict(heatmap_config(landmarks, tmp_path / "run", n_epochs=10,
                                                      early_stopping=stopping)))  # fmt: skip
    result = trainer.fit()
    # evaluation 1 sets the best, 2 and 3 do not improve it by 1000 mm: stop after epoch 3 of 10
    assert result.stopped_early and result.epochs_completed == 3
    assert len(read_csv_log(tmp_path / "run" / "val_log.csv")) == 3
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 3 and state["early_stopping"]["count"] == 2 and state["stopped"]
    resumed = Trainer(trainer.config, resume=True).fit()  # a stopped run stays stopped
    assert resumed.stopped_early and resumed.epochs_completed == 3 and not resumed.train_losses


def test_runs_are_not_overwritten_and_resume_needs_the_same_config(landmarks: Path, tmp_path: Path) -> None:
    values = heatmap_config(landmarks, tmp_path / "run", n_epochs=2)
    Trainer(config_from_dict(values)).fit(max_epochs=1)
    with pytest.raises(ValueError, match="already holds a run"):
        Trainer(config_from_dict(values)).setup()
    with pytest.raises(ValueError, match=r"config differs from the checkpoint's in \['train.lr'\]"):
        Trainer(config_from_dict(values, ["train.lr=0.1"]), resume=True).setup()
    with pytest.raises(FileNotFoundError, match="cannot resume"):
        Trainer(config_from_dict(values, [f"output_dir={tmp_path / 'other'}"]), resume=True).setup()
    resumed = Trainer(config_from_dict(values, ["train.progress_bar=true"]), resume=True).fit()
    assert resumed.epochs_completed == 2


def test_init_from_our_own_mae_with_frozen_encoder(landmarks: Path, tmp_path: Path) -> None:
    mae = build_model(
        {
            "data": {"lax": {"patch_size": [32, 32], "in_chans": 1}},
            "model": {
                "name": "mae",
                "size": "tiny",
                "views": ["lax_4c"],
                "enc_conv_chans": [4, 8],
                "enc_conv_n_blocks": 1,
            },
        }  # fmt: skip
    )
    save_model(mae, tmp_path / "mae")
    values = heatmap_config(landmarks, tmp_path / "run", n_epochs=1)
    values["model"].update({"init": "pretrained", "weights": str(tmp_path / "mae"), "freeze_pretrained": True})
    trainer = Trainer(config_from_dict(values))
    trainer.setup()
    mae_state = mae.state_dict()
    loaded = {k: v.clone() for k, v in trainer.model.state_dict().items() if k.startswith("encoder.")}
    assert loaded and all(torch.equal(v, mae_state[k]) for k, v in loaded.items())
    scales = {group["lr_scale"] for group in trainer.optimizer.param_groups}
    assert scales == {1.0}  # every loaded (layer-decayed) parameter is frozen: only decoder and head train
    trainer.fit()
    after = trainer.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in loaded.items())  # frozen weights did not move

    unfrozen = heatmap_config(landmarks, tmp_path / "run2", n_epochs=1)
    unfrozen["model"].update({"init": "pretrained", "weights": str(tmp_path / "mae")})
    trainer = Trainer(config_from_dict(unfrozen))
    trainer.setup()
    n_blocks = len(trainer.model.encoder.blocks)
    scales = sorted({round(g["lr_scale"], 8) for g in trainer.optimizer.param_groups})
    assert scales == sorted({round(0.75**k, 8) for k in range(n_blocks + 2)})  # layer-wise decay from CineMA weights


def test_init_from_a_finetuned_model(landmarks: Path, tmp_path: Path) -> None:
    first = Trainer(config_from_dict(heatmap_config(landmarks, tmp_path / "first", n_epochs=1)))
    first.fit()
    values = heatmap_config(landmarks, tmp_path / "second", n_epochs=1)
    values["model"].update({"init": "finetuned", "weights": str(tmp_path / "first" / "model")})
    second = Trainer(config_from_dict(values))
    second.setup()
    saved = first.model.state_dict()
    assert all(torch.equal(v, saved[k]) for k, v in second.model.state_dict().items())
    other = heatmap_config(landmarks, tmp_path / "third", n_epochs=1)
    other["model"].update({"init": "finetuned", "weights": str(tmp_path / "first" / "model")})
    other["model"]["convunetr"]["dec_chans"] = [8, 8, 8, 8, 8]
    with pytest.raises(ValueError, match="does not fit the configured model"):
        Trainer(config_from_dict(other)).setup()
    missing = heatmap_config(landmarks, tmp_path / "fourth", n_epochs=1)
    missing["model"].update({"init": "finetuned", "weights": str(tmp_path / "nothing")})
    with pytest.raises(FileNotFoundError, match="model.weights"):
        Trainer(config_from_dict(missing)).setup()


def test_bf16_autocast_and_optional_tensorboard(landmarks: Path, tmp_path: Path) -> None:
    values = heatmap_config(landmarks, tmp_path / "run", n_epochs=1, amp=True, tensorboard=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = Trainer(config_from_dict(values)).fit()
    assert result.global_step == 3 and all(torch.isfinite(torch.tensor(result.train_losses)))
    if importlib.util.find_spec("tensorboard") is None:
        assert any("tensorboard is not installed" in str(w.message) for w in caught)
    else:
        assert any((tmp_path / "run" / "tensorboard").iterdir())


def run_cli(monkeypatch: pytest.MonkeyPatch, *argv: str) -> int:
    return cinema.cli.main(["finetune", *argv])


def test_command_line(landmarks: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(heatmap_config(landmarks, tmp_path / "run", n_epochs=1)))
    assert run_cli(monkeypatch, str(path), "--check") == 0
    assert "config and data OK: landmark_heatmap, 6 training samples, 3 validation samples" in capsys.readouterr().out
    assert not (tmp_path / "run").exists()  # a check writes nothing

    assert run_cli(monkeypatch, str(path), "train.n_epochs=2", "--quiet") == 0
    assert "finished 2 epochs (6 steps)" in capsys.readouterr().out
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()

    assert run_cli(monkeypatch, str(path), "train.n_epochs=2", "--quiet") == 2
    assert "already holds a run" in capsys.readouterr().err

    assert run_cli(monkeypatch, str(path), "train.learning_rate=1") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cinema finetune: error: ") and "unknown config key 'train.learning_rate'" in err
    assert len(err.splitlines()) == 1
