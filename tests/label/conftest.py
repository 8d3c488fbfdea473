"""Fixtures of the `lmgym label` tests: servers that are stopped afterwards, and one headless Chromium for the
whole session (the browser tests skip, saying why, only where none can be had)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lmgym.label.server import prepare
from lmgym.label.sources import Item

from .helpers import CHROMIUM, CHROMIUM_ARGS, CliServer, ThreadServer


@pytest.fixture
def thread_server() -> Iterator:
    """``start(items, out, **prepare_kwargs)`` → a running `ThreadServer` (any free port unless given)."""
    started: list[ThreadServer] = []

    def start(items: list[Item], out: Path, **kwargs: Any) -> ThreadServer:
        server = ThreadServer(prepare(items, out, port=kwargs.pop("port", 0), **kwargs))
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def cli_server() -> Iterator:
    """``start(*args)`` → `lmgym label *args` running in a subprocess (`CliServer`)."""
    started: list[CliServer] = []

    def start(*args: str) -> CliServer:
        server = CliServer(list(args))
        started.append(server)
        return server

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.kill()


def _chromium() -> str | None:
    return CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")


@pytest.fixture(scope="session")
def browser() -> Iterator:
    """Debian's Chromium, headless, driven by Playwright (never `playwright install`: it downloads browsers)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed: pip install -e '.[dev]'")
    executable = _chromium()
    if executable is None:
        pytest.skip(f"no Chromium at {CHROMIUM}: `make browser` installs Debian's chromium (apt-get, as root)")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def new_page(browser) -> Iterator:
    """``new_page()`` → a page at 1280×800 in a fresh context (its own cookies: one annotator)."""
    contexts = []

    def make():
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        context.set_default_timeout(15_000)
        contexts.append(context)
        return context.new_page()

    yield make
    for context in contexts:
        context.close()
