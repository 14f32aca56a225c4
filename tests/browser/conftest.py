"""The web page in a real headless browser against the real service.

One real local Ray runs the deployed app on the offline bundle (SQLite, Whisper word
times as with ``make run``) for the tier's module; Playwright drives Debian's Chromium
(``/usr/bin/chromium``; Playwright's own browser download is never used). Both stop when
the module ends, before later tiers start a Ray or an event loop of their own. Each test
gets a fresh browser context, so sessionStorage (the API key) starts empty.

A keys-on variant needs only another service (``local_service(..., env={...})`` with the
auth settings) and ``open_page(..., api_key=key)``, which puts the key in the tab's
sessionStorage before the page's script runs, as a person entering it would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.serving import Service, bundle_args, local_service

CHROMIUM = Path(os.environ.get("WHISPERX_SERVE_CHROMIUM", "/usr/bin/chromium"))
APP = "whisperx-web"
KEY_STORAGE = "whisperx-serve.api-key"  # as in ingress/static/app.js
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
SECOND_MODEL = "tiny-en-again"  # the bundle's one Whisper model under a second name


@pytest.fixture(scope="module")  # gone before the next tier starts a Ray of its own
def service(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Service]:
    data_dir = tmp_path_factory.mktemp("web-data")
    args = bundle_args(APP, models_dir)
    args["asr"]["models"] = {SECOND_MODEL: "asr/faster-whisper-tiny.en"}  # a model choice
    with local_service(
        args,
        data_dir=data_dir,
        database_url=f"sqlite:///{data_dir / 'whisperx-serve.db'}",
    ) as running:
        yield running


def ensure_chromium() -> None:
    """Debian's chromium, installed here when missing and allowed (root with apt-get), so
    the README's test command stays the only command."""
    if CHROMIUM.is_file():
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], check=True, env=env)
    assert CHROMIUM.is_file(), f"{CHROMIUM} missing: apt-get install -y chromium"


@pytest.fixture(scope="module")  # Playwright's sync API holds an event loop while it runs:
def browser() -> Iterator[Any]:  # stopped before the async tests of later tiers
    from playwright.sync_api import sync_playwright

    ensure_chromium()
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"],
        )
        yield chromium
        chromium.close()


class PageErrors(list[str]):
    """Uncaught exceptions in the page; a test ends with none."""


@contextmanager
def open_page(
    browser: Any,
    base_url: str,
    *,
    api_key: str | None = None,
    viewport: dict[str, int] = DESKTOP,
    path: str = "/",
) -> Iterator[Any]:
    context = browser.new_context(viewport=viewport, accept_downloads=True)
    if api_key is not None:
        context.add_init_script(
            f"sessionStorage.setItem({KEY_STORAGE!r}, {api_key!r});"  # repr: a JS string
        )
    page = context.new_page()
    errors = PageErrors()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.set_default_timeout(30_000)
    try:
        page.goto(base_url + path)
        page.wait_for_function("() => window.wxs !== undefined")
        page.errors = errors  # type: ignore[attr-defined]
        yield page
        assert not errors, f"errors in the page: {errors}"
    finally:
        context.close()


@pytest.fixture
def page(browser: Any, service: Service) -> Iterator[Any]:
    with open_page(browser, service.base_url) as p:
        yield p
