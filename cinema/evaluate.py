"""Evaluate a trained model on a dataset split: per-case CSV, summary JSON with subgroup breakdowns, plots.

The driver behind ``cinema evaluate``. A run folder written by `cinema.train.trainer.Trainer` (``config.yaml`` +
``splits.json`` + ``model/``) or a fine-tuning YAML config says which dataset and split to read and how; any other
official-format model folder can be scored instead (``weights``).

- Segmentation (SAX): every study is segmented with the full native-grid pipeline of `cinema.analysis.segment`
  (the same path ``cinema segment`` takes), so Dice, HD95 (mm), volumes (ml), EF (%) and LV mass (g) are computed on
  each image's own grid and spacing against its own manual labels at ED and ES. Function indices get Bland-Altman
  statistics (MAE, bias, limits of agreement) and a plot each.
- Segmentation (a long-axis view, e.g. the official ``mnms2_lax_4c`` model on M&Ms-2 LAX 4C labels): the same
  pipeline on the view's labelled frames; ED / ES are the input's when the study has no SAX cine (its frames are
  then the view's), else the labelled frames of largest / smallest manual LV area. Dice and HD95 (mm, in the image
  plane) per class at ED and ES, and as function indices the LV / RV areas (mm^2) at ED and ES and their fractional
  area change (%), predicted and manual.
- Segmentation without masks (``data.format: kaggle``, the Data Science Bowl's studies and volumes CSV): every
  stored SAX frame is segmented and, as in the reference's evaluation, EDV = the largest and ESV = the smallest LV
  volume over the frames; they and EF are compared with the CSV's Diastole / Systole volumes (Bland-Altman).
- Classification, regression, landmarks, survival: studies go through the trainer's own model-space preparation
  (`cinema.train.datasets.prepare_subject`, the validation dataset and the task's evaluation transform), so the
  numbers are those the trainer's validation would report, now kept per case (probabilities, restored regression
  values, landmark distances in mm, risk scores).

Every metric is broken down by any metadata column (``by``: group, sex, vendor, ...). Where the metadata pairs
studies (a ``pair_id`` column shared by a scan and its rescan, or a ``rescan_of`` column naming the first scan) the
scan-rescan coefficient of variation of the predicted (and manual) LVEF / EDV / ESV is reported as well.

Outputs (written into a temporary folder beside ``out_dir`` and renamed into place when complete)::

    per_case.csv                 one row per study: id, metadata, metrics (predicted and reference values)
    summary.json                 overall and per-subgroup summaries, scan-rescan CV, what was evaluated
    subgroups.csv                the same summaries as a flat table (one row per subgroup)
    bland_altman_<quantity>.png  segmentation function indices; regression target
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cinema.config import FinetuneConfig
from cinema.io.errors import InputError

if TYPE_CHECKING:
    from cinema.train.datasets import Entry

logger = logging.getLogger(__name__)

SPLITS = ("val", "train", "all")
PAIR_COLUMNS = ("pair_id", "rescan_of")

# Segmentation function indices: (column stem, plot title, unit).
FUNCTION_QUANTITIES: tuple[tuple[str, str, str], ...] = (
    ("lv_edv", "LV end-diastolic volume", "ml"),
    ("lv_esv", "LV end-systolic volume", "ml"),
    ("lv_ef", "LV ejection fraction", "%"),
    ("rv_edv", "RV end-diastolic volume", "ml"),
    ("rv_esv", "RV end-systolic volume", "ml"),
    ("rv_ef", "RV ejection fraction", "%"),
    ("lv_mass", "LV mass", "g"),
)
# The same for a long-axis segmentation: areas in the image plane and their fractional change.
LAX_FUNCTION_QUANTITIES: tuple[tuple[str, str, str], ...] = (
    ("lv_eda", "LV end-diastolic area", "mm2"),
    ("lv_esa", "LV end-systolic area", "mm2"),
    ("lv_fac", "LV fractional area change", "%"),
    ("rv_eda", "RV end-diastolic area", "mm2"),
    ("rv_esa", "RV end-systolic area", "mm2"),
    ("rv_fac", "RV fractional area change", "%"),
)
# Quantities whose scan-rescan reproducibility is reported (prediction and manual reference).
RESCAN_QUANTITIES = ("lv_ef", "lv_edv", "lv_esv")
# Metadata that only says where a study's files are: kept out of the per-case table.
_PATH_COLUMNS = {"path", "manifest", "sax", "lax_2c", "lax_3c", "lax_4c"}


@dataclass
class EvaluationResult:
    """What `evaluate` wrote and computed."""

    out_dir: Path
    task: str
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    plots: list[Path] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------------------
# What to evaluate: config, weights, studies
# ---------------------------------------------------------------------------------------------------------------------


def _data_roots(config: Any) -> list[Path]:
    """The data a run's config reads (its folder and manifest): an evaluation output must never replace them."""
    roots = [Path(config.data.dir)]
    if config.data.manifest:
        roots.append(Path(config.data.dir) / config.data.manifest)  # an absolute manifest path stays itself
    return roots


