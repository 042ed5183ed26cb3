"""The HTML run report in a real headless Chromium, driven over the DevTools protocol.

Skipped without Chromium (`.ci/run` installs Debian's). The page must load without a console
message, draw one bar per attempt, show each bar's task, attempt, times and exit code when the
mouse is over it, show the values under the mouse on the utilisation chart, zoom with the
wheel and reset on a double click; a screenshot shows the bars really drawn.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from matensemble import Ensemble, SimulatedBackend
from matensemble.report import read_run, write_report
from matensemble.report.style import OUTCOME_COLOURS

from headless_browser import CHROMIUM, Browser
from report_runs import finished_local_run, rgb, sim

Image = pytest.importorskip("PIL.Image", reason="the screenshot checks read images with Pillow")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Chromium (Debian: apt-get install chromium); .ci/run has it"
)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    page = Browser(tmp_path / "chromium-profile")
    try:
        yield page
    finally:
        page.close()


def test_html_report_loads_in_a_real_browser_without_errors_and_draws_one_bar_per_attempt(
    tmp_path: Path, browser: Browser
) -> None:
    run_dir = finished_local_run(tmp_path)
    files = write_report(run_dir, tmp_path / "out", png=False)
    assert files.png is None and files.bars == 5
    browser.open(files.html)
    assert browser.evaluate("document.body.dataset.ready") == "1"
    assert browser.evaluate("document.body.dataset.barsDrawn") == "5"
    assert browser.evaluate("document.querySelectorAll('#failures tbody tr').length") == 2
    shot = tmp_path / "screenshot.png"
    browser.screenshot(shot)
    assert browser.console == []  # no error, warning or log line while loading and drawing
    with Image.open(shot) as image:
        assert image.size == (1300, 1400)
        found = {c for _, c in image.convert("RGB").getcolors(maxcolors=1 << 24)}
    assert rgb(OUTCOME_COLOURS["succeeded"]) in found  # the canvas really drew the bars
    assert rgb(OUTCOME_COLOURS["failed"]) in found


def test_hovering_a_bar_shows_its_task_attempt_times_and_exit_code_and_the_wheel_zooms(
    tmp_path: Path, browser: Browser
) -> None:
    run_dir = finished_local_run(tmp_path)
    record = read_run(run_dir)
    browser.open(write_report(run_dir, tmp_path / "out", png=False).html)
    seen = set()
    for i in range(browser.evaluate("matensembleReport.bars")):
        box = browser.evaluate(f"matensembleReport.barBox({i})")
        browser.mouse("mouseMoved", box["x"] + box["w"] / 2, box["y"] + box["h"] / 2)
        tip = browser.evaluate("document.getElementById('tip').textContent")
        assert browser.evaluate("document.getElementById('tip').style.display") == "block"
        assert f"task     {box['task']}\nattempt  {box['attempt']}\n" in tip
        attempt = next(
            a for a in record.attempts if (a.task, a.attempt) == (box["task"], box["attempt"])
        )
        shown = re.search(r"start    ([\d.]+) s\nend      ([\d.]+) s", tip)
        assert shown is not None, tip
        assert float(shown[1]) == pytest.approx(attempt.start, rel=0.01, abs=1e-3)
        assert float(shown[2]) == pytest.approx(attempt.end, rel=0.01, abs=1e-3)
        assert f"exit     {attempt.returncode}" in tip
        if attempt.outcome == "failed":
            assert "outcome  failed" in tip and f"reason   {attempt.reason}" in tip
        seen.add((box["task"], box["attempt"]))
    assert len(seen) == 5
    util = browser.evaluate(
        "JSON.stringify(document.getElementById('utilisation').getBoundingClientRect())"
    )
    rect = json.loads(util)
    browser.mouse("mouseMoved", rect["left"] + rect["width"] / 2, rect["top"] + rect["height"] / 2)
    values = browser.evaluate("document.getElementById('tip').textContent")
    assert "busy cores" in values and "available cores 2" in values and "succeeded" in values

    full = browser.evaluate("document.getElementById('range').textContent")
    box = browser.evaluate("matensembleReport.barBox(0)")
    for _ in range(5):
        browser.mouse("mouseWheel", box["x"] + 2, box["y"] + 2, deltaX=0, deltaY=-120)
    zoomed = browser.evaluate("document.getElementById('range').textContent")
    assert zoomed != full
    t0, t1 = (float(v) for v in re.findall(r"[\d.]+", zoomed)[:2])
    assert t1 - t0 < 0.5 * record.end
    for count in (1, 2):  # a double click resets the zoom
        for kind in ("mousePressed", "mouseReleased"):
            browser.mouse(kind, box["x"] + 2, box["y"] + 2, button="left", clickCount=count)
    assert browser.evaluate("document.getElementById('range').textContent") == full
    assert browser.console == []


async def test_a_timeline_over_its_bar_budget_draws_every_kth_attempt_and_says_so(
    tmp_path: Path, browser: Browser
) -> None:
    tasks = [sim(f"t{i}", 1.0, exit=int(i % 10 == 0)) for i in range(50)]
    await Ensemble(tasks, backend=SimulatedBackend(1, 8), run_dir=tmp_path / "run").run()
    files = write_report(tmp_path / "run", tmp_path / "out", max_bars=10)
    assert files.sampled_every == 5 and files.bars == 10
    text = files.html.read_text()
    assert "every 5th" in text and "Failures: 5" in text
    browser.open(files.html)
    assert browser.evaluate("document.body.dataset.barsDrawn") == "10"
    assert browser.console == []
