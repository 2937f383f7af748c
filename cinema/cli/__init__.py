"""The `cinema` command line: a thin dispatcher over one module per sub-command.

Each module in `COMMANDS` defines `HELP`, `add_arguments(parser)` and `run(args) -> int`, and imports its heavy
dependencies inside `run` so that `cinema --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# sub-command -> module (each module's HELP is its one-line help)
COMMANDS: dict[str, str] = {
    "example": "cinema.cli.example",
    "analyze": "cinema.cli.analyze",
    "segment": "cinema.cli.segment",
    "predict": "cinema.cli.predict",
    "convert": "cinema.cli.convert",
    "finetune": "cinema.cli.finetune",
    "evaluate": "cinema.cli.evaluate",
    "cohort": "cinema.cli.cohort",
    "serve": "cinema.cli.serve",
    "index": "cinema.cli.index",
    "shard": "cinema.cli.shard",
    "pretrain": "cinema.cli.pretrain",
}


# exit statuses: 2 for what the user can fix (bad input, options, config or output path; argparse's own usage
# errors are 2 too), 1 for any other failure, 130 for Ctrl-C
EXIT_INPUT, EXIT_FAILURE, EXIT_INTERRUPTED = 2, 1, 130
# errors of the user's paths: a missing or unreadable file is theirs to fix
_PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, FileExistsError)


def __getattr__(name: str) -> type:
    # `CinemaError` (an error in a command's options) is `cinema.io.errors.InputError`, imported only when a command
    # needs it: importing cinema.io at start-up would load NumPy, nibabel and pydicom for `cinema --help`
    if name == "CinemaError":
        from cinema.io.errors import InputError

        return InputError
    raise AttributeError(f"module 'cinema.cli' has no attribute {name!r}")


def _one_line(err: BaseException) -> str:
    """The message of an error a user can act on, on one line, naming the file where Python knows it."""
    if isinstance(err, OSError) and err.filename is not None:
        return f"{err.filename}: {err.strerror or type(err).__name__}"
    if isinstance(err, MemoryError):
        return f"out of memory ({err})" if str(err) else "out of memory while reading or analysing the input"
    text = " ".join(str(err).split()) or type(err).__name__
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cinema", description="CineMA toolkit for cine cardiac MRI")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error instead of one line")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        # also accepted after the sub-command; SUPPRESS keeps the sub-parser from resetting a --debug given before it
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._module.run(args) or 0)
    except (ValueError, OSError, MemoryError) as err:
        # ValueError, OSError and MemoryError that are not InputError may be bugs: one line still, --debug shows more
        if getattr(args, "debug", False):
            raise
        from cinema.io.errors import InputError

        print(f"cinema {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_INPUT if isinstance(err, (InputError, *_PATH_ERRORS)) else EXIT_FAILURE
    except KeyboardInterrupt:
        print(f"cinema {args.command}: interrupted; nothing half-written was left in place", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
