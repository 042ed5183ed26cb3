"""The docs: every file and command a user would copy from them is run or checked here.

The tutorial runs end to end in an empty directory, in page order; the HPC guides' batch
scripts are checked by bash and every `matensemble` command line in them by the CLI's own
parser (no Slurm here), their ensemble files by the loader, and their run-or-resume script
runs under a real `flux start` when Flux is on PATH; the report page's commands and Python
run on a real run. The site itself is built strictly when mkdocs is installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from matensemble.cli import COMMANDS
from matensemble.cli_options import build_parser
from matensemble.spec import load_ensemble

from conftest import flux_cli_environment, under_flux_cli

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
FENCE = re.compile(r'^```(\w+)(?: title="([^"]+)")?\n(.*?)^```$', re.S | re.M)


def blocks(page: str) -> list[tuple[str, str | None, str]]:
    """(language, title, body) of every fenced code block of ``docs/<page>``, in order."""
    return FENCE.findall((DOCS / page).read_text())  # type: ignore[no-any-return]


def shell_lines(body: str) -> list[str]:
    return [line for line in body.splitlines() if line.strip() and not line.startswith("#")]


def run_line(line: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run one documented command; `matensemble` and `python3` are this environment's."""
    argv = shlex.split(line)
    if argv[0] == "matensemble":
        argv = [sys.executable, "-m", "matensemble", *argv[1:]]
    elif argv[0] == "python3":
        argv = [sys.executable, *argv[1:]]
    else:
        raise AssertionError(f"the docs run only matensemble and python3 here, not: {line}")
    env = {**os.environ, "COLUMNS": "1000", "NO_COLOR": "1"}
    proc = subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, env=env, timeout=300, check=False
    )
    assert proc.returncode == 0, f"{line}\n{proc.stdout}\n{proc.stderr}"
    return proc


def run_page(page: str, cwd: Path) -> dict[str, str]:
    """Write every titled block as a file and run every untitled shell block, in order."""
    outputs: dict[str, str] = {}
    for lang, title, body in blocks(page):
        if title:
            (cwd / title).write_text(body)
        elif lang == "sh":
            for line in shell_lines(body):
                outputs[line] = run_line(line, cwd).stdout
    return outputs


def test_tutorial_runs_end_to_end_from_one_task_to_a_steering_loop(tmp_path: Path) -> None:
    out = run_page("tutorial.md", tmp_path)
    hello = tmp_path / "runs" / "hello" / "tasks" / "hello" / "stdout"
    assert hello.read_text() == "hello from a task\n"
    total = tmp_path / "runs" / "squares" / "tasks" / "total"
    assert (total / "stdout").read_text() == "8 squares, total 204\n"
    assert "succeeded" in out["matensemble status runs/squares"]
    assert (tmp_path / "runs" / "squares" / "report" / "report.html").is_file()
    assert out["python3 stages.py"].startswith("10 tasks succeeded in")
    steered = out["python3 steer.py"].splitlines()
    assert sorted(line.split()[0] for line in steered[:-1]) == [
        f"square-{x}" for x in (1, 2, 3, 5, 7, 9)
    ]
    assert steered[-1].startswith("[") and "('succeeded', 6)" in steered[-1]


def matensemble_argvs(line: str, body: str) -> list[list[str]]:
    """The arguments after `matensemble` in a script line, once per value of `$STEP` (the
    script's run-or-resume choice), with the other shell variables filled in."""
    line = line[line.index("matensemble ") + len("matensemble ") :]
    steps = re.findall(r'STEP="([^"]*)"', body) if "$STEP" in line else [""]
    return [
        shlex.split(re.sub(r"\$\{?(\w+)\}?", "/x", line.replace("$STEP", step))) for step in steps
    ]