def resolve_source(
    source: str | Path, weights: str | Path | None = None, overrides: Sequence[str] | None = None
) -> tuple[FinetuneConfig, Path, dict[str, list[str]] | None]:
    """(config, model folder, train/val ids or None) for a run folder or a fine-tuning config file.

    A run folder holds ``config.yaml`` (the resolved config), ``splits.json`` and ``model/``. For a config file the
    splits and model of its ``output_dir`` are used when that run exists. ``weights`` replaces the model.
    """
    from cinema.config import load_config
    from cinema.config.parse import resolve_path

    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such run folder or config file")
    if source.is_dir():
        config_path = source / "config.yaml"
        if not config_path.is_file():
            raise FileNotFoundError(f"{source}: not a run folder (no config.yaml)")
        run_dir = source
    else:
        config_path = source
        run_dir = None
    config = load_config(config_path, list(overrides or []))
    if run_dir is None:
        run_dir = resolve_path(config.output_dir)
    splits = None
    splits_path = run_dir / "splits.json"
    if splits_path.is_file():
        try:
            splits = json.loads(splits_path.read_text())
        except json.JSONDecodeError as err:
            raise InputError(f"{splits_path}: not valid JSON ({err})") from None
        if not isinstance(splits, dict) or not all(isinstance(splits.get(k), list) for k in ("train", "val")):
            raise InputError(f"{splits_path}: expected lists 'train' and 'val' of study ids")
    model_dir = Path(weights) if weights is not None else run_dir / "model"
    if not model_dir.exists():
        hint = "" if weights is not None else " (train the run first, or pass --weights)"
        raise FileNotFoundError(f"model not found: {model_dir}{hint}")
    return config, model_dir, splits


def select_entries(config: FinetuneConfig, split: str, splits: Mapping[str, list[str]] | None = None) -> list[Entry]:
    """The dataset's studies of one split (`cinema.train.datasets.Entry`, sorted by id).

    ``val`` / ``train`` come from the run's ``splits.json`` when given, else from the trainer's own deterministic
    split of the config; ``all`` is every study the dataset lists (``data.max_subjects`` still applies).
    """
    from cinema.train.datasets import list_entries, split_entries, spread_subjects

    if split not in SPLITS:
        raise InputError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    entries = sorted(list_entries(config), key=lambda e: e.id)
    if split == "all":
        return spread_subjects(entries, config.data.max_subjects, config) if config.data.max_subjects > 0 else entries
    if splits is None:
        train, val = split_entries(entries, config)
        chosen = val if split == "val" else train
    else:
        by_id = {e.id: e for e in entries}
        missing = [i for i in splits[split] if i not in by_id]
        if missing:
            raise InputError(f"splits.json lists studies the dataset at {config.data.dir} lacks: {missing[:5]}")
        chosen = [by_id[i] for i in splits[split]]
    if not chosen:
        raise InputError(f"the {split} split is empty; choose another split (--split train or all)")
    return sorted(chosen, key=lambda e: e.id)


