"""``matensemble run | resume | status | report``: run ensemble files, look at runs.

Exit codes: 0 every task succeeded; 1 some task did not; 2 bad input (file, options, journal);
3 stopped before the end (walltime); 4 stopped because a run file could not be written (no space
left on the device, or the quota is used up); 128+N stopped by signal N (130 for SIGINT, 143
for SIGTERM). A stopped run continues with ``matensemble resume RUN_DIR``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from matensemble import __version__
from matensemble.backends.base import Backend
from matensemble.engine import Ensemble
from matensemble.errors import DiskFull, MatEnsembleError
from matensemble.limits import MAX_CORES_PER_NODE, MAX_GPUS_PER_NODE
from matensemble.model import TaskState
from matensemble.observer import Observer
from matensemble.progress import ProgressDisplay
from matensemble.rundir import describe_phase
from matensemble.signals import SignalStop
from matensemble.spec import EnsembleSpec, load_ensemble
from matensemble.status import read_status
from matensemble.strategies import completion_by_name, order_by_name
from matensemble.summary import RunSummary
from matensemble.wording import counted

__all__ = ["main"]

EXIT_OK, EXIT_TASKS_FAILED, EXIT_BAD_INPUT, EXIT_STOPPED, EXIT_DISK_FULL = 0, 1, 2, 3, 4
EXIT_INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``matensemble`` command."""
    parser = _parser()
    args = parser.parse_args(argv)
    err = Console(stderr=True)
    try:
        code: int = args.func(args)
    except DiskFull as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        return EXIT_DISK_FULL
    except MatEnsembleError as exc:
        # Escaped: messages quote the file's own brackets ([defaults], [[task]], $.task[0]).
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        return EXIT_BAD_INPUT
    except OSError as exc:  # e.g. a --run-dir that is a file or cannot be created
        where = f"{exc.filename}: " if exc.filename is not None else ""
        err.print(
            f"[bold red]error:[/] {escape(where + (exc.strerror or str(exc)))}", highlight=False
        )
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]")
        return EXIT_INTERRUPTED
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="matensemble", description="Run ensembles of HPC tasks, event-driven."
    )
    parser.add_argument("--version", action="version", version=f"matensemble {__version__}")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--backend",
        choices=["local", "flux", "simulated"],
        default="local",
        help="local: this machine (default); flux: the enclosing Flux instance; simulated: a "
        "virtual machine of --cores cores on a virtual clock",
    )
    common.add_argument("--flux-uri", help="the Flux instance to use (default: FLUX_URI)")
    common.add_argument(
        "--reserve-driver-cores",
        type=int,
        default=0,
        help="flux: keep this many cores of the driver's node free for the driver",
    )
    common.add_argument(
        "--flux-partitions",
        type=int,
        default=1,
        help="flux: run the tasks in this many child Flux instances, each with its own "
        "scheduler (default 1: in the enclosing instance)",
    )
    common.add_argument("--cores", type=int, help="use at most this many cores (local backend)")
    common.add_argument(
        "--gpus",
        help="GPUs to use: a count, or a comma-separated list of ids (local backend)",
    )
    common.add_argument(
        "--strategy",
        choices=["fifo", "priority", "longest-first", "gpu-first"],
        help="submission order (default: the file's, else fifo)",
    )
    common.add_argument(
        "--no-backfill", action="store_true", help="strict order: a task that does not fit blocks"
    )
    common.add_argument("--completion", choices=["adaptive", "waves"], help="completion handling")
    common.add_argument(
        "--walltime",
        type=_walltime,
        help="stop by then, [[HH:]MM:]SS from the start: tasks whose estimate would end later "
        "are not started, running ones are cancelled at the end; resume continues",
    )
    common.add_argument("--no-progress", action="store_true", help="no live progress display")

    run = sub.add_parser("run", parents=[common], help="run an ensemble file (TOML or JSON)")
    run.add_argument("file", type=Path, help="ensemble file (.toml or .json)")
    run.add_argument("--run-dir", type=Path, help="where the run's files go (default runs/<id>)")
    run.set_defaults(func=_cmd_run)

    resume = sub.add_parser(
        "resume",
        parents=[common],
        help="continue a run that was stopped or crashed (succeeded tasks are not run again)",
    )
    resume.add_argument("run_dir", type=Path, help="the run directory to continue")
    resume.add_argument(
        "--file",
        type=Path,
        help="the ensemble file; its tasks must match the journal's (checked), new ones need "
        "--add-new",
    )
    resume.add_argument("--add-new", action="store_true", help="add the file's new tasks")
    resume.add_argument(
        "--allow-backend-change",
        action="store_true",
        help="resume on another kind of backend than the run's (results of a simulated "
        "session never count on a real backend: those tasks run again)",
    )
    resume.set_defaults(func=_cmd_resume)

    status = sub.add_parser("status", help="show the state of a run (also while it runs)")
    status.add_argument("run_dir", type=Path)
    status.add_argument("--json", action="store_true", help="print status.json as it is")
    status.set_defaults(func=_cmd_status)

    report = sub.add_parser(
        "report",
        help="draw a run: timeline, utilisation, state counts, failures (PNG and HTML)",
        description="Write report.png and report.html (one offline file) from the run's "
        "journal; also while the run is going, and for a crashed run. The PNG needs "
        "matplotlib: pip install 'matensemble[report]'.",
    )
    report.add_argument("run_dir", type=Path, help="the run directory (holds journal.jsonl)")
    report.add_argument("-o", "--output", type=Path, help="where to write (default RUN_DIR/report)")
    report.add_argument("--no-png", action="store_true", help="the HTML report only")
    report.set_defaults(func=_cmd_report)
    return parser


