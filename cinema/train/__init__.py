"""Fine-tuning: one config format (`FinetuneConfig`, YAML + ``key=value`` overrides) and one trainer for every task.

config = load_config("configs/acdc_segmentation_unet2d.yaml", ["train.n_epochs=10"])
result = Trainer(config).fit()            # or: cinema finetune CONFIG [key=value ...]
"""

from cinema.train.config import FinetuneConfig, config_from_dict, load_config
from cinema.train.trainer import FitResult, Trainer, finetune

__all__ = ["FinetuneConfig", "FitResult", "Trainer", "config_from_dict", "finetune", "load_config"]
