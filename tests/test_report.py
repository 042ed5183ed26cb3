"""``matensemble report``: pictures of real runs (finished, live, crashed, resumed).

The PNG is checked for content (size, the outcome colours really drawn); the HTML report is
opened in a real headless Chromium over the DevTools protocol (skipped without one; `.ci/run`
installs it): it must load without a console message, draw one bar per attempt, show each
bar's task when the mouse is over it, and zoom with the wheel; a screenshot is taken.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from matensemble import Ensemble, SimulatedBackend, Task
from matensemble.backends.local_inventory import find_run_processes
from matensemble.errors import JournalError
from matensemble.journal import JOURNAL_NAME
from matensemble.report import PNG_SIZE, read_run, write_report
from matensemble.report.series import StepSeries, state_counts, utilisation
from matensemble.report.style import OUTCOME_COLOURS

from conftest import matensemble
from headless_browser import CHROMIUM, Browser

Image = pytest.importorskip("PIL.Image", reason="the PNG checks read images with Pillow")

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Chromium (Debian: apt-get install chromium); .ci/run has it"
)

ENSEMBLE = """
[ensemble]
name = "small"

[[sweep]]
id = "ok-{{i}}"
command = ["{python}", "-c", "pass"]
parameters = {{ i = {{ start = 1, stop = 4 }} }}