# -- run --------------------------------------------------------------------------------------


def _cmd_run(args: argparse.Namespace) -> int:
    spec = load_ensemble(args.file)
    run_dir = args.run_dir or (Path(spec.run_dir) if spec.run_dir else None)
    run_id = time.strftime(f"{spec.name}-%Y%m%d-%H%M%S")  # runs/<run_id>[-N], made unique
    return _execute(args, spec, run_dir=run_dir, run_id=run_id)


def _cmd_resume(args: argparse.Namespace) -> int:
    if args.file is not None:
        spec = load_ensemble(args.file)
    else:
        spec = EnsembleSpec(name=args.run_dir.name, tasks=(), source=str(args.run_dir))
    return _execute(args, spec, resume=args.run_dir)


def _execute(
    args: argparse.Namespace,
    spec: EnsembleSpec,
    *,
    run_dir: Path | None = None,
    run_id: str | None = None,
    resume: Path | None = None,
) -> int:
    """Build the ensemble the options ask for, run it with signal handling, print a summary."""
    backend = _backend(args, spec)
    strategy_name = args.strategy or spec.strategy or "fifo"
    backfill = False if args.no_backfill else spec.backfill is not False
    completion = completion_by_name(args.completion or spec.completion or "adaptive")
    console = Console(stderr=True)
    observers: list[Observer] = []
    if not args.no_progress:
        observers.append(ProgressDisplay(console))
    ensemble = Ensemble(
        spec.tasks,
        backend=backend,
        strategy=order_by_name(strategy_name, backfill=backfill),
        completion=completion,
        run_dir=run_dir,
        run_id=run_id,
        observers=observers,
        resume=resume,
        add_new=getattr(args, "add_new", False),
        walltime=args.walltime,
        allow_backend_change=getattr(args, "allow_backend_change", False),
    )
    what = "resuming" if resume else f"{counted(len(spec.tasks), 'task')} from {args.file}"

    def announce() -> None:  # once the run directory is made and owned: its name is final
        console.print(
            f"[bold]{escape(spec.name)}[/]: {escape(what)} on {backend.name}, "
            f"run directory [cyan]{escape(str(ensemble.run_dir))}[/]",
            highlight=False,
            soft_wrap=True,  # paths and ids stay whole (the terminal wraps, nothing splits them)
        )

    summary, signals = asyncio.run(_run_with_signals(ensemble, console, announce))
    _print_summary(Console(), summary, _final_tasks(spec))
    if summary.stopped is not None:
        console.print(
            f"[yellow]{escape(summary.stopped)}[/]; continue with: "
            f"matensemble resume {escape(str(ensemble.run_dir))}",
            highlight=False,
            soft_wrap=True,
        )
        return 128 + signals[0] if signals else EXIT_STOPPED
    return EXIT_OK if summary.ok else EXIT_TASKS_FAILED


