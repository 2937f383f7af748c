"""Fine-tuning: one config format (`FinetuneConfig`, YAML + ``key=value`` overrides) and one trainer for every task.

    config = load_config("configs/acdc_segmentation_unet2d.yaml", ["train.n_epochs=10"])
    result = Trainer(config).fit()            # or: cinema finetune CONFIG [key=value ...]

Modules: `config` (the format), `augment` (batched torch augmentation), `datasets` (studies -> samples), `optim`
(layer-wise decay, schedule, early stopping), `trainer` (the loop), `runlog` (CSV / TensorBoard logs). The task
definitions (losses, metrics) live in `cinema.tasks`, which uses `config` and `augment` only.
"""

__all__ = ["FinetuneConfig", "FitResult", "Trainer", "config_from_dict", "finetune", "load_config"]

_EXPORTS = {
    "FinetuneConfig": "cinema.train.config",
    "config_from_dict": "cinema.train.config",
    "load_config": "cinema.train.config",
    "FitResult": "cinema.train.trainer",
    "Trainer": "cinema.train.trainer",
    "finetune": "cinema.train.trainer",
}


def __getattr__(name: str):
    # Lazy, so that `cinema.tasks` can use `cinema.train.config` / `augment` without importing the trainer (which
    # imports `cinema.tasks`): no import cycle whichever package is imported first.
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'cinema.train' has no attribute {name!r}")
