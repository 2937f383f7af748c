"""``cinema shard INDEX -o SHARDS``: studies of an index into model space, written as WebDataset-style tar shards."""

from __future__ import annotations

import argparse

HELP = "write the studies of a `cinema index` file in model space as tar shards for pre-training at scale"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("index", help="index file written by `cinema index`")
    parser.add_argument("-o", "--output", required=True, metavar="SHARDS", help="shard folder to create")
    parser.add_argument(
        "--config",
        help="pre-training config whose data geometry (data.sax / data.lax) and model.views to use "
        "(default: the reference model space, all four views)",
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the config's keys")
    parser.add_argument("--studies-per-shard", type=int, default=1000, help="studies per tar file (default 1000)")
    parser.add_argument("--workers", type=int, default=1, help="processes preprocessing studies in parallel")
    parser.add_argument("--skip-bad", action="store_true", help="leave unreadable studies out instead of stopping")
    parser.add_argument("--force", action="store_true", help="replace an existing shard folder")


def run(args: argparse.Namespace) -> int:
    import sys

    from cinema.config import load_pretrain_config, pretrain_config_from_dict
    from cinema.train.pretrain_data import write_shards

    # the index is the input here, whatever the config's data source says
    overrides = [*args.overrides, f"data.index={args.index}", "data.shards=null"]
    if args.config:
        config = load_pretrain_config(args.config, overrides)
    else:
        config = pretrain_config_from_dict({"output_dir": "unused"}, overrides)

    def progress(done: int, total: int) -> None:
        if done == total or done % 100 == 0:
            print(f"sharded {done}/{total} studies", file=sys.stderr)

    n, skipped = write_shards(
        config,
        args.index,
        args.output,
        force=args.force,
        studies_per_shard=args.studies_per_shard,
        workers=args.workers,
        skip_bad=args.skip_bad,
        progress=progress,
    )
    for message in skipped:
        print(f"skipped {message}", file=sys.stderr)
    print(f"wrote {n} studies ({', '.join(config.model.views)}) to {args.output}")
    return 0