async def _run_with_signals(
    ensemble: Ensemble, console: Console, announce: Callable[[], None]
) -> tuple[RunSummary, list[int]]:
    """Run; the first SIGINT/SIGTERM stops gracefully, a second one forces an exit now."""
    handler = SignalStop([ensemble], lambda text: console.print(f"[yellow]{escape(text)}[/]"))
    handler.install((signal.SIGINT, signal.SIGTERM))
    try:
        async with ensemble:
            announce()
            await ensemble.wait()
        return ensemble.summary(), handler.seen
    finally:
        handler.remove()


def _walltime(text: str) -> float:
    """Seconds from ``SS``, ``MM:SS`` or ``HH:MM:SS`` (fractions allowed in the seconds)."""
    try:
        parts = [float(p) for p in text.split(":")]
    except ValueError:
        parts = []
    if not 1 <= len(parts) <= 3 or not all(0 <= p < math.inf for p in parts):  # nan, inf
        raise argparse.ArgumentTypeError(f"{text!r} is not a walltime like 3600, 59:30 or 11:50:00")
    seconds = 0.0
    for part in parts:
        seconds = seconds * 60 + part
    if seconds <= 0:
        raise argparse.ArgumentTypeError("the walltime must be more than zero")
    return seconds


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _backend(args: argparse.Namespace, spec: EnsembleSpec) -> Backend:
    """The backend the options ask for (else the file's ``[ensemble]`` settings).

    Raises ``MatEnsembleError`` naming the option, or the file's field, for a count below one,
    more cores than this process may use, or a malformed GPU list such as ``a,,b`` or ``-1``.
    """
    cores: int | None = args.cores
    cores_from = "--cores"
    if cores is None:
        cores, cores_from = spec.cores, f"{spec.source}: $.ensemble.cores"
    if cores is not None and cores < 1:
        raise MatEnsembleError(f"{cores_from} must be at least 1, got {cores}")
    gpus: int | list[str] | None = spec.gpus
    gpus_from = f"{spec.source}: $.ensemble.gpus"
    if args.gpus is not None:
        text, gpus_from = args.gpus.strip(), "--gpus"
        hint = "give a count (e.g. 2) or distinct ids separated by commas (e.g. 0,1)"
        if text.isascii() and text.isdigit():
            gpus = int(text)
        else:
            ids = [g.strip() for g in text.split(",")]
            if not all(ids):
                raise MatEnsembleError(f"--gpus {args.gpus!r} has an empty id; {hint}")
            if any(g.startswith("-") for g in ids):
                raise MatEnsembleError(f"--gpus {args.gpus!r}: a count cannot be negative; {hint}")
            if len(ids) == 1 and _is_number(text):  # 1e8, 2.0: a count, not one GPU's id
                raise MatEnsembleError(f"--gpus {args.gpus!r} is not a whole count; {hint}")
            if len(set(ids)) != len(ids):
                raise MatEnsembleError(f"--gpus {args.gpus!r} repeats an id; {hint}")
            gpus = ids
    if args.backend == "flux":
        from matensemble.backends.flux import FluxBackend

        if args.reserve_driver_cores < 0:
            raise MatEnsembleError("--reserve-driver-cores must be >= 0")
        if args.flux_partitions < 1:
            raise MatEnsembleError(f"--flux-partitions must be >= 1: {args.flux_partitions}")
        if args.flux_partitions > 1 and args.reserve_driver_cores:
            raise MatEnsembleError("--reserve-driver-cores cannot be combined with partitions")
        return FluxBackend(
            uri=args.flux_uri,
            reserve_driver_cores=args.reserve_driver_cores,
            partitions=args.flux_partitions,
        )
    # Bounded before any backend builds one id per core or GPU (a typo must not eat the node).
    MAX_GPUS_PER_NODE.check(gpus if isinstance(gpus, int) else len(gpus or []), gpus_from)
    if args.backend == "simulated":
        from matensemble.backends.simulated import SimulatedBackend

        MAX_CORES_PER_NODE.check(cores or 8, cores_from)
        return SimulatedBackend(1, cores or 8, gpus if isinstance(gpus, int) else len(gpus or []))
    from matensemble.backends.local import LocalBackend

    try:
        return LocalBackend(cores=cores, gpus=gpus)
    except (ValueError, TypeError) as exc:
        raise MatEnsembleError(
            f"{gpus_from if 'gpus' in str(exc) else cores_from}: {exc}"
        ) from None


def _final_tasks(spec: EnsembleSpec) -> list[str]:
    """Ids of the tasks nothing waits for (a report stage, say), in file order."""
    waited_for = {dep for task in spec.tasks for dep in task.after}
    return [task.id for task in spec.tasks if task.id not in waited_for]


