"""A real browser: JupyterLab on 127.0.0.1 in headless Chromium runs 07-panels, and every
panel is used as a user would: fields filled, buttons clicked, Stop pressed mid-run. The
assertions read the page (status texts, button states, markers drawn in the figures);
screenshots go to test-artifacts/. Skipped where no Chromium is installed (`make test`
installs Debian's chromium; Playwright drives it, no browser download)."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import sys
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect

from labkit._procs import ManagedProcess
from labkit.engines.servers import free_port, wait_healthy

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ROOT = Path(__file__).parent.parent
ARTIFACTS = ROOT / "test-artifacts"
LONG = 600_000  # ms: a 2-core machine running engines beside a browser

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install chromium)")]

# The notebook's cells, in order (markdown between them): what each panel's cell index is.
LOADER, BENCH, CAPACITY, SWEEP, COMPARE, MEMORY = 4, 6, 8, 10, 12, 14


@pytest.fixture
def jupyterlab(tmp_path):
    shutil.copy(ROOT / "notebooks" / "07-panels.ipynb", tmp_path)
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


class _Cell:
    """One notebook cell's widgets, found the way a user finds them: by their labels."""

    def __init__(self, page, index: int):
        self.page, self.root = page, page.locator(".jp-Notebook .jp-Cell").nth(index)

    def field(self, label: str):
        box = self.root.locator(".widget-inline-hbox", has=self.page.locator(
            "label", has_text=re.compile(f"^{re.escape(label)}$")))
        return box.locator("input, textarea").first

    def fill(self, **values: str) -> None:
        for label, value in values.items():
            f = self.field(label.replace("_", " "))
            f.fill(value)
            f.press("Tab")  # numbers are committed on blur, as when a user moves on

    def button(self, text: str):
        return self.root.locator(".widget-button", has_text=re.compile(f"^\\s*{re.escape(text)}\\s*$"))

    def status(self, pattern: str):
        loc = self.root.locator(".widget-html-content", has_text=re.compile(pattern))
        loc.first.wait_for(timeout=LONG)
        return loc.first.inner_text()

    def markers(self, figure: int = 0, at_least: int = 1) -> int:
        """Markers drawn in the cell's n-th plotly figure (filled or hollow), once there are
        ``at_least`` (plotly redraws a figure after the status that follows its update has
        shown: counted at once, a loaded machine saw none)."""
        self.root.scroll_into_view_if_needed()  # (a figure out of view may wait to be drawn)
        points = self.root.locator(".js-plotly-plot").nth(figure).locator(".scatterlayer .points path")
        points.nth(at_least - 1).wait_for(state="attached", timeout=60_000)  # drawn by then, or never
        return points.count()

    def shot(self, name: str) -> None:
        self.root.scroll_into_view_if_needed()
        self.root.screenshot(path=str(ARTIFACTS / f"panels-{name}.png"))


def _open(pw, base: str, token: str):
    browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
        "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"])
    page = browser.new_page(viewport={"width": 1500, "height": 1100})
    page.goto(f"{base}/lab/tree/07-panels.ipynb?token={token}")
    page.wait_for_selector(".jp-Notebook", timeout=120_000)
    page.get_by_text("Python (labkit)").first.wait_for(timeout=120_000)  # kernel picked
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_text("Run All Cells", exact=True).click()
    return browser, page


def _bench_then_stop(page) -> None:
    bench = _Cell(page, BENCH)
    bench.button("Run").wait_for(timeout=LONG)
    bench.fill(users="1,2", **{"requests/level": "2", "output_tokens": "4", "input_tokens": "16"})
    bench.button("Run").click()
    text = bench.status("^done|requests failed|was measured|died|closed")  # (done, or why not)
    assert text == "done", text
    assert bench.markers(0, 4) >= 4 and bench.markers(1, 16) >= 16  # 2 engines x 2 levels; 4 latency lines each
    bench.shot("bench")
    bench.fill(users="1,2,4,8", **{"requests/level": "16", "output_tokens": "32"})
    bench.button("Run").click()
    expect(bench.button("Run")).to_be_disabled(timeout=30_000)  # the state, as the page shows it
    expect(bench.button("Stop")).to_be_enabled()
    bench.button("Stop").click()
    text = bench.status("^stopped: ")
    assert "complete level(s) kept" in text
    expect(bench.button("Run")).to_be_enabled()
    expect(bench.button("Stop")).to_be_disabled()
    bench.shot("bench-stopped")


def _capacity(page) -> None:
    cap = _Cell(page, CAPACITY)
    cap.fill(**{"TTFT p99 ≤ (ms)": "0", "TPOT p99 ≤ (ms)": "0", "other bounds": "e2e_p99_ms=600000",
                "max users": "2", "input tokens": "48", "output tokens": "4"})
    cap.button("Find capacity").click()
    text = cap.status("users within E2E p99")
    assert text.startswith("llama.cpp: 2 users within E2E p99 <= 600000 ms")
    assert cap.markers(0, 2) >= 2 and "<table" in cap.root.inner_html()
    cap.shot("capacity")


def _sweep(page) -> None:
    sweep = _Cell(page, SWEEP)
    sweep.fill(users="1", **{"requests/level": "2", "output_tokens": "4", "input_tokens": "16"})
    sweep.button("Run sweep").click()
    text = sweep.status("^done: ")
    assert text.startswith("done: 3 point(s)")
    assert sweep.markers(0, 3) >= 3  # one per point (the front is a line)
    sweep.shot("sweep")


def _compare_and_memory(page) -> None:
    cmp = _Cell(page, COMPARE)
    cmp.fill(max_tokens="8")
    cmp.button("Run").click()
    assert cmp.status("^done$") == "done" and cmp.root.locator("table").count() >= 1
    cmp.shot("compare")
    mem = _Cell(page, MEMORY)
    toggle = mem.root.locator(".widget-toggle-button")
    assert toggle.inner_text().startswith("Live: off")
    toggle.click()
    expect(toggle).to_have_text(re.compile("^Live: on"))
    # a sample drawn, and the in-process line says what it measures
    mem.root.locator(".js-plotly-plot .scatterlayer .points path").first.wait_for(timeout=60_000)
    mem.root.locator(".legendtext", has_text="in this kernel").first.wait_for(state="attached", timeout=60_000)
    mem.shot("memory")


def test_every_panel_works_in_jupyterlab(jupyterlab):
    from playwright.sync_api import sync_playwright

    base, token = jupyterlab
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser, page = _open(pw, base, token)
        try:
            loader = _Cell(page, LOADER)
            assert "loaded: llama.cpp" in loader.status("^loaded: llama.cpp")
            expect(loader.button("Unload")).to_be_enabled()
            loader.shot("loader")
            _bench_then_stop(page)
            _capacity(page)
            _sweep(page)
            _compare_and_memory(page)
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "panels-failure.png"), full_page=True)
            raise
        finally:
            browser.close()
    # the kernel still answers: nothing crashed while the panels ran
    assert httpx.get(f"{base}/api/kernels?token={token}").status_code == 200
