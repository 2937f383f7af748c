"""Cross-field checks of the run formats, so that a bad combination fails before any data is read.

Each check raises one `ValueError` naming the config key; `validate` is for fine-tuning, `validate_pretrain` for
pre-training. Keys and types were already checked by the parser (`cinema.config.parse`).
"""

from __future__ import annotations

from cinema.config.schema import (
    DATA_FORMATS,
    INITS,
    N_LANDMARKS,
    PRECISIONS,
    STRATEGIES,
    TASK_MODELS,
    TASKS,
    UNLISTED_CLASSES,
    VIEWS,
    VIT_SIZES,
    FinetuneConfig,
    PretrainConfig,
)
from cinema.io.errors import InputError

FORMATS_WITHOUT_MANIFEST = ("acdc", "cinema")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise InputError(message)


def validate(config: FinetuneConfig) -> None:  # noqa: C901 - a flat list of independent checks reads best
    """Cross-field checks, so that a bad combination fails before any data is read."""
    task, data, model, train, transform = config.task, config.data, config.model, config.train, config.transform
    _check(task in TASKS, f"config key 'task': {task!r} is not one of {', '.join(TASKS)}")
    _check(data.format in DATA_FORMATS, f"config key 'data.format': {data.format!r} is not one of {DATA_FORMATS}")
    # acdc reads each patient's Info.cfg; cinema finds each split's metadata CSV beside its folder (every split, the
    # split's name in a "split" column), so data.manifest only narrows it to one split
    _check(
        data.format in FORMATS_WITHOUT_MANIFEST or data.manifest is not None,
        f"config key 'data.manifest' is required for data.format {data.format!r}",
    )
    _check(
        model.name in TASK_MODELS[task],
        f"config key 'model.name': {model.name!r} cannot do {task}; use one of {', '.join(TASK_MODELS[task])}",
    )
    _check(len(model.views) > 0, "config key 'model.views' must name at least one view")
    for view in model.views:
        _check(view in VIEWS, f"config key 'model.views': unknown view {view!r}; expected one of {', '.join(VIEWS)}")
    _check(len(set(model.views)) == len(model.views), "config key 'model.views' lists a view twice")
    if model.name in ("unet", "resnet"):
        _check(len(model.views) == 1, f"config key 'model.views': {model.name} takes exactly one view")
    if task in ("landmark_heatmap", "landmark_coordinate"):
        _check(model.views[0] != "sax" and len(model.views) == 1, "landmark tasks take exactly one long-axis view")
    for key, view_cfg, n in (("data.sax", data.sax, 3), ("data.lax", data.lax, 2)):
        _check(len(view_cfg.patch_size) == n, f"config key '{key}.patch_size' needs {n} values")
        _check(len(view_cfg.spacing) == n, f"config key '{key}.spacing' needs {n} values")
        _check(all(p > 0 for p in view_cfg.patch_size), f"config key '{key}.patch_size' must be positive")
        _check(all(s > 0 for s in view_cfg.spacing), f"config key '{key}.spacing' must be positive")
        _check(view_cfg.in_chans >= 1, f"config key '{key}.in_chans' must be >= 1")
    if data.slice_2d:
        _check(task == "segmentation" and model.views == ["sax"], "data.slice_2d is for SAX segmentation only")
        _check(model.name == "unet", "data.slice_2d needs model.name unet (CineMA's SAX encoder is 3-D)")
    _check(data.context_slices >= 0, "config key 'data.context_slices' must be >= 0")
    _check(data.context_slices == 0 or data.slice_2d, "config key 'data.context_slices' needs data.slice_2d: true")
    _check(data.crop_center in ("heart", "image"), "config key 'data.crop_center' must be heart or image")
    _check(data.z_spacing in ("auto", "native", "fixed"), "config key 'data.z_spacing' must be auto, native or fixed")
    _check(data.intensity in ("frame", "cine"), "config key 'data.intensity' must be frame or cine")
    _check(data.sax.in_chans == 1 and data.lax.in_chans == 1, "in_chans must be 1: one channel per cine frame")
    _check(0.0 < data.proportion <= 1.0, "config key 'data.proportion' must be in (0, 1]")
    _check(0.0 <= data.val_fraction < 1.0, "config key 'data.val_fraction' must be in [0, 1)")
    _check(data.max_subjects == -1 or data.max_subjects > 0, "config key 'data.max_subjects' must be -1 or > 0")
    if task == "classification":
        _check(data.class_column is not None, "config key 'data.class_column' is required for classification")
        _check(bool(data.classes) and len(data.classes) >= 2, "config key 'data.classes' needs at least two classes")
        _check(len(set(data.classes)) == len(data.classes), "config key 'data.classes' lists a class twice")
        _check(
            data.unlisted_classes in UNLISTED_CLASSES,
            f"config key 'data.unlisted_classes' must be one of {', '.join(UNLISTED_CLASSES)}",
        )
    if task == "regression":
        _check(data.regression_column is not None, "config key 'data.regression_column' is required for regression")
        _check(
            (data.regression_mean is None) == (data.regression_std is None),
            "config keys 'data.regression_mean' and 'data.regression_std' go together",
        )
        _check(data.regression_std is None or data.regression_std > 0, "config key 'data.regression_std' must be > 0")
    if task == "survival":
        _check(data.time_column is not None, "config key 'data.time_column' is required for survival")
        _check(data.event_column is not None, "config key 'data.event_column' is required for survival")
    if task in ("landmark_heatmap", "landmark_coordinate"):
        _check(
            data.landmark_columns is not None and len(data.landmark_columns) == 2 * N_LANDMARKS,
            f"config key 'data.landmark_columns' needs {2 * N_LANDMARKS} columns (x1, y1, ..., x3, y3)",
        )
        _check(data.heatmap_sigma > 0, "config key 'data.heatmap_sigma' must be > 0")
        expected_out = N_LANDMARKS if task == "landmark_heatmap" else 2 * N_LANDMARKS
        _check(
            model.out_chans in (None, expected_out),
            f"config key 'model.out_chans' must be {expected_out} for {task}",
        )
    if task == "segmentation":
        _check(model.out_chans is None or model.out_chans >= 2, "config key 'model.out_chans' must be >= 2")
    _check(model.n_frames is None or model.n_frames >= 1, "config key 'model.n_frames' must be >= 1")
    _check(model.init in INITS, f"config key 'model.init': {model.init!r} is not one of {', '.join(INITS)}")
    _check(
        model.init == "scratch" or model.weights is not None,
        f"config key 'model.weights' is required when model.init is {model.init!r}",
    )
    _check(
        model.init != "pretrained" or model.name in ("convunetr", "convvit"),
        f"config key 'model.init': a CineMA MAE encoder cannot initialise {model.name}; use scratch or finetuned",
    )
    _check(
        not model.freeze_pretrained or model.init != "scratch",
        "config key 'model.freeze_pretrained' needs model.init pretrained or finetuned",
    )
    _check(model.reduce in ("all", "cls", "patch"), "config key 'model.reduce' must be all, cls or patch")
    for name in ("convunetr", "convvit"):
        size = getattr(model, name).size
        _check(size in VIT_SIZES, f"config key 'model.{name}.size': {size!r} is not one of {', '.join(VIT_SIZES)}")
    _check(train.n_epochs >= 1, "config key 'train.n_epochs' must be >= 1")
    _check(train.lr > 0 and train.min_lr >= 0, "config keys 'train.lr' / 'train.min_lr' must be positive")
    _check(0 <= train.n_warmup_epochs < train.n_epochs, "config key 'train.n_warmup_epochs' must be < n_epochs")
    _check(train.batch_size_per_device >= 1, "config key 'train.batch_size_per_device' must be >= 1")
    _check(
        train.batch_size >= train.batch_size_per_device and train.batch_size % train.batch_size_per_device == 0,
        "config key 'train.batch_size' must be a multiple of train.batch_size_per_device",
    )
    _check(0.0 < train.layer_decay <= 1.0, "config key 'train.layer_decay' must be in (0, 1]")
    _check(len(train.betas) == 2, "config key 'train.betas' needs two values")
    _check(0.0 <= train.label_smoothing < 1.0, "config key 'train.label_smoothing' must be in [0, 1)")
    _check(train.eval_interval >= 1, "config key 'train.eval_interval' must be >= 1")
    _check(
        train.checkpoint_interval is None or train.checkpoint_interval >= 1,
        "config key 'train.checkpoint_interval' must be >= 1",
    )
    _check(train.n_workers >= 0, "config key 'train.n_workers' must be >= 0")
    _check(train.early_stopping.patience >= 1, "config key 'train.early_stopping.patience' must be >= 1")
    _check(
        train.early_stopping.mode in (None, "max", "min"),
        "config key 'train.early_stopping.mode' must be max or min",
    )
    _check(0.0 <= transform.prob <= 1.0, "config key 'transform.prob' must be in [0, 1]")
    _check(0.0 <= transform.context_flip <= 1.0, "config key 'transform.context_flip' must be in [0, 1]")
    _check(0.0 <= transform.flip <= 1.0, "config key 'transform.flip' must be in [0, 1]")
    _check(len(transform.gamma) == 2 and 0 < transform.gamma[0] <= transform.gamma[1], "bad 'transform.gamma' range")
    _check(transform.noise_std >= 0 and 0 <= transform.scale_range < 1, "bad 'transform.noise_std' / 'scale_range'")
    for key, view_t, n in (("transform.sax", transform.sax, 3), ("transform.lax", transform.lax, 2)):
        _check(len(view_t.translate_range) == n, f"config key '{key}.translate_range' needs {n} values")
        _check(len(view_t.dropout_size) == n, f"config key '{key}.dropout_size' needs {n} values")