@pytest.mark.parametrize("page", ["hpc/frontier.md", "hpc/perlmutter.md"])
def test_hpc_guide_scripts_parse_and_use_only_real_options(page: str, tmp_path: Path) -> None:
    commands = 0
    for lang, title, body in blocks(page):
        if lang == "toml":
            assert title == "ensemble.toml"
            (tmp_path / title).write_text(body)
            spec = load_ensemble(tmp_path / title)
            assert spec.tasks and all(t.resources.gpus_per_rank for t in spec.tasks)
            continue
        assert lang == "sh", lang
        script = tmp_path / "script.sh"
        script.write_text(body)
        check = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        for line in shell_lines(body):
            if "matensemble " not in line or "pip install" in line or "STEP=" in line:
                continue
            for argv in matensemble_argvs(line, body):
                args = build_parser().parse_args(argv)  # SystemExit on an unknown option
                assert args.command in COMMANDS
                commands += 1
                if "flux start" in line:
                    assert args.backend == "flux" and args.walltime > 0
    assert commands >= 5


def test_report_page_commands_and_python_work_on_a_real_run(tmp_path: Path) -> None:
    tutorial = {title: body for _, title, body in blocks("tutorial.md") if title}
    for name in ("squares.toml", "square.py", "total.py"):
        (tmp_path / name).write_text(tutorial[name])
    run_line("matensemble run squares.toml --run-dir runs/squares --no-progress", tmp_path)
    for lang, _, body in blocks("report.md"):
        if lang == "sh":
            for line in shell_lines(body):
                run_line(line, tmp_path)
        elif lang == "python":
            (tmp_path / "snippet.py").write_text(body)
            out = run_line("python3 snippet.py", tmp_path).stdout
            assert "10 bars" in out and out.count(" succeeded ") == 10
    assert (tmp_path / "squares-report" / "report.png").is_file()
    assert (tmp_path / "runs" / "squares" / "report" / "report.html").is_file()


