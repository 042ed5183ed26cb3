"""What the command line prints about a run: the summary at its end, and ``status``."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from matensemble.model import TaskState
from matensemble.rundir import describe_phase
from matensemble.spec import EnsembleSpec
from matensemble.status import RunStatus
from matensemble.summary import RunSummary
from matensemble.wording import counted

__all__ = ["final_tasks", "print_status", "print_summary"]


def final_tasks(spec: EnsembleSpec) -> list[str]:
    """Ids of the tasks nothing waits for (a report stage, say), in file order."""
    waited_for = {dep for task in spec.tasks for dep in task.after}
    return [task.id for task in spec.tasks if task.id not in waited_for]


def print_summary(console: Console, summary: RunSummary, final: Sequence[str] = ()) -> None:
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


def print_status(console: Console, run_dir: Path, status: RunStatus) -> None:
    """One line on the run's phase, a table of counts, free resources, the latest failures."""
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
        count = str(status.counts.get(state.value, 0))
        if state is TaskState.RUNNING and status.queued_ahead:
            count += f" ({status.queued_ahead} queued ahead, not started)"
        table.add_row(state.value, count)
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
