"""The `cinema` command line: a thin dispatcher over one module per sub-command.

Each module in `COMMANDS` defines `add_arguments(parser)` and `run(args) -> int`, and imports its heavy
dependencies inside `run` so that `cinema --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "example": ("cinema.cli.example", "run the built-in example (MAE reconstruction of a bundled real image)"),
    "convert": ("cinema.cli.convert", "convert a DICOM cine exam to NIfTI cines + study.json"),
    "finetune": (
        "cinema.cli.finetune",
        "fine-tune a model (segmentation, classification, regression, landmarks, survival) from a YAML config",
    ),
    "evaluate": (
        "cinema.cli.evaluate",
        "evaluate a trained model on a dataset split: per-case CSV, summary JSON by subgroup, Bland-Altman plots",
    ),
}


class CinemaError(Exception):
    """An error a user can act on: printed as one line, exit status 1, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cinema", description="CineMA toolkit for cine cardiac MRI")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._module.run(args) or 0)
    except (CinemaError, ValueError, FileNotFoundError) as err:
        print(f"cinema {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
