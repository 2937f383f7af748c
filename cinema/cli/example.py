"""`cinema example`: the whole product on the real exam bundled with the package.

The same as ``cinema analyze`` without a STUDY (Sunnybrook Cardiac Data SCD0000301, CC0), writing to
``cinema_example/`` by default. Re-running replaces an earlier example output (a folder holding our report.html),
never anything else.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cinema.cli import analyze

HELP = "run the built-in example: analyse the bundled real cine exam (segmentation, volumes, EF, QC, report)"
DEFAULT_OUT = "cinema_example"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    analyze.add_arguments(parser)
    parser.set_defaults(out=DEFAULT_OUT)


def run(args: argparse.Namespace) -> int:
    if args.study is not None:
        raise ValueError("cinema example takes no STUDY; use `cinema analyze STUDY` for your own exams")
    out = Path(args.out)
    if out.is_dir() and (out / "report.html").is_file():
        args.force = True  # an earlier example run: safe to replace
    return analyze.run(args)
