"""The documentation: the MkDocs site builds in strict mode (no broken links, anchors or API references, no warnings),
its command-line reference covers every sub-command and option, and the README stays short with working links."""

from __future__ import annotations

import argparse
import html
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
README = REPO_ROOT / "README.md"
HOOK = REPO_ROOT / "scripts" / "gen_cli_reference.py"
README_MAX_LINES = 150
# what `mkdocs build` needs: MkDocs, the Material theme and mkdocstrings with its Python handler (the `dev` extra)
DOC_MODULES = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")


def _missing_doc_tools() -> list[str]:
    missing = []
    for name in DOC_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:  # a parent package is missing
            found = False
        if not found:
            missing.append(name)
    return missing


def _hook_module():
    spec = importlib.util.spec_from_file_location("gen_cli_reference", HOOK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _subcommand_parsers() -> dict[str, argparse.ArgumentParser]:
    from cinema.cli import build_parser

    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("cinema's parser has no sub-commands")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    missing = _missing_doc_tools()
    if missing:
        message = f"documentation tools not installed ({', '.join(missing)}): pip install -e '.[dev]'"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI must build the documentation")
        pytest.skip(message)
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    return out


def test_site_builds_strictly(site: Path):
    for page in ("index.html", "report/index.html", "safety/index.html", "model-card/index.html", "cli/index.html"):
        assert (site / page).is_file(), f"{page} missing from the built site"
    api = (site / "api" / "io" / "index.html").read_text(encoding="utf-8")
    assert 'id="cinema.io.atomic.check_output"' in api, "the API reference did not render cinema.io.atomic"


def test_cli_reference_page_covers_every_command_and_option(site: Path):
    from cinema.cli import COMMANDS

    page = html.unescape((site / "cli" / "index.html").read_text(encoding="utf-8"))
    assert "<!-- cli-reference -->" not in page, "the hook did not replace the placeholder"
    parsers = _subcommand_parsers()
    hook = _hook_module()
    for name in COMMANDS:
        assert f'id="cinema-{name}"' in page, f"no section for `cinema {name}`"
        assert f"usage: cinema {name}" in page, f"no usage line for `cinema {name}`"
        for option in hook.options(parsers[name]):
            assert option in page, f"`cinema {name} {option}` is missing from the command-line reference"
    assert "--force" in " ".join(hook.options(parsers["analyze"]))


def test_cli_reference_markdown_without_mkdocs():
    """The generator itself needs only argparse: every sub-command gets its own section with its --help text."""
    from cinema.cli import COMMANDS

    markdown = _hook_module().cli_reference_markdown()
    sections = re.findall(r"^## cinema (\w+)$", markdown, flags=re.MULTILINE)
    assert sections == list(COMMANDS)
    for name, parser in _subcommand_parsers().items():
        assert parser.format_usage().split()[1:3] == ["cinema", name]
        assert f"usage: cinema {name}" in markdown


def test_readme_is_short_and_its_links_resolve():
    text = README.read_text(encoding="utf-8")
    n_lines = len(text.splitlines())
    assert n_lines <= README_MAX_LINES, (
        f"README.md has {n_lines} lines; move detail to docs/ (at most {README_MAX_LINES})"
    )
    # .ci/run and new users rely on these two commands
    assert "./run.sh example" in text and "./run.sh test" in text
    targets = re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", text)
    local = [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]
    assert local, "README.md links to no documentation page"
    broken = [t for t in local if not (REPO_ROOT / t.split("#", 1)[0]).exists()]
    assert not broken, f"README.md links to files that do not exist: {broken}"


def test_licence_of_the_weights_is_stated():
    readme = README.read_text(encoding="utf-8")
    card = (REPO_ROOT / "docs" / "model-card.md").read_text(encoding="utf-8")
    for where, text in (("README.md", readme), ("docs/model-card.md", card)):
        assert "CC BY-NC-SA 4.0" in text, f"{where} must say the shipped weights are CC BY-NC-SA 4.0 (ACDC)"
