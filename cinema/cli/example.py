"""`cinema example`: placeholder until the bundled example lands."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", default="cinema_example", help="output folder")


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError
