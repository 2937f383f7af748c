"""``cinema cohort INPUT... -o OUT``: every exam under the inputs analysed, one row each in ``OUT/cohort.csv``.

``cinema cohort --merge SHARD... -o MERGED`` joins the shard folders of a cohort run on several nodes (``--shard I/N``
or a SLURM array / torchrun) after checking that no exam is missing or duplicated. See docs/cohort.md.
"""

from __future__ import annotations

import argparse

from cinema.cli.options import add_engine_option, add_precision_option, amp_of

HELP = "analyse many exams (folders, index files) into one table and page; resumable, sharded over nodes"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="exam folders or NIfTI files, folders of exams, or `cinema index` files; with --merge: the shard "
        "folders (or the OUT holding them)",
    )
    parser.add_argument(
        "-o",
        "--out",
        required=True,
        help="cohort folder: created, or resumed when it is one of the same command (with --merge: the new folder)",
    )
    parser.add_argument("--workers", type=int, default=1, help="worker processes, each loading the model once")
    parser.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="analyse shard I of N (0-based) into OUT/shard-I-of-N (default: from SLURM_ARRAY_TASK_ID/COUNT or "
        "torchrun's RANK/WORLD_SIZE, else all exams into OUT)",
    )
    parser.add_argument(
        "--device", default="cpu", help="cpu (default), cuda (cuda:LOCAL_RANK under torchrun), cuda:1, ..."
    )
    parser.add_argument("--weights", default=None, help="SAX segmentation model folder (default: shipped model)")
    parser.add_argument("--batch-size", type=int, default=32, help="slices (2-D model) or frames (3-D) per pass")
    add_precision_option(parser)
    add_engine_option(parser)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads per worker process (default: the cores shared out)"
    )
    parser.add_argument("--retry-failed", action="store_true", help="analyse again the exams that failed before")
    parser.add_argument(
        "--merge", action="store_true", help="join the shard folders given as INPUTs into OUT (checked, atomic)"
    )
    parser.add_argument("--force", action="store_true", help="with --merge: replace OUT if cinema wrote it")
    parser.add_argument("--quiet", action="store_true", help="no line per exam")


def run(args: argparse.Namespace) -> int:
    import sys

    from cinema.cli import CinemaError

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    if args.merge:
        from cinema.cohort import merge_cohorts

        summary = merge_cohorts(args.inputs, args.out, force=args.force)
        print(
            f"merged {summary.shards} shard(s): {summary.exams} exams ({summary.done} done, {summary.failed} failed) "
            f"-> {summary.folder}/cohort.csv, cohort.html"
        )
        return 0
    if args.force:
        raise CinemaError("--force is only for --merge: a cohort folder is resumed, never replaced")
    if args.batch_size < 1:
        raise CinemaError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.threads is not None and args.threads < 1:
        raise CinemaError(f"--threads must be >= 1, got {args.threads}")

    from cinema.cohort import CohortSettings, run_cohort

    settings = CohortSettings(
        weights=args.weights,
        device=args.device,
        batch_size=args.batch_size,
        amp=amp_of(args),
        engine=args.engine,
        threads=args.threads,
        debug=bool(getattr(args, "debug", False)),
    )
    summary = run_cohort(
        args.inputs,
        args.out,
        settings=settings,
        workers=args.workers,
        shard=args.shard,
        retry_failed=args.retry_failed,
        log=None if args.quiet else log,
    )
    failed = f"; --retry-failed analyses the {summary.failed} failed again" if summary.failed else ""
    print(
        f"{summary.planned} exams: {summary.done} done, {summary.failed} failed ({summary.ran} analysed now, "
        f"{summary.skipped} finished before) -> {summary.folder}/cohort.csv, cohort.html{failed}"
    )
    return 0