def case_metadata(entry: Entry, study_metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Scalar metadata of a study for the per-case table (file paths left out)."""
    merged = {**(study_metadata or {}), **entry.metadata}
    return {
        key: value
        for key, value in merged.items()
        if isinstance(value, (str, int, float, bool))
        and key not in _PATH_COLUMNS
        and not key.endswith(("_label", "_label_ed", "_label_es"))
    }


def check_columns(by: Sequence[str], entries: Sequence[Entry]) -> None:
    """Fail before any inference when a ``by`` column is in no study's metadata (the listing's, else a study's)."""
    available = {"id"} | {key for entry in entries for key in case_metadata(entry)}
    if all(column in available for column in by) or not entries:
        return
    available |= set(case_metadata(entries[0], entries[0].load().metadata))
    unknown = [column for column in by if column not in available]
    if unknown:
        raise InputError(
            f"no metadata column {unknown} to break metrics down by (available: {', '.join(sorted(available))})"
        )


# ---------------------------------------------------------------------------------------------------------------------
# Per-case rows
# ---------------------------------------------------------------------------------------------------------------------


def _scoring_predictor(weights: str | Path, device: str, postprocess: bool, batch_size: int) -> Any:
    """The predictor every segmentation evaluation scores with: fp32, so reported metrics are the same on every
    machine (inference elsewhere picks bf16 where the CPU computes it natively)."""
    from cinema.analysis.segment import SegmentationPredictor

    return SegmentationPredictor.from_weights(
        weights, device=device, postprocess=postprocess, batch_size=batch_size, amp=False
    )


def segmentation_rows(
    entries: Sequence[Entry],
    weights: str | Path,
    device: str = "cpu",
    postprocess: bool = True,
    batch_size: int = 32,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """One row per study: Dice and HD95 per class at ED and ES, function indices predicted and manual.

    Each study is segmented on its own grid (`segment_study`) and scored against its own ED / ES labels with the
    image's affine, so every physical quantity uses that image's spacing.
    """
    import torch

    from cinema.metrics import cardiac_case_metrics

    predictor = _scoring_predictor(weights, device, postprocess, batch_size)
    rows = []
    with torch.no_grad():
        for entry in entries:
            study = entry.load()
            view = study.view("sax")
            ed, es = study.ed_frame, study.es_frame
            if ed is None or es is None:
                raise InputError(f"{entry.source}: ED and ES frames are needed to evaluate segmentation")
            unlabelled = [name for name, f in (("ED", ed), ("ES", es)) if f not in view.labels]
            if unlabelled:
                raise InputError(f"{entry.source}: no manual labels at {' and '.join(unlabelled)}")
            pred = predictor.segment_study(study, frames=sorted({ed, es}))
            metrics = cardiac_case_metrics(pred[ed], view.labels[ed], pred[es], view.labels[es], view.affine)
            rows.append({"id": entry.id, **case_metadata(entry, study.metadata), **metrics})
            if progress:
                progress(f"{entry.id}: LV Dice ED {metrics['dice_ed_lv']:.3f}, ES {metrics['dice_es_lv']:.3f}")
    return rows


def _area_function(ed: np.ndarray, es: np.ndarray | None, pixel_mm2: float) -> dict[str, float]:
    """LV / RV areas (mm^2) at ED and ES and their fractional area change (%) of two 2-D label maps."""
    out: dict[str, float] = {}
    for name, value in (("lv", 3), ("rv", 1)):
        at_ed = float((ed == value).sum()) * pixel_mm2
        at_es = float((es == value).sum()) * pixel_mm2 if es is not None else float("nan")
        out[f"{name}_eda"], out[f"{name}_esa"] = at_ed, at_es
        out[f"{name}_fac"] = (at_ed - at_es) / at_ed * 100.0 if at_ed > 0 else float("nan")
    return out


def lax_segmentation_rows(
    entries: Sequence[Entry],
    weights: str | Path,
    view: str,
    device: str = "cpu",
    postprocess: bool = True,
    batch_size: int = 32,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """One row per study of a long-axis segmentation model: Dice and HD95 per class at ED and ES (NaN for ES when
    one frame is labelled), LV / RV areas and fractional area change, predicted and manual (see the module notes)."""
    import torch

    from cinema.metrics import ACDC_CLASSES, dice_per_class, hausdorff95_mm

    predictor = _scoring_predictor(weights, device, postprocess, batch_size)
    if predictor.model.view != view:
        raise InputError(f"{weights}: the model segments {predictor.model.view}, the run's view is {view}")
    rows = []
    with torch.no_grad():
        for entry in entries:
            study = entry.load()
            cine = study.view(view)
            labelled = sorted(cine.labels)
            if not labelled:
                raise InputError(f"{entry.source}: no manual {view} labels to evaluate against")
            known = (study.ed_frame, study.es_frame)
            if "sax" not in study.views and all(f in cine.labels for f in known):
                ed, es = known
            else:  # the study's ED / ES index its SAX cine: the view's own from its manual LV areas
                lv = [int((cine.labels[f] == 3).sum()) for f in labelled]
                ed = labelled[int(np.argmax(lv))]
                others = [f for f in labelled if f != ed]
                es = others[int(np.argmin([int((cine.labels[f] == 3).sum()) for f in others]))] if others else None
            pred = predictor.segment_study(study, frames=sorted({ed} | ({es} if es is not None else set())))
            row: dict[str, Any] = {"id": entry.id, **case_metadata(entry, study.metadata), "view": view}
            for phase, frame in (("ed", ed), ("es", es)):
                dice = dice_per_class(pred[frame], cine.labels[frame]) if frame is not None else {}
                hd95 = hausdorff95_mm(pred[frame], cine.labels[frame], cine.spacing[:2]) if frame is not None else {}
                for label, name in ACDC_CLASSES.items():
                    row[f"dice_{phase}_{name}"] = dice.get(label, float("nan"))
                    row[f"hd95_{phase}_{name}"] = hd95.get(label, float("nan"))
            pixel = float(cine.spacing[0] * cine.spacing[1])
            predicted = _area_function(pred[ed], pred[es] if es is not None else None, pixel)
            manual = _area_function(cine.labels[ed], cine.labels[es] if es is not None else None, pixel)
            for key in predicted:
                row[f"{key}_pred"], row[f"{key}_true"] = predicted[key], manual[key]
            rows.append(row)
            if progress:
                progress(f"{entry.id}: LV Dice ED {row['dice_ed_lv']:.3f}, ES {row['dice_es_lv']:.3f}")
    return rows


def volume_rows(
    entries: Sequence[Entry],
    weights: str | Path,
    device: str = "cpu",
    postprocess: bool = True,
    batch_size: int = 32,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """One row per study without masks: predicted LV EDV / ESV (max / min of the LV volume curve over every stored
    frame) and EF against the reference volumes of its metadata (``Diastole`` / ``Systole``, ml)."""
    import torch

    from cinema.analysis.measure import label_series, volume_curves
    from cinema.metrics import ejection_fraction

    predictor = _scoring_predictor(weights, device, postprocess, batch_size)
    rows = []
    with torch.no_grad():
        for entry in entries:
            study = entry.load()
            view = study.view("sax")
            labels = predictor.segment_study(study)
            lv = volume_curves(label_series(labels, view.n_frames), view.spacing)["lv"]
            edv, esv = float(lv.max()), float(lv.min())
            true_edv = float(entry.metadata.get("Diastole", float("nan")))
            true_esv = float(entry.metadata.get("Systole", float("nan")))
            row = {"id": entry.id, **case_metadata(entry, study.metadata), "n_frames": view.n_frames}
            row |= {"lv_edv_pred": edv, "lv_edv_true": true_edv, "lv_esv_pred": esv, "lv_esv_true": true_esv}
            row["lv_ef_pred"] = float(ejection_fraction(edv, esv)) if edv > 0 else float("nan")
            row["lv_ef_true"] = float(ejection_fraction(true_edv, true_esv)) if true_edv > 0 else float("nan")
            rows.append(row)
            if progress:
                progress(f"{entry.id}: LVEF {row['lv_ef_pred']:.1f} % (reference {row['lv_ef_true']:.1f} %)")
    return rows


def _function_quantities(config: FinetuneConfig) -> tuple[tuple[str, str, str], ...]:
    return FUNCTION_QUANTITIES if config.views == ["sax"] else LAX_FUNCTION_QUANTITIES


def prediction_rows(
    entries: Sequence[Entry],
    config: FinetuneConfig,
    weights: str | Path,
    device: str = "cpu",
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """One row per study for the study-level and landmark tasks, through the trainer's model-space pipeline.

    Rows hold ``y_true`` / ``y_pred`` (+ ``prob_<class>``) for classification, ``y_true`` / ``y_pred`` in the
    target's own units for regression, ``time`` / ``event`` / ``risk`` for survival, and ``distance_<k>`` /
    ``mean_distance`` in mm for landmarks.
    """
    import torch
    from torch.utils.data import DataLoader

    from cinema.models.checkpoint import load_model, read_config
    from cinema.models.inference import to_device, windowed_outputs
    from cinema.tasks import make_task
    from cinema.train.datasets import ValDataset, prepare_subject
    from cinema.train.runtime import autocast_context

    task = make_task(config)
    torch_device = torch.device(device)
    model = load_model(weights, device=torch_device)
    autocast = autocast_context(torch_device, "fp32")
    patch = {view: config.patch_size(view) for view in config.views}
    reduce = config.model.reduce
    mean = std = None
    if config.task == "regression":
        mean, std = _regression_stats(config, read_config(weights)[0], weights)
    subjects = [prepare_subject(entry, config) for entry in entries]  # targets stay in their own units
    dataset = ValDataset(subjects, config)
    loader = DataLoader(dataset, batch_size=1, shuffle=False)
    rows = []
    with torch.no_grad():
        for index, batch in enumerate(loader):
            entry = entries[dataset.samples[index][0]]  # one sample per study for these tasks
            row: dict[str, Any] = {"id": entry.id, **case_metadata(entry)}
            if config.task.startswith("landmark"):
                # the task's own validation on a one-study batch: its distances in mm are this case's
                row.update(task.evaluate(model, [batch], torch_device, autocast))
            else:
                images = task.prepare_eval(to_device(batch, torch_device))["image"]
                if config.task == "classification":
                    softmax = lambda x: torch.softmax(x, dim=1)  # noqa: E731
                    proba = windowed_outputs(model, images, patch, reduce, autocast, softmax)[0].cpu().numpy()
                    true = int(batch["target"][0])
                    row.update({"y_true": true, "y_pred": int(np.argmax(proba))})
                    row.update({"true_class": config.data.classes[true]})
                    row.update({"pred_class": config.data.classes[int(np.argmax(proba))]})
                    row.update({f"prob_{name}": float(p) for name, p in zip(config.data.classes, proba, strict=True)})
                elif config.task == "regression":
                    z = float(windowed_outputs(model, images, patch, reduce, autocast)[0, 0])
                    row.update({"y_true": float(batch["target"][0]), "y_pred": z * std + mean})
                else:  # survival
                    risk = float(windowed_outputs(model, images, patch, reduce, autocast)[0, 0])
                    row.update({"time": float(batch["time"][0]), "event": int(batch["event"][0]), "risk": risk})
            rows.append(row)
            if progress:
                progress(f"{entry.id}: done")
    return rows


def _regression_stats(config: FinetuneConfig, model_config: Mapping[str, Any], weights: Any) -> tuple[float, float]:
    """The z-scoring of the regression target: the run's config, else the model's own config.yaml."""
    if config.data.regression_mean is not None and config.data.regression_std is not None:
        return float(config.data.regression_mean), float(config.data.regression_std)
    column = config.data.regression_column
    stats = model_config.get("data", {}).get(column)
    if isinstance(stats, Mapping) and "mean" in stats and "std" in stats:
        return float(stats["mean"]), float(stats["std"])
    raise InputError(
        f"{weights}: the target {column!r} was z-scored but neither the config nor the model's config.yaml holds its "
        "mean and std (data.regression_mean / data.regression_std)"
    )


# ---------------------------------------------------------------------------------------------------------------------
# Summaries
# ---------------------------------------------------------------------------------------------------------------------


def _classification_metric(classes: Sequence[str]) -> Callable[[Sequence[Mapping[str, Any]]], dict[str, float]]:
    from cinema.metrics import classification_metrics
    from cinema.metrics.subgroups import column_values

    def metric(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        proba = np.stack([column_values(rows, f"prob_{name}") for name in classes], axis=1)
        return classification_metrics(column_values(rows, "y_true").astype(np.int64), proba)

    return metric


def _survival_metric(rows: Sequence[Mapping[str, Any]]) -> float:
    from cinema.metrics import concordance_index
    from cinema.metrics.subgroups import column_values

    return concordance_index(column_values(rows, "time"), column_values(rows, "event"), column_values(rows, "risk"))


def task_metrics(config: FinetuneConfig) -> tuple[list[str], dict[str, Callable]]:
    """(per-case columns averaged per group, group metrics) of a task, for `cinema.metrics.subgroup_table`."""
    from cinema.metrics import ACDC_CLASSES, bland_altman, from_columns, regression_metrics

    if config.task == "segmentation":
        per_case = [
            f"{metric}_{phase}_{name}"
            for metric in ("dice", "hd95")
            for phase in ("ed", "es")
            for name in ACDC_CLASSES.values()
        ]
        groups = {q: from_columns(bland_altman, f"{q}_pred", f"{q}_true") for q, _, _ in _function_quantities(config)}
        return per_case, groups
    if config.task == "classification":
        return [], {"classification": _classification_metric(config.data.classes)}
    if config.task == "regression":
        return [], {"regression": from_columns(regression_metrics, "y_pred", "y_true")}
    if config.task == "survival":
        return ["risk"], {"c_index": _survival_metric}
    return ["mean_distance", "distance_1", "distance_2", "distance_3"], {}


def scan_rescan_pairs(rows: Sequence[Mapping[str, Any]]) -> list[tuple[Mapping[str, Any], Mapping[str, Any]]]:
    """Pairs of rows marked as scan and rescan: the two rows sharing a ``pair_id``, or a row and its ``rescan_of``.

    A ``pair_id`` shared by other than exactly two studies is an error naming it.
    """
    pairs = []
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        value = row.get("pair_id")
        if value not in (None, "") and not (isinstance(value, float) and math.isnan(value)):
            groups.setdefault(str(value), []).append(row)
    for pair_id, members in sorted(groups.items()):
        if len(members) != 2:
            ids = [m.get("id") for m in members]
            raise InputError(f"pair_id {pair_id!r} marks {len(members)} studies {ids}; a scan-rescan pair needs two")
        pairs.append((members[0], members[1]))
    by_id = {str(row.get("id")): row for row in rows}
    for row in rows:
        first = row.get("rescan_of")
        if first in (None, "") or (isinstance(first, float) and math.isnan(first)):
            continue
        if str(first) not in by_id:
            raise InputError(f"study {row.get('id')!r}: rescan_of names {first!r}, which is not among the studies")
        pairs.append((by_id[str(first)], row))
    return pairs


def scan_rescan_summary(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> dict[str, float | int] | None:
    """Scan-rescan coefficient of variation (%) of each column over the marked pairs; None when nothing is paired."""
    from cinema.metrics import coefficient_of_variation
    from cinema.metrics.subgroups import column_values

    pairs = scan_rescan_pairs(rows)
    if not pairs:
        return None
    firsts, seconds = [a for a, _ in pairs], [b for _, b in pairs]
    summary: dict[str, float | int] = {"n_pairs": len(pairs)}
    for column in columns:
        if not any(column in row for row in rows):
            continue
        try:
            cv = coefficient_of_variation(column_values(firsts, column), column_values(seconds, column))
        except ValueError as err:  # a pair measured 0 on both scans (a failed prediction): one undefined number
            logger.warning("scan-rescan %s: %s; reported as NaN", column, err)
            cv = float("nan")
        summary[f"{column}_cv_percent"] = 100.0 * cv
    return summary


def summarise_rows(
    rows: Sequence[Mapping[str, Any]], config: FinetuneConfig, by: Sequence[str] = ()
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(summary dict, flat subgroup table) of per-case rows: overall, per value of each ``by`` column, scan-rescan."""
    from cinema.metrics import subgroup_table

    known = sorted({key for row in rows for key in row})
    unknown = [column for column in by if column not in known]
    if unknown:
        raise InputError(f"no metadata column {unknown} to break metrics down by (available: {', '.join(known)})")
    per_case, group_metrics = task_metrics(config)
    table = subgroup_table(rows, list(by), per_case, group_metrics)
    summary: dict[str, Any] = {"overall": _without_keys(table[0], ("column", "group")), "subgroups": {}}
    for entry in table[1:]:
        summary["subgroups"].setdefault(entry["column"], {})[entry["group"]] = _without_keys(entry, ("column", "group"))
    if config.task == "segmentation" and config.views == ["sax"]:
        rescan_columns = [f"{q}_{kind}" for q in RESCAN_QUANTITIES for kind in ("pred", "true")]
    elif config.task == "regression":
        rescan_columns = ["y_pred", "y_true"]
    else:
        rescan_columns = []
    if rescan_columns:
        rescan = scan_rescan_summary(rows, rescan_columns)
        if rescan is not None:
            summary["scan_rescan"] = rescan
    return summary, table


def _without_keys(values: Mapping[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if k not in keys}


def _json_ready(value: Any) -> Any:
    """NaN / inf -> None (strict JSON), numpy scalars -> Python numbers."""
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_plots(rows: Sequence[Mapping[str, Any]], config: FinetuneConfig, folder: Path) -> list[Path]:
    """Bland-Altman plots: segmentation function indices, the regression target; quantities with no pair skipped."""
    from cinema.metrics import bland_altman_plot
    from cinema.metrics.subgroups import column_values

    if config.task == "segmentation":
        quantities = [(f"{q}_pred", f"{q}_true", q, title, unit) for q, title, unit in _function_quantities(config)]
    elif config.task == "regression":
        column = config.data.regression_column
        quantities = [("y_pred", "y_true", column, column, "")]
    else:
        return []
    plots = []
    for pred_column, true_column, name, title, unit in quantities:
        pred, true = column_values(rows, pred_column), column_values(rows, true_column)
        if not np.any(np.isfinite(pred) & np.isfinite(true)):
            logger.warning("no finite %s pairs: no Bland-Altman plot", name)
            continue
        plots.append(bland_altman_plot(pred, true, folder / f"bland_altman_{name}.png", title=title, unit=unit))
    return plots


# ---------------------------------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------------------------------


def evaluate(
    source: str | Path,
    out_dir: str | Path,
    *,
    weights: str | Path | None = None,
    split: str = "val",
    by: Sequence[str] = (),
    overrides: Sequence[str] | None = None,
    device: str = "cpu",
    postprocess: bool = True,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
) -> EvaluationResult:
    """Evaluate the model of a run (or ``weights``) on a split of its dataset; write the outputs into ``out_dir``.

    Args:
        source: a run folder (config.yaml, splits.json, model/) or a fine-tuning YAML config.
        out_dir: output folder; an existing non-empty one is refused unless ``force``.
        weights: any official-format model folder (or config.yaml / .safetensors) instead of the run's model.
        split: ``val`` (default), ``train`` or ``all``.
        by: metadata columns to break every metric down by (``group``, ``sex``, ``vendor``, ...).
        overrides: dotted ``key=value`` config overrides (e.g. ``data.dir=/data/acdc`` for another copy of the data).
        device: ``cpu``, ``cuda``, ...
        postprocess: segmentation only, keep the largest component per structure (as ``cinema segment``).
    """
    from cinema.io.atomic import atomic_directory, check_output
    from cinema.metrics import write_csv

    out_dir = Path(out_dir)
    check_output(out_dir, [source], folder=True, force=force)  # before any work, not after an hour of inference
    config, model_dir, splits = resolve_source(source, weights, overrides)
    inputs = [source, model_dir, *_data_roots(config)]
    check_output(out_dir, inputs, folder=True, force=force)
    entries = select_entries(config, split, splits)
    check_columns(by, entries)
    logger.info("evaluating %s (%s) on %d %s studies", model_dir, config.task, len(entries), split)
    if config.task == "segmentation":
        if config.data.format == "kaggle":
            rows = volume_rows(entries, model_dir, device=device, postprocess=postprocess, progress=progress)
        elif config.views == ["sax"]:
            rows = segmentation_rows(entries, model_dir, device=device, postprocess=postprocess, progress=progress)
        elif len(config.views) == 1:
            rows = lax_segmentation_rows(
                entries, model_dir, config.views[0], device=device, postprocess=postprocess, progress=progress
            )
        else:
            raise InputError(f"segmentation evaluation covers one-view models; this run segments {config.views}")
    else:
        rows = prediction_rows(entries, config, model_dir, device=device, progress=progress)
    summary, table = summarise_rows(rows, config, by)
    summary = {
        "task": config.task,
        "source": str(source),
        "weights": str(model_dir),
        "split": split,
        "n_cases": len(rows),
        "by": list(by),
        **summary,
    }
    with atomic_directory(out_dir, force=force, inputs=inputs, command="evaluate") as tmp:
        write_csv(rows, tmp / "per_case.csv")
        write_csv(table, tmp / "subgroups.csv")
        (tmp / "summary.json").write_text(json.dumps(_json_ready(summary), indent=1, allow_nan=False))
        plots = write_plots(rows, config, tmp)
    return EvaluationResult(out_dir, config.task, rows, summary, [out_dir / p.name for p in plots])
