"""``matensemble run | resume | status``: run ensemble files and look at runs from the shell.

Exit codes: 0 every task succeeded; 1 some task did not; 2 bad input (file, options, journal);
3 stopped before the end (walltime); 128+N stopped by signal N (130 for SIGINT, 143 for
SIGTERM). A stopped run continues with ``matensemble resume RUN_DIR``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from matensemble.backends.base import Backend
from matensemble.engine import Ensemble
from matensemble.errors import MatEnsembleError
from matensemble.limits import MAX_CORES_PER_NODE, MAX_GPUS_PER_NODE
from matensemble.model import TaskState
from matensemble.observer import Observer
from matensemble.progress import ProgressDisplay
from matensemble.spec import EnsembleSpec, load_ensemble
from matensemble.status import read_status
from matensemble.strategies import completion_by_name, order_by_name
from matensemble.summary import RunSummary

__all__ = ["main"]

EXIT_OK, EXIT_TASKS_FAILED, EXIT_BAD_INPUT, EXIT_STOPPED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``matensemble`` command."""
    parser = _parser()
    args = parser.parse_args(argv)
    err = Console(stderr=True)
    try:
        code: int = args.func(args)
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
    resume.set_defaults(func=_cmd_resume)

    status = sub.add_parser("status", help="show the state of a run (also while it runs)")
    status.add_argument("run_dir", type=Path)
    status.add_argument("--json", action="store_true", help="print status.json as it is")
    status.set_defaults(func=_cmd_status)
    return parser


# -- run --------------------------------------------------------------------------------------


def _cmd_run(args: argparse.Namespace) -> int:
    spec = load_ensemble(args.file)
    run_dir = args.run_dir or (Path(spec.run_dir) if spec.run_dir else None)
    run_id = time.strftime(f"{spec.name}-%Y%m%d-%H%M%S")
    return _execute(args, spec, run_dir=run_dir or Path("runs") / run_id, run_id=run_id)


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
    )
    what = "resuming" if resume else f"{len(spec.tasks)} tasks from {args.file}"
    console.print(
        f"[bold]{escape(spec.name)}[/]: {escape(what)} on {backend.name}, "
        f"run directory [cyan]{escape(str(ensemble.run_dir))}[/]",
        highlight=False,
    )
    summary, signals = asyncio.run(_run_with_signals(ensemble, console))
    _print_summary(Console(), summary)
    if summary.stopped is not None:
        console.print(
            f"[yellow]{escape(summary.stopped)}[/]; continue with: "
            f"matensemble resume {escape(str(ensemble.run_dir))}",
            highlight=False,
        )
        return 128 + signals[0] if signals else EXIT_STOPPED
    return EXIT_OK if summary.ok else EXIT_TASKS_FAILED


async def _run_with_signals(ensemble: Ensemble, console: Console) -> tuple[RunSummary, list[int]]:
    """Run; the first SIGINT/SIGTERM stops gracefully, a second one forces an exit now."""
    loop = asyncio.get_running_loop()
    seen: list[int] = []

    def on_signal(signum: int) -> None:
        seen.append(signum)
        name = signal.Signals(signum).name
        if len(seen) == 1:
            console.print(
                f"[yellow]{name}: stopping (running tasks are cancelled; again to force)[/]"
            )
            ensemble.stop(name)
            return
        console.print(f"[red]{name}: forced exit; the journal is kept for resume[/]")
        ensemble.abort()
        os._exit(128 + signum)

    handled = (signal.SIGINT, signal.SIGTERM)
    for signum in handled:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        return await ensemble.run(), seen
    finally:
        for signum in handled:
            loop.remove_signal_handler(signum)


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
        return FluxBackend(uri=args.flux_uri, reserve_driver_cores=args.reserve_driver_cores)
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


def _print_summary(console: Console, summary: RunSummary) -> None:
    table = Table(title=f"run {summary.run_id}", show_header=True, header_style="bold")
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
    if bad:
        failures = Table(title="tasks that did not succeed", header_style="bold")
        for column in ("task", "state", "attempts", "reason"):
            failures.add_column(column)
        for r in bad[:20]:
            failures.add_row(r.id, r.state.value, str(r.attempts), r.reason or "")
        if len(bad) > 20:
            failures.add_row("...", f"{len(bad) - 20} more", "", "see status.json / journal")
        console.print(failures)
    console.print(f"outputs in [cyan]{summary.run_dir}/tasks/<task-id>/[/]", highlight=False)


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
        f"run [bold]{status.run_id}[/] on {status.backend}: [bold]{status.phase}[/] "
        f"(updated {ago:.0f} s ago, driver pid {status.pid})",
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
        console.print(f"[red]{status.failures_total} task(s) did not succeed[/], latest:")
        for f in status.failures[-10:]:
            console.print(f"  {f.id}: {f.state} ({f.reason})", highlight=False)
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