def _print_summary(console: Console, summary: RunSummary, final: Sequence[str] = ()) -> None:
    """The counts table, the tasks that did not succeed, and where the outputs are.

    When at most three tasks end the ensemble (nothing waits for them) and they succeeded,
    their stdout files are named: that is where a report stage's table is.
    """
    console.print(f"[bold]run {escape(summary.run_id)}[/]", highlight=False, soft_wrap=True)
    table = Table(show_header=True, header_style="bold")
    table.add_column("state")
    table.add_column("tasks", justify="right")
    colours = {"succeeded": "green", "failed": "red", "timed_out": "red", "cancelled": "yellow"}
    for state, n in summary.counts.items():
        if n:
            table.add_row(f"[{colours.get(state, 'white')}]{state}[/]", str(n))
    table.add_section()
    table.add_row("makespan", f"{summary.makespan:.1f} s")
    table.add_row("core utilisation", f"{summary.core_utilisation:.0%}")
    if summary.gpu_utilisation:
        table.add_row("GPU utilisation", f"{summary.gpu_utilisation:.0%}")
    console.print(table)
    bad = summary.not_succeeded
    if bad:  # lines, not a table: a narrow terminal must not split ids or squeeze reasons
        console.print(f"[bold]{counted(len(bad), 'task')} did not succeed:[/]")
        for r in bad[:20]:
            console.print(
                f"  {escape(r.id)}: [red]{r.state.value}[/] after "
                f"{counted(r.attempts, 'attempt')}: {escape(r.reason or '')}",
                highlight=False,
                soft_wrap=True,
            )
        if len(bad) > 20:
            console.print(f"  ... and {len(bad) - 20} more (see status.json and the journal)")
    results = summary.results
    shown = [i for i in final if i in results and results[i].ok] if len(final) <= 3 else []
    for task_id in shown:
        stdout = Path(summary.run_dir) / "tasks" / task_id / "stdout"
        console.print(f"{escape(task_id)}'s output: [cyan]{escape(str(stdout))}[/]", soft_wrap=True)
    console.print(
        f"outputs in [cyan]{escape(summary.run_dir)}/tasks/<task-id>/[/] (stdout, stderr)",
        highlight=False,
        soft_wrap=True,
    )


# -- report ---------------------------------------------------------------------------------


def _cmd_report(args: argparse.Namespace) -> int:
    from matensemble.report import write_report

    files = write_report(args.run_dir, args.output, png=not args.no_png)
    console = Console()
    for note in files.record.notes:
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    if files.sampled_every > 1:
        console.print(
            f"[yellow]note:[/] the timeline shows every {files.sampled_every}th of "
            f"{len(files.record.attempts)} attempts",
            highlight=False,
        )
    for path in (files.png, files.html):
        if path is not None:
            console.print(f"wrote [cyan]{escape(str(path))}[/]", highlight=False)
    return EXIT_OK


# -- status -----------------------------------------------------------------------------------


def _cmd_status(args: argparse.Namespace) -> int:
    run_dir: Path = args.run_dir
    path = run_dir / "status.json"
    if not path.exists():
        raise MatEnsembleError(
            f"{run_dir}: no status.json here; is this a run directory (made by `matensemble run`)?"
        )
    if args.json:
        sys.stdout.write(path.read_text())
        return EXIT_OK
    status = read_status(run_dir)
    console = Console()
    ago = time.time() - status.updated
    console.print(
        f"run [bold]{status.run_id}[/] on {status.backend}: "
        f"{escape(describe_phase(run_dir, status.phase, status.pid))} (updated {ago:.0f} s ago)",
        highlight=False,
    )
    table = Table(show_header=True, header_style="bold")
    table.add_column("state")
    table.add_column("tasks", justify="right")
    for state in TaskState:
        table.add_row(state.value, str(status.counts.get(state.value, 0)))
    console.print(table)
    console.print(
        f"cores free {status.cores['free']}/{status.cores['total']}, "
        f"GPUs free {status.gpus['free']}/{status.gpus['total']}"
    )
    if status.failures:
        failed = counted(status.failures_total, "task")
        console.print(f"[red]{failed} did not succeed[/], latest:")
        for f in status.failures[-10:]:
            console.print(f"  {f.id}: {f.state} ({f.reason})", highlight=False)
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
