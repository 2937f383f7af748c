"""Headless chromium for the browser tests of `cinema serve` and the cohort page (Debian's chromium + Playwright).

On a developer machine without chromium or Playwright the browser tests skip with the reason; with CI set they fail,
since .ci/run installs both.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
# Without these flags chromium tries to reach the network (updates, sync, QUIC) and stalls on a machine without it.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def sync_playwright_or_skip():
    """Playwright's sync API; skipped on a developer machine without Debian's chromium, a failure in CI."""
    in_ci = bool(os.environ.get("CI"))
    if not CHROMIUM.exists():
        if in_ci:
            pytest.fail(f"CI is set but {CHROMIUM} is missing: apt-get install chromium (see .ci/run)")
        pytest.skip(f"{CHROMIUM} not found: the browser test needs Debian's chromium (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if in_ci:
            pytest.fail("CI is set but playwright is not installed (pip install -e '.[dev]')")
        pytest.skip("playwright is not installed (pip install -e '.[dev]')")
    return sync_playwright


def launch(playwright):
    """A headless chromium browser that makes no network calls of its own."""
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
