"""``cinema index DATA_DIR... -o INDEX``: find and read every study under some folders, write a JSON-lines index."""

from __future__ import annotations

import argparse

HELP = "index the studies (DICOM exams, NIfTI files, ACDC / M&Ms / converted folders) under folders for pre-training"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data_dirs", nargs="+", metavar="DATA_DIR", help="folders (or NIfTI files) to search")
    parser.add_argument("-o", "--output", required=True, metavar="INDEX", help="index file to write (JSON lines)")
    parser.add_argument("--workers", type=int, default=1, help="processes reading studies in parallel")
    parser.add_argument(
        "--skip-bad", action="store_true", help="leave unreadable studies out (listed) instead of stopping"
    )
    parser.add_argument(
        "--force", action="store_true", help="replace INDEX if it is an index cinema wrote (never anything else)"
    )


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from cinema.io.atomic import check_output
    from cinema.io.index import build_index, is_index_file, write_index

    out = Path(args.output)
    check_output(out, args.data_dirs, folder=False, force=args.force, is_own_file=is_index_file)

    def progress(done: int, total: int) -> None:
        if done == total or done % 100 == 0:
            print(f"read {done}/{total} studies", file=sys.stderr)

    entries, skipped = build_index(args.data_dirs, workers=args.workers, skip_bad=args.skip_bad, progress=progress)
    for message in skipped:
        print(f"skipped {message}", file=sys.stderr)
    write_index(entries, out)
    views: dict[str, int] = {}
    for entry in entries:
        for view in entry["views"]:
            views[view] = views.get(view, 0) + 1
    counts = ", ".join(f"{n} {view}" for view, n in sorted(views.items()))
    print(f"indexed {len(entries)} studies ({counts}){f', skipped {len(skipped)}' if skipped else ''} -> {out}")
    return 0
