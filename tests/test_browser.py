"""A real browser: JupyterLab on 127.0.0.1 in headless Chromium runs 01-quickstart, and the
ModelLoader widget renders in its loaded state. Skipped where no Chromium is installed
(`make test` installs Debian's chromium; Playwright drives it, no browser download)."""

from __future__ import annotations

import os
import secrets
import shutil
import sys
from pathlib import Path

import httpx
import pytest

from labkit._procs import ManagedProcess
from labkit.engines.servers import free_port, wait_healthy

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ROOT = Path(__file__).parent.parent
ARTIFACTS = ROOT / "test-artifacts"

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install chromium)")]


@pytest.fixture
def jupyterlab(tmp_path):
    shutil.copy(ROOT / "notebooks" / "01-quickstart.ipynb", tmp_path)
    port, token = free_port(), secrets.token_hex(16)
    proc = ManagedProcess([sys.executable, "-m", "jupyterlab", "--no-browser", "--ip", "127.0.0.1",
                           "--port", str(port), f"--IdentityProvider.token={token}",
                           f"--ServerApp.root_dir={tmp_path}", "--ServerApp.open_browser=False",
                           *(["--allow-root"] if os.geteuid() == 0 else [])],
                          tmp_path / "jupyterlab.log")
    try:
        wait_healthy(proc, f"http://127.0.0.1:{port}/api/status?token={token}", 120, "JupyterLab")
        yield f"http://127.0.0.1:{port}", token
    finally:
        proc.stop()


def test_quickstart_runs_in_jupyterlab_and_the_loader_shows_loaded(jupyterlab):
    from playwright.sync_api import sync_playwright

    base, token = jupyterlab
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{base}/lab/tree/01-quickstart.ipynb?token={token}")
            page.wait_for_selector(".jp-Notebook", timeout=120_000)
            page.get_by_text("Python (labkit)").first.wait_for(timeout=120_000)  # kernel picked
            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.get_by_text("Run All Cells", exact=True).click()
            loaded = page.locator(".widget-html-content", has_text="loaded: llama.cpp")
            loaded.first.wait_for(timeout=600_000)
            page.screenshot(path=str(ARTIFACTS / "quickstart-modelloader.png"), full_page=True)
            assert "loaded: llama.cpp" in loaded.first.inner_text()
            assert page.locator(".widget-button", has_text="Unload").count() >= 1
        finally:
            browser.close()
    # the kernel still answers: nothing crashed while the notebook ran
    assert httpx.get(f"{base}/api/kernels?token={token}").status_code == 200
