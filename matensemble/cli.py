"""``matensemble run | resume | status | report``: run ensemble files, look at runs.

Exit codes: 0 every task succeeded; 1 some task did not; 2 bad input (file, options, journal);
3 stopped before the end (walltime); 4 stopped because a run file could not be written (no space
left on the device, or the quota is used up); 128+N stopped by signal N (130 for SIGINT, 143
for SIGTERM). A stopped run continues with ``matensemble resume RUN_DIR``.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from matensemble.cli_options import backend_from_options, build_parser
from matensemble.cli_output import final_tasks, print_status, print_summary
from matensemble.engine import Ensemble
from matensemble.errors import DiskFull, MatEnsembleError
from matensemble.observer import Observer
from matensemble.progress import ProgressDisplay
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
    args = build_parser().parse_args(argv)
    err = Console(stderr=True)
    try:
        code: int = COMMANDS[args.command](args)
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


# -- run --------------------------------------------------------------------------------------


def _cmd_run(args: argparse.Namespace) -> int:
    spec = load_ensemble(args.file)
    run_dir = args.run_dir or (Path(spec.run_dir) if spec.run_dir else None)
    return _execute(args, spec, run_dir=run_dir, run_id=new_run_id(spec.name))


def new_run_id(name: str) -> str:
    """``<name>-YYYYmmdd-HHMMSS-<6 hex digits>``: the default run directory's name
    (``runs/<run_id>``), and what the run's task processes carry as ``MATENSEMBLE_RUN_ID``.

    The random part keeps two runs of files of the same name, started in the same second (a
    job array, two directories), apart: ``resume`` kills what a crashed driver left running by
    that id, and must never find another run's tasks.
    """
    return time.strftime(f"{name}-%Y%m%d-%H%M%S-") + secrets.token_hex(3)


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
    backend = backend_from_options(args, spec)
    strategy_name = args.strategy or spec.strategy or "fifo"
    backfill = False if args.no_backfill else spec.backfill is not False
    completion = completion_by_name(args.completion or spec.completion or "adaptive")
    console = Console(stderr=True)
    observers: list[Observer] = []
    if not args.no_progress:  # ``ensemble`` is bound below, before the display first asks
        observers.append(ProgressDisplay(console, queued_ahead=lambda: ensemble.queued_ahead))
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
    print_summary(Console(), summary, final_tasks(spec))
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
    print_status(Console(), run_dir, read_status(run_dir))
    return EXIT_OK


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": _cmd_run,
    "resume": _cmd_resume,
    "status": _cmd_status,
    "report": _cmd_report,
}


if __name__ == "__main__":
    raise SystemExit(main())