@pytest.mark.skipif(
    shutil.which("mkdocs", path=str(Path(sys.executable).parent)) is None
    or importlib.util.find_spec("mkdocstrings") is None,
    reason="needs the docs extra (mkdocs, mkdocstrings): uv run --extra docs ... (or nox -s docs)",
)
def test_docs_site_builds_strictly_with_the_api_reference(tmp_path: Path) -> None:
    mkdocs = str(Path(sys.executable).parent / "mkdocs")
    proc = subprocess.run(
        [mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert 'id="matensemble.engine.Ensemble"' in api
    assert 'id="matensemble.report.write_report"' in api
    for page in ("tutorial", "report", "hpc/frontier", "hpc/perlmutter"):
        assert (tmp_path / "site" / page / "index.html").is_file()


@under_flux_cli
@pytest.mark.parametrize("page", ["hpc/frontier.md", "hpc/perlmutter.md"])
def test_hpc_guide_run_or_resume_script_runs_under_a_real_flux_start(
    page: str, tmp_path: Path
) -> None:
    """The guide's run-or-resume job script, as written, minus Slurm: `srun ...` (one node here)
    and `source .../activate` (this environment is active) are dropped; the tutorial's CPU
    ensemble stands in for the site's GPU one. Run twice: `run`, then `resume`."""
    env = flux_cli_environment()
    assert env is not None
    env.update(SLURM_NNODES="1", SLURM_JOB_ID="1", SCRATCH=str(tmp_path))
    tutorial = {title: body for _, title, body in blocks("tutorial.md") if title}
    for name in ("square.py", "total.py"):
        (tmp_path / name).write_text(tutorial[name])
    (tmp_path / "ensemble.toml").write_text(tutorial["squares.toml"])
    script = next(body for _, _, body in blocks(page) if "STEP=" in body)
    lines = [re.sub(r"^srun .*? flux start ", "flux start ", line) for line in script.splitlines()]
    (tmp_path / "job.sh").write_text("\n".join(ln for ln in lines if not ln.startswith("source ")))
    for step in ("run", "resume"):
        proc = subprocess.run(
            ["bash", "job.sh"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, f"{step}: {proc.stdout}\n{proc.stderr}"
        assert "wrote " in proc.stdout and "report.html" in proc.stdout
    run = tmp_path / "runs" / "sweep"
    assert (run / "tasks" / "total" / "stdout").read_text() == "8 squares, total 204\n"
    from matensemble.report import read_run

    record = read_run(run)
    assert [s.backend for s in record.sessions] == ["flux", "flux"]
    assert len(record.attempts) == 10  # the resume ran nothing again


@under_flux_cli
def test_flux_guide_partitions_example_runs_under_a_real_flux_start(tmp_path: Path) -> None:
    """docs/flux.md's partitions driver, run by its own command line: every task succeeds, in
    four partitions (each task saw its own child instance's URI), and none is left behind."""
    env = flux_cli_environment()
    assert env is not None
    written = {title: body for _, title, body in blocks("flux.md") if title}
    (tmp_path / "partitions.py").write_text(written["partitions.py"])
    line = next(
        line
        for lang, title, body in blocks("flux.md")
        if lang == "bash" and not title
        for line in shell_lines(body)
        if "partitions.py" in line
    )
    argv = [sys.executable if arg == "python3" else arg for arg in shlex.split(line)]
    proc = subprocess.run(
        argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    assert proc.stdout.strip().endswith("40 succeeded")
    tasks = tmp_path / "runs" / "parts" / "tasks"
    uris = {(tasks / f"t{i}" / "stdout").read_text() for i in range(40)}
    assert len(uris) == 4


def launch_option_lines(page: str) -> list[str]:
    """The command lines of ``docs/<page>`` that choose how the backend launches."""
    return [
        line
        for lang, title, body in blocks(page)
        if lang == "sh" and not title
        for line in shell_lines(body)
        if "--queue-ahead" in line or "--local-spawners" in line
    ]


PARENT = "tr '\\0' ' ' < /proc/$PPID/cmdline; sleep 0.2"


def started_before_the_one_before_ended(run: Path) -> bool:
    from matensemble.events import TaskFinished, TaskStarted
    from matensemble.journal import read_journal

    events = list(read_journal(run / "journal.jsonl"))
    started = next(i for i, e in enumerate(events) if isinstance(e, TaskStarted) and e.id == "t1")
    ended = next(i for i, e in enumerate(events) if isinstance(e, TaskFinished))
    return started < ended


def test_local_backend_page_command_line_runs_helpers_queued_ahead(tmp_path: Path) -> None:
    lines = launch_option_lines("local-backend.md")
    assert lines
    command = f'command = ["sh", "-c", {json.dumps(PARENT)}]\n'
    tasks = [f'[[task]]\nid = "t{i}"\n{command}' for i in range(3)]
    (tmp_path / "ensemble.toml").write_text("[ensemble]\ncores = 1\n" + "".join(tasks))
    for line in lines:
        run_line(line, tmp_path)
        (run,) = (tmp_path / "runs").iterdir()
        for i in range(3):
            parent = (run / "tasks" / f"t{i}" / "stdout").read_text()
            assert "matensemble.backends.local_helper" in parent, parent  # -m, or -c (3.10)
        assert started_before_the_one_before_ended(run)
        shutil.rmtree(tmp_path / "runs")


@under_flux_cli
def test_flux_page_queue_ahead_command_line_runs_under_a_real_flux_start(tmp_path: Path) -> None:
    env = flux_cli_environment()
    assert env is not None
    lines = launch_option_lines("flux.md")
    assert lines
    cores = len(os.sched_getaffinity(0))  # a broker's cores: this process's, not the host's
    whole = f"resources = {{ cores_per_rank = {cores} }}\n"  # one task at a time
    tasks = [f'[[task]]\nid = "t{i}"\ncommand = ["sleep", "0.2"]\n{whole}' for i in range(3)]
    (tmp_path / "ensemble.toml").write_text("".join(tasks))
    for line in lines:
        proc = subprocess.run(
            shlex.split(line), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, f"{line}\n{proc.stdout}\n{proc.stderr}"
        (run,) = (tmp_path / "runs").iterdir()
        assert started_before_the_one_before_ended(run)
        shutil.rmtree(tmp_path / "runs")
