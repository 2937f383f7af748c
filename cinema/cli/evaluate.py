"""``cinema evaluate RUN -o OUT``: score a trained model on a split of its dataset (per-case CSV, summary, plots).

RUN is a run folder written by ``cinema finetune`` (config.yaml + splits.json + model/) or its YAML config;
``--weights`` scores any other model folder on the same studies. See `cinema.evaluate` for the outputs.
"""

from __future__ import annotations

import argparse

HELP = "evaluate a trained model on a dataset split: per-case CSV, summary JSON by subgroup, Bland-Altman plots"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="RUN", help="run folder (config.yaml, splits.json, model/) or YAML config")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted config overrides, e.g. data.dir=/data/acdc to read another copy of the dataset",
    )
    parser.add_argument("-o", "--output", required=True, help="output folder (per_case.csv, summary.json, plots)")
    parser.add_argument("--weights", default=None, help="model folder to score instead of the run's model/")
    parser.add_argument("--split", default="val", choices=("val", "train", "all"), help="studies to score (val)")
    parser.add_argument(
        "--by", default="", help="comma-separated metadata columns to break metrics down by, e.g. group,sex,vendor"
    )
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    parser.add_argument(
        "--no-postprocess",
        action="store_true",
        help="segmentation: keep every connected component (default: the LV cavity's largest only)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace the output folder if it is an earlier cinema output (never anything else)",
    )
    parser.add_argument("--quiet", action="store_true", help="no per-study progress lines")


def run(args: argparse.Namespace) -> int:
    import logging

    from cinema.evaluate import evaluate

    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    by = [column.strip() for column in args.by.split(",") if column.strip()]
    result = evaluate(
        args.source,
        args.output,
        weights=args.weights,
        split=args.split,
        by=by,
        overrides=args.overrides,
        device=args.device,
        postprocess=not args.no_postprocess,
        force=args.force,
        progress=None if args.quiet else print,
    )
    overall = result.summary["overall"]
    headline = {
        "segmentation": ("dice_ed_lv_mean", "dice_es_lv_mean", "lv_ef_mae", "lv_ef_bias"),
        "classification": ("classification_accuracy", "classification_mcc", "classification_auroc"),
        "regression": ("regression_mae", "regression_bias"),
        "survival": ("c_index",),
    }.get(result.task, ("mean_distance_mean",))
    numbers = ", ".join(f"{key} {overall[key]:.4g}" for key in headline if isinstance(overall.get(key), (int, float)))
    print(f"evaluated {len(result.rows)} studies ({result.task}): {numbers}")
    print(f"wrote {result.out_dir}: per_case.csv, subgroups.csv, summary.json, {len(result.plots)} plot(s)")
    return 0
