"""End to end in a real headless Chromium (Debian's chromium, driven by Playwright): the dashboard over a
database filled by a real `tiny` run, and the static report opened from a file URL."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import uvicorn
from PIL import Image, ImageStat
from playwright.sync_api import sync_playwright

from mixerlab.web.app import create_app
from services import free_port, wait_http

pytestmark = pytest.mark.slow
CHROMIUM = "/usr/bin/chromium"


def assert_not_blank(png: bytes) -> None:
    image = Image.open(io.BytesIO(png)).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is None or len(colours) > 30, "screenshot has almost no colours: blank page?"
    assert max(ImageStat.Stat(image).stddev) > 20, "screenshot is nearly uniform: blank page?"


@pytest.fixture(scope="module")
def server(tiny_run):
    run_dir, _ = tiny_run
    port = free_port()
    config = uvicorn.Config(create_app(f"sqlite:///{run_dir / 'mixerlab.db'}"), host="127.0.0.1", port=port, log_level="warning")
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    wait_http(f"http://127.0.0.1:{port}/healthz", 30)
    yield f"http://127.0.0.1:{port}"
    instance.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        raise RuntimeError("Chromium is missing: apt-get install chromium (make test does this)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-background-networking", "--disable-gpu"])
        yield b
        b.close()


def test_leaderboard_sort_experiment_lineage_live_compare(server: str, browser, tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    page.goto(server + "/")
    rows = page.locator("#leaderboard tbody tr")
    assert rows.count() == 4
    assert rows.nth(0).locator("td.name a").inner_text() == "delta_net_4layer"  # baselines pinned first
    assert_not_blank(page.screenshot(path=str(tmp_path / "leaderboard.png"), full_page=True))

    page.click("a[data-sort='compress']")  # sort by Compress (descending), then ascending
    page.wait_for_url("**sort=compress**")
    page.click("a[data-sort='compress']")
    page.wait_for_url("**order=asc**")
    values = [float(t.split("±")[0].strip().split()[0]) for t in page.locator("#leaderboard tbody tr.candidate td.score:nth-child(4)").all_inner_texts()]
    assert values == sorted(values) and len(values) == 2

    name = page.locator("#leaderboard tbody tr.candidate td.name a").first.inner_text()
    page.click(f"text={name}")
    page.wait_for_selector("#experiment-name")
    assert page.inner_text("#experiment-name") == name
    insights = page.inner_text("#insights")
    for title in ("Key Observations from Experiment Results", "Specific Code Issues Identified",
                  "Technical Reasoning for Proposed Change", "Expected Improvements", "Lessons from Historical Attempts"):
        assert title in insights
    diff = page.inner_text("#diff")
    assert "+++ candidate.py" in diff and "\n+" in diff
    assert page.locator("#curves svg").count() == 6 and page.locator("#scores svg").count() == 1
    assert_not_blank(page.screenshot(path=str(tmp_path / "experiment.png"), full_page=True))

    page.click("#parent-link")  # follow the lineage upwards
    page.wait_for_selector("#experiment-name")
    assert page.inner_text("#experiment-name") == "delta_net_4layer"

    page.click("#nav-lineage")
    page.wait_for_selector("#lineage-tree svg")
    assert page.locator("#lineage-tree a.node").count() == 4
    assert_not_blank(page.screenshot(path=str(tmp_path / "lineage.png"), full_page=True))
    page.locator("#lineage-tree a.node").nth(2).click()
    page.wait_for_selector("#experiment-name")

    page.click("#nav-live")
    page.wait_for_function("document.getElementById('live-updated').textContent !== 'now'", timeout=10_000)
    assert page.inner_text("#live-status") == "finished"

    page.goto(server + "/")
    page.locator("input.pick").nth(0).check()
    page.locator("input.pick").nth(2).check()
    page.click("#compare-selected")
    page.wait_for_selector("#compare-table")
    assert page.locator("#compare-table tbody tr").count() == 2
    page.close()


def test_report_renders_from_a_file_url(tiny_run, browser, tmp_path: Path) -> None:
    run_dir, _ = tiny_run
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "mixerlab.cli", "report", "--run-dir", str(run_dir), "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "| delta_net_4layer |" in (out / "report.md").read_text()
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.goto((out / "index.html").as_uri())
    assert page.locator("#report-leaderboard tbody tr").count() == 4
    assert page.locator("svg").count() >= 3  # scores by iteration, per-task bars, lineage
    assert page.locator("section h4", has_text="Lessons from Historical Attempts").count() >= 1
    assert_not_blank(page.screenshot(full_page=True))
    page.close()
