"""``cinema pretrain CONFIG [key=value ...]``: pre-train a CineMA MAE, as one process or under torchrun."""

from __future__ import annotations

import argparse

HELP = "pre-train a CineMA masked autoencoder from a YAML config (one process, or every rank under torchrun)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config file (configs/pretrain_tiny.yaml, configs/pretrain_base.yaml)")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted overrides, e.g. data.shards=/data/shards train.batch_size_per_device=8 model.size=large",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from output_dir/checkpoint.pt when it exists (start fresh otherwise): safe to re-run after "
        "a crash, or under torchrun --max-restarts",
    )
    parser.add_argument("--check", action="store_true", help="validate the config and open the data, do not train")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or start-up messages")


def run(args: argparse.Namespace) -> int:
    import logging
    import os

    from cinema.cli import CinemaError
    from cinema.config import load_pretrain_config

    overrides = list(args.overrides)
    if args.quiet:
        overrides.append("train.progress_bar=false")
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.WARNING if args.quiet or rank else logging.INFO, format="%(message)s")
    config = load_pretrain_config(args.config, overrides)
    if args.check:
        from cinema.train.pretrain import build_mae
        from cinema.train.pretrain_data import open_source

        source = open_source(config)
        n_params = sum(p.numel() for p in build_mae(config).parameters())
        print(f"config and data OK: {len(source)} studies, MAE {config.model.size} with {n_params} parameters")
        return 0
    from cinema.train.pretrain import pretrain

    try:
        result = pretrain(config, resume=args.resume)
    except FloatingPointError as err:
        raise CinemaError(str(err)) from err
    if rank == 0:
        last = f", last loss {result.losses[-1]:.4f}" if result.losses else ""
        print(f"finished at epoch {result.epoch}, step {result.global_step}{last}; model in {result.model_dir}")
    return 0
