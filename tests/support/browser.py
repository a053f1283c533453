"""Debian's Chromium driven by playwright (never a downloaded browser build), screenshots of
its pages, and the API calls the browser tests make beside it."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-gpu",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]
WIDE = {"width": 1280, "height": 860}
UI_TIMEOUT_MS = 15_000
RUN_TIMEOUT_MS = 120_000
ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "test-artifacts" / "screenshots"
DOCS = ROOT / "docs" / "screenshots"


@contextmanager
def chromium_page() -> Iterator[Any]:
    """A fresh headless Chromium page; fails (never skips) when chromium is missing."""
    if not CHROMIUM.exists():  # `make test` installs it; never skip the browser tests
        raise AssertionError(
            "Debian's chromium is missing: apt-get install -y chromium (or make test)"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        context = browser.new_context(viewport=WIDE)
        context.set_default_timeout(UI_TIMEOUT_MS)
        try:
            yield context.new_page()
        finally:
            context.close()
            browser.close()


def shot(page: Any, name: str, *, docs: bool = False, full: bool = True) -> None:
    """Save a screenshot as a test artifact (and for the docs when asked)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=full)
    if docs and os.environ.get("MLDROPD_DOCS_SCREENSHOTS") == "1":
        DOCS.mkdir(parents=True, exist_ok=True)
        bottom = page.evaluate("document.querySelector('main').getBoundingClientRect().bottom")
        clip = {"x": 0, "y": 0, "width": WIDE["width"], "height": min(int(bottom) + 16, 1150)}
        page.screenshot(path=str(DOCS / f"{name.split('-', 1)[1]}.png"), clip=clip, full_page=True)


def api_upload(url: str, token: str, path: Path) -> int:
    """Upload a model file through the API; return the model id."""
    with open(path, "rb") as f:
        response = httpx.post(
            f"{url}/api/v1/models",
            headers={"Authorization": f"Bearer {token}"},
            files={"file": (path.name, f)},
            timeout=120,
        )
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


# Build a File from base64 bytes and dispatch the drag events a real drop produces.
_DROP_JS = """
async ({b64, name, selector}) => {
  const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
  const file = new File([bytes], name, {type: "application/octet-stream"});
  const data = new DataTransfer();
  data.items.add(file);
  const zone = document.querySelector(selector);
  for (const type of ["dragenter", "dragover", "drop"]) {
    zone.dispatchEvent(new DragEvent(type, {bubbles: true, cancelable: true, dataTransfer: data}));
  }
}
"""


def drop(page: Any, content: bytes, name: str) -> None:
    """Drop a file on the deploy page's zone, once the page's script listens (a drop dispatched
    before the load event is lost: seen on a loaded machine)."""
    page.wait_for_load_state("load")
    page.evaluate(
        _DROP_JS, {"b64": base64.b64encode(content).decode(), "name": name, "selector": "#dropzone"}
    )
