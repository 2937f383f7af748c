"""Training loops: fine-tuning (one trainer for every task) and CineMA MAE pre-training.

    from cinema.config import load_config
    from cinema.train.trainer import Trainer

    config = load_config("configs/acdc_segmentation_unet2d.yaml", ["train.n_epochs=10"])
    result = Trainer(config).fit()            # or: cinema finetune CONFIG [key=value ...]

Modules: `trainer` (the fine-tuning loop), `datasets` (studies -> samples), `optim` (layer-wise decay, schedule,
early stopping), `pretrain` (the MAE loop, one process or many under torchrun), `pretrain_data` (shards, sampler),
`runtime` (what both loops share: device, mixed precision, checkpoints, resume, RNG state), `runlog` (CSV /
TensorBoard logs). The run formats are `cinema.config`; the task definitions (losses, metrics) are `cinema.tasks`,
which knows nothing of this package.
"""
