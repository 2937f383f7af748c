"""Options several sub-commands share, defined once so that they read and behave alike."""

from __future__ import annotations

import argparse


def add_study_option(parser: argparse.ArgumentParser, verb: str) -> None:
    """``--study ID``: which study to `verb` when a DICOM folder holds several (refused otherwise)."""
    parser.add_argument(
        "--study",
        dest="study_id",
        default=None,
        metavar="ID",
        help=f"the study to {verb} when a DICOM folder holds several (its pseudonym as listed in the error)",
    )


def add_force_option(parser: argparse.ArgumentParser, what: str) -> None:
    """``--force``: replace `what` only when it is cinema's own earlier output (`cinema.io.atomic`)."""
    parser.add_argument(
        "--force", action="store_true", help=f"replace {what} if it is an earlier cinema output (never anything else)"
    )