def validate_pretrain(config: PretrainConfig) -> None:
    data, train, model = config.data, config.train, config.model
    _check(
        (data.shards is None) != (data.index is None),
        "config key 'data.shards' or 'data.index': give exactly one (a `cinema shard` folder or a `cinema index` file)",
    )
    _check(data.max_studies == -1 or data.max_studies > 0, "config key 'data.max_studies' must be -1 or > 0")
    _check(data.crop_center in ("heart", "image"), "config key 'data.crop_center' must be heart or image")
    _check(data.z_spacing in ("auto", "native", "fixed"), "config key 'data.z_spacing' must be auto, native or fixed")
    _check(data.intensity in ("frame", "cine"), "config key 'data.intensity' must be frame or cine")
    for key, view_cfg, n in (("data.sax", data.sax, 3), ("data.lax", data.lax, 2)):
        _check(len(view_cfg.patch_size) == n, f"config key '{key}.patch_size' needs {n} values")
        _check(len(view_cfg.spacing) == n, f"config key '{key}.spacing' needs {n} values")
        _check(all(p > 0 for p in view_cfg.patch_size), f"config key '{key}.patch_size' must be positive")
        _check(all(s > 0 for s in view_cfg.spacing), f"config key '{key}.spacing' must be positive")
        _check(view_cfg.in_chans == 1, f"config key '{key}.in_chans' must be 1: one channel per cine frame")
    _check(model.size in VIT_SIZES, f"config key 'model.size': {model.size!r} is not one of {', '.join(VIT_SIZES)}")
    _check(len(model.views) > 0, "config key 'model.views' must name at least one view")
    for view in model.views:
        _check(view in VIEWS, f"config key 'model.views': unknown view {view!r}; expected one of {', '.join(VIEWS)}")
    _check(len(set(model.views)) == len(model.views), "config key 'model.views' lists a view twice")
    _check(len(model.patch_size) == 3 and len(model.scale_factor) == 3, "model.patch_size / scale_factor need 3 values")
    _check(len(model.enc_conv_chans) == 2, "config key 'model.enc_conv_chans' needs 2 values (two conv stages)")
    _check(model.enc_conv_n_blocks >= 1, "config key 'model.enc_conv_n_blocks' must be >= 1")
    _check(train.n_epochs >= 1, "config key 'train.n_epochs' must be >= 1")
    _check(train.lr > 0 and train.min_lr >= 0, "config keys 'train.lr' / 'train.min_lr' must be positive")
    _check(0 <= train.n_warmup_epochs < train.n_epochs, "config key 'train.n_warmup_epochs' must be < n_epochs")
    _check(train.batch_size_per_device >= 1, "config key 'train.batch_size_per_device' must be >= 1")
    _check(
        train.batch_size % train.batch_size_per_device == 0,
        "config key 'train.batch_size' must be a multiple of train.batch_size_per_device",
    )
    _check(len(train.betas) == 2, "config key 'train.betas' needs two values")
    _check(0.0 < train.mask_ratio < 1.0, "config key 'train.mask_ratio' must be in (0, 1)")
    _check(train.precision in PRECISIONS, f"config key 'train.precision' must be one of {', '.join(PRECISIONS)}")
    _check(train.strategy in STRATEGIES, f"config key 'train.strategy' must be one of {', '.join(STRATEGIES)}")
    _check(train.n_workers >= 0, "config key 'train.n_workers' must be >= 0")
    _check(train.checkpoint_every >= 1, "config key 'train.checkpoint_every' must be >= 1")
    _check(train.save_model_every >= 1, "config key 'train.save_model_every' must be >= 1")
    _check(train.max_steps is None or train.max_steps >= 1, "config key 'train.max_steps' must be >= 1")
