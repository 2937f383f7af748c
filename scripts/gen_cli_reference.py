"""The command-line reference, generated from the argparse definitions (`cinema.cli.build_parser`).

Used two ways:

- as a MkDocs hook (``hooks:`` in mkdocs.yml): a page holding the line ``<!-- cli-reference -->`` gets it replaced
  by every sub-command's ``--help`` text at build time, so the reference can never drift from the code;
- as a script: ``python scripts/gen_cli_reference.py`` prints the same Markdown.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PLACEHOLDER = "<!-- cli-reference -->"
HELP_WIDTH = 100

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # the checkout's package, also when mkdocs runs from another environment's copy
    sys.path.insert(0, str(_ROOT))


def _fixed_width(parser: argparse.ArgumentParser) -> None:
    # the same text whatever terminal (or none) the build runs in
    parser.formatter_class = lambda prog: argparse.HelpFormatter(prog, width=HELP_WIDTH, max_help_position=32)


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise RuntimeError("cinema's parser has no sub-commands")


def options(parser: argparse.ArgumentParser) -> list[str]:
    """Every option string a sub-command documents (suppressed ones left out)."""
    return [
        option for action in parser._actions if action.help is not argparse.SUPPRESS for option in action.option_strings
    ]


def cli_reference_markdown() -> str:
    """Markdown: ``cinema --help``, then one section per sub-command (in `cinema.cli.COMMANDS` order)."""
    from cinema.cli import COMMANDS, build_parser

    parser = build_parser()
    _fixed_width(parser)
    commands = _subcommands(parser)
    parts = ["## cinema", "", "```text", parser.format_help().rstrip(), "```", ""]
    for name in COMMANDS:
        sub = commands[name]
        _fixed_width(sub)
        parts += [f"## cinema {name}", "", "```text", sub.format_help().rstrip(), "```", ""]
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ANN001 (MkDocs hook signature)
    if PLACEHOLDER not in markdown:
        return markdown
    return markdown.replace(PLACEHOLDER, cli_reference_markdown())


if __name__ == "__main__":
    print(cli_reference_markdown())