[[task]]
id = "bad"
command = ["{python}", "-c", "import sys; sys.exit(3)"]
retries = 1
"""


def rgb(colour: str) -> tuple[int, int, int]:
    return (int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16))


def pixels_of(png: Path, colour: str) -> int:
    with Image.open(png) as image:
        counts = image.convert("RGB").getcolors(maxcolors=1 << 24)
    return sum(n for n, c in counts if c == rgb(colour))


def finished_local_run(tmp_path: Path) -> Path:
    """A real run on 2 cores: 3 tasks succeed, one fails twice (retried once): 5 attempts."""
    spec = tmp_path / "small.toml"
    spec.write_text(ENSEMBLE.format(python=sys.executable))
    run_dir = tmp_path / "run"
    proc = matensemble("run", spec, "--run-dir", run_dir, "--cores", "2", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    return run_dir


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    page = Browser(tmp_path / "chromium-profile")
    try:
        yield page
    finally:
        page.close()


def integral(series: StepSeries, end: float) -> float:
    times = [*series.times, end]
    return sum(v * (times[i + 1] - times[i]) for i, v in enumerate(series.values))


# -- a finished run --------------------------------------------------------------------------


def test_report_of_a_real_run_draws_every_attempt_coloured_by_outcome_in_the_png(
    tmp_path: Path,
) -> None:
    run_dir = finished_local_run(tmp_path)
    proc = matensemble("report", run_dir, "-o", tmp_path / "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    png, html = tmp_path / "out" / "report.png", tmp_path / "out" / "report.html"
    assert f"wrote {png}" in proc.stdout
    with Image.open(png) as image:
        assert image.size == PNG_SIZE
        assert image.format == "PNG"
        colours = image.convert("RGB").getcolors(maxcolors=1 << 24)
    assert len(colours) > 20  # not blank: axes, text, bars, areas
    assert pixels_of(png, OUTCOME_COLOURS["succeeded"]) > 500
    assert pixels_of(png, OUTCOME_COLOURS["failed"]) > 100  # the two failed attempts
    assert pixels_of(png, OUTCOME_COLOURS["unfinished"]) < pixels_of(
        png, OUTCOME_COLOURS["succeeded"]
    )
    text = html.read_text()
    assert "<script src" not in text and "<link" not in text  # nothing loaded from elsewhere
    assert "Failures: 2" in text
    assert text.count("<td>bad</td>") == 2  # both attempts of the failing task, with
    assert (
        text.count("<td>3</td>") == 2 and "<td>exited with code 3</td>" in text
    )  # code and reason
    assert "<td>retried</td>" in text and "<td>final</td>" in text


def test_report_reads_attempts_failures_and_machine_from_the_journal(tmp_path: Path) -> None:
    run_dir = finished_local_run(tmp_path)
    record = read_run(run_dir)
    assert record.finished and record.tasks == 4 and not record.notes
    assert sorted((a.task, a.attempt, a.outcome) for a in record.attempts) == [
        ("bad", 1, "failed"),
        ("bad", 2, "failed"),
        ("ok-1", 1, "succeeded"),
        ("ok-2", 1, "succeeded"),
        ("ok-3", 1, "succeeded"),
    ]
    assert [(f.task, f.returncode, f.then) for f in record.failures] == [
        ("bad", 3, "retried"),
        ("bad", 3, "final"),
    ]
    assert all(f.reason for f in record.failures)
    assert record.sessions[0].cores == 2 and record.sessions[0].backend == "local"


@needs_chromium
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


@needs_chromium
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


# -- a run that is still going, then crashes --------------------------------------------------


def test_report_of_a_live_run_then_of_its_crashed_driver_shows_unfinished_attempts(
    tmp_path: Path,
) -> None:
    spec = tmp_path / "slow.toml"
    spec.write_text(
        '[ensemble]\nname = "slow"\n[[sweep]]\nid = "slow-{i}"\n'
        f'command = ["{sys.executable}", "-c", "import time; time.sleep(60)"]\n'
        "parameters = { i = { start = 1, stop = 4 } }\n"
    )
    run_dir = tmp_path / "run"
    driver = subprocess.Popen(
        [sys.executable, "-m", "matensemble", "run", spec, "--run-dir", run_dir, "--cores", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    journal = run_dir / JOURNAL_NAME
    run_id = None
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # test side: wait until two tasks run
            if journal.exists() and journal.read_text().count('"task_started"') == 2:
                break
            time.sleep(0.05)
        live = read_run(run_dir)
        run_id = live.run_id
        assert not live.finished
        assert "still going" in live.notes[0]
        assert sorted(a.outcome for a in live.attempts) == ["unfinished", "unfinished"]
        assert state_counts(live).values["running"][-1] == 2
        assert state_counts(live).values["waiting"][-1] == 1

        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
        with journal.open("ab") as f:
            f.write(b'{"type":"task_fin')  # a torn last line, as a crash mid-write leaves it
        proc = matensemble("report", run_dir, "--no-png", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert "torn" in proc.stdout and "still going" in proc.stdout
        assert (run_dir / "report" / "report.html").is_file()
        crashed = read_run(run_dir)
        assert crashed.torn_line is not None
        assert [a.outcome for a in crashed.attempts] == ["unfinished", "unfinished"]
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        for pid in find_run_processes(run_id) if run_id else ():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)


# -- simulated runs: utilisation, resume, sampling ---------------------------------------------


def sim(task_id: str, duration: float, cores: int = 1, exit: int = 0) -> Task:
    from matensemble import Resources

    return Task(
        id=task_id,
        command=("sim",),
        resources=Resources(cores_per_rank=cores),
        tags={"sim_duration": str(duration), "sim_exit": str(exit)},
    )


async def test_busy_core_seconds_in_the_report_equal_the_runs_own_utilisation(
    tmp_path: Path,
) -> None:
    tasks = [sim(f"t{i}", 1.0 + i % 3, cores=1 + i % 2) for i in range(40)]
    summary = await Ensemble(tasks, backend=SimulatedBackend(1, 4), run_dir=tmp_path).run()
    record = read_run(tmp_path)
    util = utilisation(record)
    busy = integral(util["busy cores"], record.end)
    assert busy == pytest.approx(summary.core_utilisation * 4 * summary.makespan)
    assert busy == pytest.approx(sum((1.0 + i % 3) * (1 + i % 2) for i in range(40)))
    binned = utilisation(record, max_points=7)["busy cores"]  # averaged: same area
    assert binned.averaged and len(binned.times) == 7
    assert integral(binned, record.end) == pytest.approx(busy)
    assert max(util["busy cores"].values) <= 4 == max(util["available cores"].values)


async def test_report_of_a_resumed_run_draws_both_sessions_one_after_the_other(
    tmp_path: Path,
) -> None:
    tasks = [sim(f"a{i}", 1.0) for i in range(4)] + [sim("long", 10.0)]
    async with Ensemble(tasks, backend=SimulatedBackend(1, 2), run_dir=tmp_path) as ens:
        async for result in ens.completed():
            if result.id == "a1":
                ens.stop("test")
    await Ensemble(resume=tmp_path, backend=SimulatedBackend(1, 2)).run()  # clock restarts at 0
    record = read_run(tmp_path)
    assert len(record.sessions) == 2 and record.finished
    first, second = record.sessions
    assert second.start >= first.end  # shifted to follow, though the virtual clock restarted
    interrupted = [a for a in record.attempts if a.outcome == "interrupted"]
    assert interrupted and all(a.end <= second.start for a in interrupted)
    assert {a.task for a in record.attempts if a.outcome == "succeeded"} == {t.id for t in tasks}
    assert all(
        a.start >= second.start for a in record.attempts if a.task == "long" and a.attempt > 1
    )


@needs_chromium
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


# -- bad input and missing pieces --------------------------------------------------------------


def test_report_without_matplotlib_says_how_to_install_it_and_html_alone_still_works(
    tmp_path: Path,
) -> None:
    run_dir = finished_local_run(tmp_path)
    blocked = "import sys; sys.modules['matplotlib'] = None; from matensemble.cli import main; "
    env = {**os.environ, "COLUMNS": "1000"}
    proc = subprocess.run(
        [sys.executable, "-c", blocked + f"sys.exit(main(['report', {str(run_dir)!r}]))"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode == 2
    assert "pip install 'matensemble[report]'" in proc.stderr
    assert not (run_dir / "report").exists()  # refused before anything was written
    html_only = f"sys.exit(main(['report', {str(run_dir)!r}, '--no-png']))"
    proc = subprocess.run(
        [sys.executable, "-c", blocked + html_only],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (run_dir / "report").iterdir()) == ["report.html"]


def test_report_of_a_corrupt_journal_names_the_file_and_line_and_exits_2(tmp_path: Path) -> None:
    run_dir = finished_local_run(tmp_path)
    journal = run_dir / JOURNAL_NAME
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(b"".join([*lines[:2], b"{not json}\n", *lines[2:]]))
    proc = matensemble("report", run_dir, cwd=tmp_path)
    assert proc.returncode == 2
    assert f"{journal}:3: not a journal event" in proc.stderr
    proc = matensemble("report", tmp_path / "nowhere", cwd=tmp_path)
    assert proc.returncode == 2 and "no journal.jsonl here" in proc.stderr
    with pytest.raises(JournalError, match="no run_started"):
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / JOURNAL_NAME).write_text("")
        read_run(tmp_path / "empty")


async def test_gpu_tasks_get_gpu_rows_and_count_as_busy_gpus(tmp_path: Path) -> None:
    from matensemble import Resources
    from matensemble.report.timeline import layout_timeline

    gpu = Resources(cores_per_rank=2, gpus_per_rank=1)
    tasks = [
        Task(id=f"g{i}", command=("sim",), resources=gpu, tags={"sim_duration": "2"})
        for i in range(3)
    ]
    await Ensemble(tasks, backend=SimulatedBackend(1, 4, 2), run_dir=tmp_path).run()
    record = read_run(tmp_path)
    timeline = layout_timeline(record)
    assert [r.split()[1:] for r in timeline.rows] == [
        ["core", "0"],
        ["core", "1"],
        ["core", "2"],
        ["core", "3"],
        ["gpu", "0"],
        ["gpu", "1"],
    ]
    # each attempt: one bar over its two neighbouring cores, one bar on its GPU
    assert len(timeline.bars) == 2 * len(record.attempts) == 6
    util = utilisation(record)
    assert max(util["busy GPUs"].values) == 2 == max(util["available GPUs"].values)
    assert integral(util["busy GPUs"], record.end) == pytest.approx(3 * 2.0)


async def test_a_run_without_tasks_gets_an_empty_report_without_warnings(tmp_path: Path) -> None:
    import warnings

    await Ensemble([], backend=SimulatedBackend(1, 2), run_dir=tmp_path / "run").run()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        files = write_report(tmp_path / "run", tmp_path / "out")
    assert files.bars == 0 and files.record.finished and files.record.tasks == 0
    assert files.png is not None
    with Image.open(files.png) as image:
        assert image.size == PNG_SIZE
