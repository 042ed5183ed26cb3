"""``matensemble run | status``: run ensemble files and look at runs from the shell.

Exit codes: 0 every task succeeded; 1 some task did not; 2 bad input (file, options);
130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from matensemble.backends.base import Backend
from matensemble.engine import Ensemble
from matensemble.errors import MatEnsembleError
from matensemble.model import TaskState
from matensemble.observer import Observer
from matensemble.progress import ProgressDisplay
from matensemble.spec import EnsembleSpec, load_ensemble
from matensemble.status import read_status
from matensemble.strategies import completion_by_name, order_by_name
from matensemble.summary import RunSummary

__all__ = ["main"]

EXIT_OK, EXIT_TASKS_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``matensemble`` command."""
    parser = _parser()
    args = parser.parse_args(argv)
    err = Console(stderr=True)
    try:
        code: int = args.func(args)
    except MatEnsembleError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
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

    run = sub.add_parser("run", help="run an ensemble file (TOML or JSON)")
    run.add_argument("file", type=Path, help="ensemble file (.toml or .json)")
    run.add_argument("--run-dir", type=Path, help="where the run's files go (default runs/<id>)")
    run.add_argument("--backend", choices=["local", "simulated"], default="local")
    run.add_argument("--cores", type=int, help="use at most this many cores (local backend)")
    run.add_argument(
        "--gpus",
        help="GPUs to use: a count, or a comma-separated list of ids (local backend)",
    )
    run.add_argument(
        "--strategy",
        choices=["fifo", "priority", "longest-first", "gpu-first"],
        help="submission order (default: the file's, else fifo)",
    )
    run.add_argument(
        "--no-backfill", action="store_true", help="strict order: a task that does not fit blocks"
    )
    run.add_argument("--completion", choices=["adaptive", "waves"], help="completion handling")
    run.add_argument("--no-progress", action="store_true", help="no live progress display")
    run.set_defaults(func=_cmd_run)

    status = sub.add_parser("status", help="show the state of a run (also while it runs)")
    status.add_argument("run_dir", type=Path)
    status.add_argument("--json", action="store_true", help="print status.json as it is")
    status.set_defaults(func=_cmd_status)
    return parser


# -- run --------------------------------------------------------------------------------------


def _cmd_run(args: argparse.Namespace) -> int:
    spec = load_ensemble(args.file)
    backend = _backend(args, spec)
    strategy_name = args.strategy or spec.strategy or "fifo"
    backfill = False if args.no_backfill else spec.backfill is not False
    completion = completion_by_name(args.completion or spec.completion or "adaptive")
    run_dir = args.run_dir or (Path(spec.run_dir) if spec.run_dir else None)
    run_id = time.strftime(f"{spec.name}-%Y%m%d-%H%M%S")
    console = Console(stderr=True)
    observers: list[Observer] = []
    if not args.no_progress:
        observers.append(ProgressDisplay(console))
    ensemble = Ensemble(
        spec.tasks,
        backend=backend,
        strategy=order_by_name(strategy_name, backfill=backfill),
        completion=completion,
        run_dir=run_dir or Path("runs") / run_id,
        run_id=run_id,
        observers=observers,
    )
    console.print(
        f"[bold]{spec.name}[/]: {len(spec.tasks)} tasks from {args.file} on {backend.name}, "
        f"run directory [cyan]{ensemble.run_dir}[/]",
        highlight=False,
    )
    summary = asyncio.run(ensemble.run())
    _print_summary(Console(), summary)
    return EXIT_OK if summary.ok else EXIT_TASKS_FAILED


def _backend(args: argparse.Namespace, spec: EnsembleSpec) -> Backend:
    cores = args.cores or spec.cores
    gpus: int | list[str] | None = spec.gpus
    if args.gpus is not None:
        gpus = int(args.gpus) if args.gpus.isdigit() else [g for g in args.gpus.split(",") if g]
    if args.backend == "simulated":
        from matensemble.backends.simulated import SimulatedBackend

        return SimulatedBackend(1, cores or 8, gpus if isinstance(gpus, int) else len(gpus or []))
    from matensemble.backends.local import LocalBackend

    return LocalBackend(cores=cores, gpus=gpus)


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
