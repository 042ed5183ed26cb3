"""``matensemble report``: pictures of real runs (finished, live, crashed, resumed).

The PNG is checked for content (size, the outcome colours really drawn); the HTML page in a
real browser is tested in test_report_html.py.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from matensemble import Ensemble, LocalBackend, Resources, SimulatedBackend, Task
from matensemble.backends.local_inventory import find_run_processes
from matensemble.errors import JournalError
from matensemble.journal import JOURNAL_NAME
from matensemble.report import PNG_SIZE, read_run, write_report
from matensemble.report.series import StepSeries, state_counts, utilisation
from matensemble.report.style import OUTCOME_COLOURS
from matensemble.report.timeline import layout_timeline

from conftest import matensemble
from report_runs import finished_local_run, pixels_of, sim

Image = pytest.importorskip("PIL.Image", reason="the PNG checks read images with Pillow")


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


async def test_report_of_a_run_queued_ahead_draws_each_attempt_when_it_held_its_core(
    tmp_path: Path,
) -> None:
    """Queued ahead, a task is launched (``task_started``) while the one before it still runs
    on its core: its bar starts when it really started, so no core is ever busy twice."""
    tasks = [Task(id=f"t{i}", command=("sleep", "0.2")) for i in range(8)]
    backend = LocalBackend(cores=2, queue_ahead=True)
    summary = await Ensemble(tasks, backend=backend, run_dir=tmp_path).run()
    assert summary.counts["succeeded"] == 8
    record = read_run(tmp_path)
    assert len(record.attempts) == 8
    assert max(utilisation(record)["busy cores"].values) == 2
    assert max(state_counts(record).values["running"]) == 2
    spans: dict[tuple[int, ...], list[tuple[float, float]]] = {}
    for a in record.attempts:
        spans.setdefault(a.placement[0].cores, []).append((a.start, a.end))
    for on_core in spans.values():
        on_core.sort()
        for (_, end), (start, _) in itertools.pairwise(on_core):
            assert end <= start


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
