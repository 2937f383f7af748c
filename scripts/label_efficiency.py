"""Label efficiency: fine-tune with a fraction of the training labels, from MAE-pretrained weights vs from scratch.

    python scripts/label_efficiency.py CONFIG [key=value ...] [--fractions 0.1 0.25 0.5 1.0] [--mae MAE_FOLDER]
                                       [-o OUT] [--inits scratch pretrained]

For every fraction x initialisation one run of `cinema.train.trainer.Trainer` is made from CONFIG with
``data.proportion`` set to the fraction (the trainer draws the validation split first and then keeps that fraction of
the remaining training studies with the config's seed, so every run is scored on the same validation studies and the
smaller training sets are subsets of the larger ones). ``pretrained`` runs load the CineMA MAE encoder from ``--mae``
(the official ``cinema.safetensors`` or a folder from our own pre-training) and need a ConvUNetR / ConvViT config.

Outputs in OUT (default: ``<output_dir of CONFIG>_label_efficiency``): one run folder per combination
(``<init>_p<fraction>``), ``label_efficiency.csv`` (init, fraction, training studies, best validation metric and its
epoch) and ``label_efficiency.png`` (metric vs fraction of labels, one line per initialisation). Finished runs are
not repeated: an existing run folder is resumed, so an interrupted sweep continues where it stopped.
"""

from __future__ import annotations

import argparse
import io
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DEFAULT_FRACTIONS = (0.1, 0.25, 0.5, 1.0)
INITS = ("scratch", "pretrained")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="fine-tuning YAML config (see configs/)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides for every run")
    parser.add_argument("--fractions", nargs="+", type=float, default=list(DEFAULT_FRACTIONS))
    parser.add_argument(
        "--mae",
        default=None,
        help="MAE weights (file or model folder) for the pretrained runs (default: the config's model.weights when "
        "its model.init is pretrained)",
    )
    parser.add_argument(
        "--inits",
        nargs="+",
        choices=INITS,
        default=None,
        help="initialisations (default: both with --mae, else scratch)",
    )
    parser.add_argument("-o", "--output", default=None, help="sweep folder (default: <output_dir>_label_efficiency)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch messages")
    return parser.parse_args(argv)


def run_name(init: str, fraction: float) -> str:
    return f"{init}_p{fraction:g}"


def sweep(
    config_path: str | Path,
    fractions: Sequence[float],
    inits: Sequence[str],
    out_dir: str | Path,
    mae: str | Path | None = None,
    overrides: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Train every fraction x init combination (resuming existing runs); one result row per run."""
    from cinema.config import load_config
    from cinema.train.trainer import Trainer

    fractions = sorted(set(fractions))
    bad = [f for f in fractions if not 0.0 < f <= 1.0]
    if bad:
        raise ValueError(f"--fractions must be in (0, 1], got {bad}")
    if "pretrained" in inits and mae is None:
        raise ValueError("pretrained runs need --mae (MAE weights file or model folder)")
    if mae is not None and not Path(mae).exists():
        raise FileNotFoundError(f"--mae: {mae} does not exist")
    out_dir = Path(out_dir)
    # every combination is checked before the first (long) run starts
    configs = {}
    for init in inits:
        for fraction in fractions:
            extra = [f"data.proportion={fraction}", f"output_dir={out_dir / run_name(init, fraction)}"]
            # scratch runs train every weight, whatever the base config freezes for its pretrained encoder
            extra += [f"model.init={init}"]
            extra += [f"model.weights={mae}"] if init == "pretrained" else ["model.freeze_pretrained=false"]
            configs[(init, fraction)] = load_config(config_path, [*overrides, *extra])
    rows = []
    for (init, fraction), config in configs.items():
        run_dir = out_dir / run_name(init, fraction)
        trainer = Trainer(config, resume=(run_dir / "checkpoint.pt").exists())
        result = trainer.fit()
        rows.append(
            {
                "init": init,
                "fraction": fraction,
                "n_train_studies": len(set(trainer.train_set.subject_ids)),
                "n_val_studies": len(trainer.val_set.subject_ids) if trainer.val_set else 0,
                "metric": result.metric,
                "best": math.nan if result.best_metric is None else result.best_metric,
                "best_epoch": result.best_epoch,
                "epochs": result.epochs_completed,
                "run": str(run_dir),
            }
        )
        logging.getLogger(__name__).info("%s: best %s %.4f", run_name(init, fraction), result.metric, rows[-1]["best"])
    return rows


def plot(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Best validation metric against the fraction of training labels, one line per initialisation (PNG)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from cinema.io.atomic import write_bytes_atomic

    figure = Figure(figsize=(5.5, 4.0), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for init in dict.fromkeys(row["init"] for row in rows):
        points = sorted((row["fraction"] * 100.0, row["best"]) for row in rows if row["init"] == init)
        axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=init)
    metric = rows[0]["metric"] if rows else ""
    axes.set_xscale("log")
    ticks = sorted({row["fraction"] * 100.0 for row in rows})
    axes.set_xticks(ticks, [f"{t:g}" for t in ticks])
    axes.minorticks_off()
    axes.set_xlabel("training labels used (%)")
    axes.set_ylabel(f"best validation {metric}")
    axes.set_title("label efficiency")
    axes.grid(alpha=0.3)
    axes.legend(loc="best")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return write_bytes_atomic(path, buffer.getvalue())


def main(argv: Sequence[str] | None = None) -> int:
    from cinema.config import load_config
    from cinema.config.parse import resolve_path
    from cinema.metrics import write_csv

    args = parse_args(argv)
    overrides = list(args.overrides) + (["train.progress_bar=false"] if args.quiet else [])
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    try:
        base = load_config(args.config, overrides)
        # a config that already starts from an MAE names its weights: use them unless --mae says otherwise
        mae = args.mae or (base.model.weights if base.model.init == "pretrained" else None)
        inits = args.inits or (["scratch", "pretrained"] if mae else ["scratch"])
        out_dir = Path(args.output) if args.output else Path(f"{resolve_path(base.output_dir)}_label_efficiency")
        rows = sweep(args.config, args.fractions, inits, out_dir, mae, overrides)
    except (ValueError, FileNotFoundError) as err:
        print(f"label_efficiency: error: {err}", file=sys.stderr)
        return 1
    write_csv(rows, out_dir / "label_efficiency.csv")
    plot(rows, out_dir / "label_efficiency.png")
    for row in rows:
        best = f"{row['metric']} {row['best']:.4f}"
        print(f"{row['init']:>10} {row['fraction']:>6g}  {row['n_train_studies']:>4} studies  {best}")
    print(f"wrote {out_dir / 'label_efficiency.csv'} and {out_dir / 'label_efficiency.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
